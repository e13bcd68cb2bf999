package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// Tests of how the relay ends connections while their readers are inside a RawConn.Read
// callback (rawread.go): a Close there, or one that waits for such a reader, would never return.

// TestTxModeClientResetAfterProxyAnswer: a client that sends a request the proxy answers itself
// (a Sync with no server connection held) and resets its connection at once. The proxy's write
// of the answer fails in the client's own goroutine, inside its read callback; the session
// must end.
func TestTxModeClientResetAfterProxyAnswer(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	for range 20 {
		c := h.pgconnect(t, ctx, "")
		if _, err := simple(ctx, c, "select 1"); err != nil {
			t.Fatal(err)
		}
		fe := c.Frontend()
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		resetConn(t, c.Conn())
	}
	h.waitEnded(t, 10*time.Second)
}

// TestTxModeFailedReadBack: a read-back of a client's settings that fails drops the server
// connection (nothing can tell what its session holds), from inside its own reader's callback,
// and ends the client's session (nor can anything tell what the client's settings are); the
// proxy goes on serving others. The read-back fails here at the client's statement_timeout,
// waiting for a safe snapshot (serializable read-only deferrable, the client's defaults) while a
// serializable transaction elsewhere is open.
func TestTxModeFailedReadBack(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	blocker, err := pgx.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(context.Background())
	if _, err := blocker.Exec(ctx, "begin isolation level serializable; select 1"); err != nil {
		t.Fatal(err)
	}
	c := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, c, "set statement_timeout = '200ms'; set default_transaction_isolation = 'serializable'; "+
		"set default_transaction_read_only = on; set default_transaction_deferrable = on"); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(10*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil) == 1
	}) {
		h.hung(t, "the server connection whose read-back failed was not dropped")
	}
	if _, err := blocker.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := simple(qctx, c, "select 1"); err == nil || qctx.Err() != nil {
		t.Errorf("the client of the failed read-back: %v, want its session ended", err)
	}
	h.waitEnded(t, 10*time.Second)
	other := h.pgconnect(t, ctx, "")
	if got, err := simple(qctx, other, "select 42"); err != nil || got != "42" {
		t.Errorf("another client after the failed read-back: %q, %v", got, err)
	}
}

// resetConn closes conn so that the peer gets a reset rather than an orderly end.
func resetConn(t testing.TB, conn net.Conn) {
	t.Helper()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// waitEnded is waitIdle for tests that may find a hang: when the sessions have not ended
// within d, the test fails with every goroutine's stack (hung).
func (h *harness) waitEnded(t testing.TB, d time.Duration) {
	t.Helper()
	if !pgtest.WaitFor(d, func() bool { return h.sessionsEnded(t) }) {
		h.hung(t, fmt.Sprintf("sessions did not end in %s: used=%d", d, h.mgr.Stats().UsedConns))
	}
}

// hung fails a test that found the proxy hung: every goroutine's stack goes to a file, whose
// path goes to standard error, and to the test log; the proxy is closed with a bound. The
// pool's Close in the harness's cleanup may still wait for the connections the hung sessions
// hold, and the test binary then for its -timeout: standard error has said what hung by then.
func (h *harness) hung(t testing.TB, what string) {
	t.Helper()
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	path := "(not written)"
	if f, err := os.CreateTemp("", "pgsidecar-goroutines-*.txt"); err == nil {
		_, _ = f.WriteString(b.String())
		_ = f.Close()
		path = f.Name()
	}
	fmt.Fprintf(os.Stderr, "%s: %s; goroutine stacks in %s\n", t.Name(), what, path)
	t.Logf("goroutines (also in %s):\n%s", path, b.String())
	if !closesWithin(h.srv, 10*time.Second) {
		t.Errorf("the proxy's Close did not return in 10 s either")
	}
	t.Fatalf("%s; goroutine stacks in %s\nlogs:\n%s", what, path, h.log.String())
}

// TestCloseWhileServerDoesNotRead: the proxy shuts down while a client's goroutine waits, inside
// its read callback, for a server busy with a long query to take its next requests (the client
// sends them on without reading, until every buffer between it and the server is full), while
// other clients run queries. Close must end the sessions in seconds, not when the query ends.
func TestCloseWhileServerDoesNotRead(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	c := h.pgconnect(t, ctx, "")
	conn := c.Conn()
	const marker = "/* close while the server does not read */"
	sleep, _ := (&pgproto3.Query{String: "select pg_sleep(30) " + marker}).Encode(nil)
	t.Cleanup(func() {
		// The server goes on sleeping after the proxy closed its connection: other tests count
		// backends.
		d, err := pgx.Connect(context.Background(), cluster.URL(""))
		if err != nil {
			t.Error(err)
			return
		}
		defer d.Close(context.Background())
		_, _ = d.Exec(context.Background(), "select pg_terminate_backend(pid, 5000) from pg_stat_activity where query like '%' || $1 and pid <> pg_backend_pid()", marker)
	})
	q, _ := (&pgproto3.Query{String: "select 1 /* " + strings.Repeat("y", 4<<10) + " */"}).Encode(nil)
	stalled := make(chan error, 1)
	go func() {
		if _, err := conn.Write(sleep); err != nil {
			stalled <- err
			return
		}
		for {
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write(q); err != nil {
				stalled <- err
				return
			}
		}
	}()
	busy, stop := context.WithCancel(ctx)
	defer stop()
	for range 3 {
		go func() {
			for busy.Err() == nil {
				o, err := pgconn.Connect(busy, h.superURL())
				if err != nil {
					return
				}
				for busy.Err() == nil {
					if _, err := simple(busy, o, "select 1"); err != nil {
						break
					}
				}
				_ = o.Close(context.Background())
			}
		}()
	}
	select {
	case err := <-stalled:
		if !isTimeout(err) {
			t.Fatalf("the client's write: %v, want it to stall", err)
		}
	case <-ctx.Done():
		t.Fatal("the client's writes did not stall")
	}
	if !closesWithin(h.srv, 10*time.Second) {
		h.hung(t, "Close did not return in 10 s")
	}
	stop()
}

// closesWithin reports whether srv's Close returned within d.
func closesWithin(srv *Server, d time.Duration) bool {
	closed := make(chan struct{})
	go func() {
		_ = srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
		return true
	case <-time.After(d):
		return false
	}
}
