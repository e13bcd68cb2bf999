package proxy

import (
	"runtime"
	"sync"
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

// shortParkDelay makes idle clients park after d, for the test (call it before newTxHarness,
// so that the delay is put back after the Server closed).
func shortParkDelay(t testing.TB, d time.Duration) {
	t.Helper()
	old := parkDelay
	parkDelay = d
	t.Cleanup(func() { parkDelay = old })
}

// parkedClients is the number of clients parked in the watcher.
func parkedClients(h *harness) int {
	return h.srv.watch.parkedCount()
}

func waitParked(t testing.TB, h *harness, n int) {
	t.Helper()
	if !pgtest.WaitFor(10*time.Second, func() bool { return parkedClients(h) == n }) {
		t.Fatalf("%d clients parked, want %d", parkedClients(h), n)
	}
}

// TestTxModeIdleClientCost checks what an idle transaction-mode client keeps once its answer
// came: no buffered writer (32 KiB), and, once it has parked (idlewatch.go), no goroutine and so
// no stack.
func TestTxModeIdleClientCost(t *testing.T) {
	shortParkDelay(t, 20*time.Millisecond)
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, time.Minute)
	warm := h.pgconnect(t, ctx, "")
	if _, err := warm.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_ = warm.Close(ctx)
	h.waitIdle(t)
	waitParked(t, h, 0)
	const n = 100
	// The runtime keeps goroutines that ended, with their smallest stacks, for reuse (up to 64 a
	// processor; a GC frees the stacks of the rest): the base has as many as it keeps.
	var started, stop sync.WaitGroup
	stop.Add(1)
	for range 64*runtime.GOMAXPROCS(0) + 100 {
		started.Add(1)
		go func() {
			started.Done()
			stop.Wait()
		}()
	}
	started.Wait()
	stop.Done()
	runtime.GC()
	runtime.GC()
	base := readMemSplit(t)
	goroutines := runtime.NumGoroutine()

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
	if watchSupported {
		waitParked(t, h, n)
	}
	runtime.GC()
	runtime.GC()
	idle := readMemSplit(t)
	perClient := (idle.stacks - base.stacks) / n
	more := runtime.NumGoroutine() - goroutines
	t.Logf("per idle client after GC: %.0f bytes of goroutine stacks, %.2f goroutines", perClient, float64(more)/n)
	if !watchSupported {
		return
	}
	if more > 2 { // the watcher's
		t.Errorf("%d idle clients run %d more goroutines, want none but the watcher's", n, more)
	}
	// The runtime counts stacks by 32 KiB span: ±328 bytes for each of 100 clients.
	if perClient > 1<<10 && !raceEnabled {
		t.Errorf("an idle client keeps %.0f bytes of goroutine stack after a GC, want about 0 (a goroutine's least is 2 KiB)", perClient)
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
