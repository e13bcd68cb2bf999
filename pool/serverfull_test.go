package pool

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestServerFullKeepsThePoolsConnections: when the server reaches max_connections, a pool that
// cannot open another connection keeps the ones it holds (they work, and once closed could not
// be had again while the server is full) and reports degraded with the server's 53300, not
// unhealthy.
func TestServerFullKeepsThePoolsConnections(t *testing.T) {
	ctx := ctxTimeout(t, 2*time.Minute)
	// A role without superuser rights: superusers may use the reserved slots.
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS fullrole"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE ROLE fullrole LOGIN PASSWORD 'fullrole-pw'"); err != nil {
		t.Fatal(err)
	}
	dsn := cluster.URLFor("fullrole", "fullrole-pw", "postgres") + "&application_name=serverfull"
	cfg := testConfig(t)
	cfg.DatabaseURL = dsn
	cfg.MaxConns, cfg.MinConns = 3, 1
	cfg.HealthCheckInterval = time.Hour // only checks triggered by errors
	h := newManager(t, cfg)
	h.waitHealthy(t)

	held, err := h.m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			held.Release()
		}
	}()

	// Take every remaining connection slot.
	var fillers []*pgx.Conn
	defer func() {
		for _, c := range fillers {
			_ = c.Close(context.Background())
		}
	}()
	for i := 0; ; i++ {
		if i > 200 {
			t.Fatal("the server accepted 200 connections without refusing one")
		}
		c, err := pgx.Connect(ctx, dsn)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "53300" {
			break
		}
		if err != nil {
			t.Fatalf("filling the server: %v", err)
		}
		fillers = append(fillers, c)
	}

	// The held connection is busy, so this query needs a new one, which the server refuses.
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); SQLState(err) != "53300" {
		t.Fatalf("query on a full server: want 53300, got %v", err)
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().LastErrorCode == "53300" }) {
		t.Fatalf("the health check did not record 53300: %+v\n%s", h.m.Health(), h.log.String())
	}
	if st := h.m.Health().Status; st != StatusDegraded {
		t.Errorf("status %s with the server full and the pool's connection working, want degraded", st)
	}
	if up := h.metricValue(t, "pgsidecar_health_check_up", nil); up != 1 {
		t.Errorf("pgsidecar_health_check_up = %v while degraded, want 1", up)
	}
	// More refused acquires: each asks for a check, but the state is logged once, not per check.
	for range 5 {
		_, _ = h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1")
	}
	if n := strings.Count(h.log.String(), "the server refuses new connections"); n != 1 {
		t.Errorf("the full server was logged %d times, want once:\n%s", n, h.log.String())
	}
	if _, err := held.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the pool's own connection stopped working: %v", err)
	}
	held.Release()
	released = true
	if n := h.m.Stats().TotalConns; n < 1 {
		t.Fatalf("the pool dropped its connections (%d left) while the server was full", n)
	}
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a query on the kept connection: %v", err)
	}
}
