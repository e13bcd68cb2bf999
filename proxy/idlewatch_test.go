//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// watcherRuns reports whether a watcher goroutine is running in the process.
func watcherRuns() bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*idleWatcher).run")
}

// TestIdleWatchWakes: a parked client is resumed, exactly when it must be, by whatever ends or
// interrupts it: its next query (again and again), its close (an orderly one and a reset),
// EndSessions (it gets 57P01 without sending anything), and Close, which ends the watcher too.
func TestIdleWatchWakes(t *testing.T) {
	shortParkDelay(t, 10*time.Millisecond)
	t.Run("query", func(t *testing.T) {
		h := newTxHarness(t, 2, nil)
		ctx := ctxTimeout(t, time.Minute)
		c := h.pgconnect(t, ctx, "")
		for i := range 5 {
			waitParked(t, h, 1)
			if got, err := simple(ctx, c, fmt.Sprintf("select %d", i)); err != nil || got != fmt.Sprint(i) {
				t.Fatalf("query %d after parking: %q, %v", i, got, err)
			}
		}
		// A prepared statement kept while parked.
		if _, err := c.Prepare(ctx, "p", "select $1::int + 1", nil); err != nil {
			t.Fatal(err)
		}
		waitParked(t, h, 1)
		if got, err := execPrepared(ctx, c, "p", "41"); err != nil || got != "42" {
			t.Fatalf("prepared statement after parking: %q, %v", got, err)
		}
	})
	for _, reset := range []bool{false, true} {
		t.Run(fmt.Sprintf("close reset=%v", reset), func(t *testing.T) {
			h := newTxHarness(t, 2, nil)
			ctx := ctxTimeout(t, time.Minute)
			c := h.pgconnect(t, ctx, "")
			waitParked(t, h, 1)
			if reset {
				_ = c.Conn().(*net.TCPConn).SetLinger(0)
			}
			_ = c.Conn().Close()
			if !pgtest.WaitFor(10*time.Second, func() bool { return h.srv.ClientCount() == 0 }) {
				t.Fatalf("the parked client's session did not end: %d clients, %d parked", h.srv.ClientCount(), parkedClients(h))
			}
		})
	}
	t.Run("EndSessions", func(t *testing.T) {
		h := newTxHarness(t, 2, nil)
		ctx := ctxTimeout(t, time.Minute)
		c := h.pgconnect(t, ctx, "")
		waitParked(t, h, 1)
		h.srv.EndSessions(time.Minute)
		_ = c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
		msg, err := c.Frontend().Receive()
		if err != nil {
			t.Fatalf("no 57P01 for a parked client: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "57P01" {
			t.Fatalf("got %#v, want FATAL 57P01", msg)
		}
		if !pgtest.WaitFor(10*time.Second, func() bool { return h.srv.ClientCount() == 0 }) {
			t.Fatal("the session did not end")
		}
	})
	t.Run("Close", func(t *testing.T) {
		h := newTxHarness(t, 2, nil)
		ctx := ctxTimeout(t, time.Minute)
		c := h.pgconnect(t, ctx, "")
		waitParked(t, h, 1)
		if !watcherRuns() {
			t.Fatal("no watcher goroutine with a client parked")
		}
		if !closesWithin(h.srv, 20*time.Second) {
			t.Fatal("Close hangs with a client parked")
		}
		_ = c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Conn().Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("the parked client's connection after Close: %v, want EOF", err)
		}
		if watcherRuns() {
			t.Error("the watcher goroutine runs on after Close")
		}
	})
}

// TestIdleWatchPipelinedBurst: clients that send pipelined queries in bursts, with pauses around
// the park delay, so that bursts arrive as the client parks, while its socket is registered, and
// while the watcher resumes it: every query is answered, in order.
func TestIdleWatchPipelinedBurst(t *testing.T) {
	shortParkDelay(t, time.Millisecond)
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	stop := make(chan struct{})
	sampled := make(chan int)
	go func() {
		peak := 0
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			case <-time.After(100 * time.Microsecond):
				peak = max(peak, parkedClients(h))
			}
		}
	}()
	for w := range 4 {
		c := h.pgconnect(t, ctx, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 24))
			fe := c.Frontend()
			_ = c.Conn().SetDeadline(time.Now().Add(time.Minute))
			for round := range 150 {
				k := 1 + rng.IntN(8)
				for i := range k {
					fe.Send(&pgproto3.Query{String: fmt.Sprintf("select %d", round*10+i)})
				}
				if err := fe.Flush(); err != nil {
					errs <- err
					return
				}
				for i := 0; i < k; {
					msg, err := fe.Receive()
					if err != nil {
						errs <- fmt.Errorf("round %d: %w", round, err)
						return
					}
					switch m := msg.(type) {
					case *pgproto3.DataRow:
						if want := fmt.Sprint(round*10 + i); string(m.Values[0]) != want {
							errs <- fmt.Errorf("round %d: got %s, want %s", round, m.Values[0], want)
							return
						}
					case *pgproto3.ErrorResponse:
						errs <- fmt.Errorf("round %d: %s", round, m.Message)
						return
					case *pgproto3.ReadyForQuery:
						i++
					}
				}
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if peak := <-sampled; peak == 0 {
		t.Error("no client parked between its bursts")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("logs:\n%s", h.log.String())
	}
}

// TestIdleWatchIdleTransactionTimeout: the park deadline and the idle-transaction deadline
// share the client's read deadline. A client idle in a transaction (it holds its server
// connection) does not park and is ended at --proxy.idle-transaction-timeout, not before; one
// idle outside a transaction parks and stays.
func TestIdleWatchIdleTransactionTimeout(t *testing.T) {
	shortParkDelay(t, 10*time.Millisecond)
	const timeout = 400 * time.Millisecond
	h := newTxHarness(t, 2, func(_ *pool.Config, c *Config) { c.IdleTransactionTimeout = timeout })
	ctx := ctxTimeout(t, time.Minute)
	idle := h.pgconnect(t, ctx, "")
	inTx := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, inTx, "begin"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitParked(t, h, 1)
	_ = inTx.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := inTx.Frontend().Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "25P03" {
		t.Fatalf("client idle in a transaction: got %#v, %v; want FATAL 25P03", msg, err)
	}
	if d := time.Since(start); d < timeout-50*time.Millisecond {
		t.Errorf("client idle in a transaction ended after %s, before the timeout %s", d, timeout)
	}
	if got, err := simple(ctx, idle, "select 7"); err != nil || got != "7" {
		t.Fatalf("parked client after the other's timeout: %q, %v", got, err)
	}
	if n := parkedClients(h); n != 0 && n != 1 {
		t.Errorf("%d clients parked", n)
	}
}
