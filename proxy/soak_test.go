package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSoakWatchdog runs clients that do everything at random through a transaction-mode proxy
// with fewer server connections than clients: queries and parameters of random sizes (from
// nothing to several times the read buffer, so that both the raw path and the ordinary one
// read them), pipelined batches, COPY both ways, transactions, cancels, and disconnects in
// every protocol state (mid-message, mid-batch, mid-COPY, in a transaction, right after a
// request). Its watchdog fails the test when a request waits longer than a bound while the
// server has nothing running: the client waits for data the server already sent.
//
// It runs 3 seconds; PROXY_SOAK_DURATION (a Go duration) makes it a long run. Idle clients park
// after 1 ms (idlewatch.go), so that clients park and resume all the time;
// PROXY_SOAK_PARK_DELAY sets another delay.
func TestSoakWatchdog(t *testing.T) {
	d := 3 * time.Second
	if v := os.Getenv("PROXY_SOAK_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	park := time.Millisecond
	if v := os.Getenv("PROXY_SOAK_PARK_DELAY"); v != "" {
		var err error
		if park, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	shortParkDelay(t, park)
	h := newTxHarness(t, 3, nil)
	ctx := ctxTimeout(t, d+2*time.Minute)
	setup := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, setup, "create table if not exists soak_copy (i int, s text)"); err != nil {
		t.Fatal(err)
	}
	_ = setup.Close(ctx)

	var ops, hung atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	end := time.Now().Add(d)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var c *pgconn.PgConn
			for time.Now().Before(end) {
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgconn.Connect(ctx, h.superURL()); err != nil {
						errs <- fmt.Errorf("connect: %w", err)
						return
					}
				}
				op := rng.IntN(len(soakOps))
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := soakOps[op].run(octx, c, rng)
				timedOut := octx.Err() != nil
				cancel()
				ops.Add(1)
				switch {
				case timedOut && !soakOps[op].cancels:
					hung.Add(1)
					errs <- fmt.Errorf("%s: no answer in 10 s (%v); server backends active: %s", soakOps[op].name, err, activeBackends(ctx))
					_ = c.Conn().Close()
				case err != nil && !soakOps[op].fails:
					errs <- fmt.Errorf("%s: %w", soakOps[op].name, err)
					_ = c.Conn().Close()
				}
				if soakOps[op].leaves {
					c = nil
				}
			}
			if c != nil {
				_ = c.Close(ctx)
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 20 {
			t.Error(err)
		}
	}
	t.Logf("%d operations in %s, %d without an answer", ops.Load(), d, hung.Load())
	h.waitEnded(t, 10*time.Second) // with every goroutine's stack if they do not
	c := h.pgconnect(t, ctx, "")
	if got, err := simple(ctx, c, "select 42"); err != nil || got != "42" {
		t.Errorf("after the soak: %q, %v", got, err)
	}
}

// activeBackends lists what the test cluster's client backends are doing, for the watchdog.
func activeBackends(ctx context.Context) string {
	c, err := pgconn.Connect(ctx, cluster.URL(""))
	if err != nil {
		return err.Error()
	}
	defer c.Close(ctx)
	res := c.ExecParams(ctx, `select coalesce(string_agg(state || ': ' || left(query, 40), '; '), 'none')
		from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and state <> 'idle'`,
		nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) == 0 {
		return fmt.Sprint(res.Err)
	}
	return string(res.Rows[0][0])
}

type soakOp struct {
	name    string
	fails   bool // an error is expected
	cancels bool // it may time out on purpose
	leaves  bool // the connection is gone after it
	run     func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error
}

// soakSize is a random size: mostly small, sometimes around and well over the read buffer.
func soakSize(rng *rand.Rand) int {
	switch rng.IntN(6) {
	case 0:
		return 0
	case 1, 2:
		return rng.IntN(200)
	case 3:
		return rng.IntN(ioBufSize * 2)
	case 4:
		return ioBufSize - 5 + rng.IntN(10)
	default:
		return rng.IntN(300 << 10)
	}
}

