package proxy

import (
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// idleWriters counts the logged-in clients that hold a client writer.
func idleWriters(h *harness) (holding, clients int) {
	h.srv.table.mu.Lock()
	cls := make([]*client, 0, len(h.srv.table.byKey))
	for _, cl := range h.srv.table.byKey {
		cls = append(cls, cl)
	}
	h.srv.table.mu.Unlock()
	for _, cl := range cls {
		cl.wmu.Lock()
		if cl.cw != nil {
			holding++
		}
		cl.wmu.Unlock()
	}
	return holding, len(cls)
}

// TestTxModeIdleClientCost checks what an idle transaction-mode client keeps once its answer
// came: no buffered writer (32 KiB), and not the stack its login grew (the goroutine that
// serves the session is not the one that ran the SCRAM exchange, so a garbage collection can
// shrink it).
func TestTxModeIdleClientCost(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	warm := h.pgconnect(t, ctx, "")
	if _, err := warm.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_ = warm.Close(ctx)
	h.waitIdle(t)
	runtime.GC()
	runtime.GC()
	base := readMemSplit(t)

	const n = 40
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		conns[i] = h.pgconnect(t, ctx, "")
		if _, err := conns[i].Exec(ctx, "select 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	var holding, clients int
	if !pgtest.WaitFor(5*time.Second, func() bool {
		holding, clients = idleWriters(h)
		return holding == 0 && clients == n
	}) {
		t.Errorf("%d of %d idle clients keep a client writer", holding, clients)
	}
	runtime.GC()
	runtime.GC()
	idle := readMemSplit(t)
	perClient := (idle.stacks - base.stacks) / n
	t.Logf("goroutine stacks per idle client after GC: %.0f bytes", perClient)
	if perClient > 6<<10 && !raceEnabled {
		t.Errorf("an idle client keeps %.1f KiB of goroutine stack after a GC, want at most 6 KiB", perClient/1024)
	}
}

// TestTxModeClientClosesRightAfterRequest: a client that sends a message and closes its end at
// once (both reach the proxy in one readiness event) is noticed, whatever the message: a batch
// without its Sync, COPY data, a Flush with nothing to flush, a Query. Reading without the read
// that ends in EAGAIN must not miss the end of the connection (rawread.go).
func TestTxModeClientClosesRightAfterRequest(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	setup := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, setup, "create table if not exists close_copy (i int)"); err != nil {
		t.Fatal(err)
	}
	_ = setup.Close(ctx)
	sends := map[string][]pgproto3.FrontendMessage{
		"batch without Sync": {&pgproto3.Parse{Query: "select pg_sleep(0.01)"}, &pgproto3.Bind{}, &pgproto3.Execute{}},
		"COPY data":          {&pgproto3.Query{String: "copy close_copy from stdin"}, &pgproto3.CopyData{Data: []byte("1\n")}},
		"Query":              {&pgproto3.Query{String: "select pg_sleep(0.05)"}},
		"Flush alone":        {&pgproto3.Flush{}},
		"Sync":               {&pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}
	for name, msgs := range sends {
		t.Run(name, func(t *testing.T) {
			for range 10 {
				c := h.pgconnect(t, ctx, "")
				if _, err := simple(ctx, c, "select 1"); err != nil {
					t.Fatal(err)
				}
				fe := c.Frontend()
				for _, m := range msgs {
					fe.Send(m)
				}
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				_ = c.Conn().Close()
			}
			h.waitIdle(t)
		})
	}
}