var soakOps = []soakOp{
	{name: "simple query of a random size", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		n := soakSize(rng)
		got, err := simple(ctx, c, fmt.Sprintf("select length(repeat('x', %d) || '%s')", n, strings.Repeat("y", soakSize(rng)%4096)))
		if err == nil && got == "" {
			err = errors.New("empty answer")
		}
		return err
	}},
	{name: "extended query with a random-size parameter", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		n := soakSize(rng)
		res := c.ExecParams(ctx, "select length($1::text), repeat('z', $2::int)", [][]byte{[]byte(strings.Repeat("p", n)), []byte(fmt.Sprint(soakSize(rng)))}, nil, nil, nil).Read()
		if res.Err == nil && (len(res.Rows) != 1 || string(res.Rows[0][0]) != fmt.Sprint(n)) {
			return fmt.Errorf("length %d: got %q", n, res.Rows)
		}
		return res.Err
	}},
	{name: "pipelined batch", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		b := &pgconn.Batch{}
		k := 1 + rng.IntN(20)
		for i := range k {
			b.ExecParams("select $1::int, repeat('b', $2::int)", [][]byte{[]byte(fmt.Sprint(i)), []byte(fmt.Sprint(soakSize(rng) / 4))}, nil, nil, nil)
		}
		rs, err := c.ExecBatch(ctx, b).ReadAll()
		if err == nil && len(rs) != k {
			err = fmt.Errorf("%d results of %d", len(rs), k)
		}
		return err
	}},
	{name: "COPY FROM STDIN", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		var sb strings.Builder
		rows := rng.IntN(2000)
		for i := range rows {
			fmt.Fprintf(&sb, "%d\t%s\n", i, strings.Repeat("c", rng.IntN(100)))
		}
		tag, err := c.CopyFrom(ctx, strings.NewReader(sb.String()), "copy soak_copy from stdin")
		if err == nil && tag.RowsAffected() != int64(rows) {
			err = fmt.Errorf("copied %d rows of %d", tag.RowsAffected(), rows)
		}
		return err
	}},
	{name: "COPY TO STDOUT", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		_, err := c.CopyTo(ctx, io.Discard, fmt.Sprintf("copy (select g, repeat('o', 50) from generate_series(1, %d) g) to stdout", rng.IntN(5000)))
		return err
	}},
	{name: "transaction", run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		for _, q := range []string{"begin", "select 1", fmt.Sprintf("select repeat('t', %d)", soakSize(rng)), "commit"} {
			if _, err := c.Exec(ctx, q).ReadAll(); err != nil {
				return err
			}
		}
		return nil
	}},
	{name: "an error in a transaction", fails: true, run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		_, _ = c.Exec(ctx, "begin").ReadAll()
		_, err := c.Exec(ctx, "select 1/0").ReadAll()
		_, _ = c.Exec(ctx, "rollback").ReadAll()
		return err
	}},
	{name: "cancel", cancels: true, fails: true, leaves: true, run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		qctx, cancel := context.WithTimeout(ctx, time.Duration(1+rng.IntN(30))*time.Millisecond)
		defer cancel()
		_, err := c.Exec(qctx, "select pg_sleep(0.2)").ReadAll()
		_ = c.Close(ctx)
		return err
	}},
	{name: "disconnect", leaves: true, run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		fe := c.Frontend()
		switch rng.IntN(6) {
		case 0: // mid-message
			raw := c.Conn()
			_, _ = raw.Write([]byte{'Q', 0, 0, 1, 0, 's', 'e', 'l'})
		case 1: // mid-batch
			fe.Send(&pgproto3.Parse{Query: "select pg_sleep(0.01)"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			_ = fe.Flush()
		case 2: // mid-COPY
			fe.Send(&pgproto3.Query{String: "copy soak_copy from stdin"})
			fe.Send(&pgproto3.CopyData{Data: []byte("1\tx\n")})
			_ = fe.Flush()
		case 3: // in a transaction
			_, _ = c.Exec(ctx, "begin; select 1").ReadAll()
		case 4: // right after a request
			fe.Send(&pgproto3.Query{String: "select pg_sleep(0.02)"})
			_ = fe.Flush()
		case 5: // mid-answer
			fe.Send(&pgproto3.Query{String: "select repeat('a', 1000000)"})
			_ = fe.Flush()
			time.Sleep(time.Millisecond)
		}
		return c.Conn().Close()
	}},
	{name: "goodbye", leaves: true, run: func(ctx context.Context, c *pgconn.PgConn, rng *rand.Rand) error {
		return c.Close(ctx)
	}},
}
