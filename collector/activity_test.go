package collector

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// openSession connects to db with an application name and closes it at test end.
func openSession(t *testing.T, db, app string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(cluster.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = app
	c, err := pgx.ConnectConfig(ctxTimeout(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

func TestActivityIdleInTransactionAndLockWaits(t *testing.T) {
	createDB(t, "activity_t")
	e := newEnv(t, "", func(c *Config) { c.Enabled = map[string]bool{"database": false, "settings": false} })
	ctx := ctxTimeout(t, 30*time.Second)

	for range 3 {
		c := openSession(t, "activity_t", "iit-app")
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	// One session holds a lock, another waits for it.
	holder := openSession(t, "activity_t", "lock-holder")
	for _, sql := range []string{"CREATE TABLE t (id int)", "BEGIN", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE"} {
		if _, err := holder.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	waiter := openSession(t, "activity_t", "lock-waiter")
	waitDone := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT count(*) FROM t")
		waitDone <- err
	}()
	if !pgtest.WaitFor(10*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = 'activity_t'")
		return n == 1
	}) {
		t.Fatal("the waiting session never waited on the lock")
	}

	var s scrape
	// The idle-in-transaction age is measured from the last statement; give it a moment to be > 0.
	if !pgtest.WaitFor(10*time.Second, func() bool {
		s = e.scrape(t, 0, 20*time.Second)
		vs := s.values("pg_stat_activity_idle_in_transaction_max_seconds", map[string]string{"datname": "activity_t"})
		return len(vs) == 1 && vs[0] > 0
	}) {
		t.Fatalf("idle in transaction age never above 0:\n%s", s.body)
	}
	if s.status != 200 {
		t.Fatalf("status %d", s.status)
	}
	db := map[string]string{"datname": "activity_t"}
	// The three sessions plus the lock holder, which sits idle in its transaction too.
	if got := s.value(t, "pg_stat_activity_idle_in_transaction_sessions", db); got != 4 {
		t.Errorf("idle in transaction sessions = %v, want 4", got)
	}
	if got := s.value(t, "pg_stat_activity_waiting_on_locks_sessions", db); got != 1 {
		t.Errorf("sessions waiting on locks = %v, want 1", got)
	}
	if got := s.value(t, "pg_stat_activity_oldest_xact_seconds", db); got <= 0 {
		t.Errorf("oldest transaction age = %v, want > 0", got)
	}
	if got := s.value(t, "pg_stat_activity_count", map[string]string{"datname": "activity_t",
		"state": "idle in transaction", "application_name": "iit-app", "usename": "postgres"}); got != 3 {
		t.Errorf("pg_stat_activity_count for iit-app = %v, want 3", got)
	}
	if got := s.value(t, "pg_stat_activity_max_tx_duration", map[string]string{"datname": "activity_t",
		"state": "idle in transaction", "application_name": "iit-app"}); got <= 0 {
		t.Errorf("max_tx_duration = %v, want > 0", got)
	}
	// Databases without sessions are still there, with zeros.
	if got := s.value(t, "pg_stat_activity_idle_in_transaction_sessions", map[string]string{"datname": "template1"}); got != 0 {
		t.Errorf("template1 idle in transaction = %v, want 0", got)
	}
	// The collector's own session is visible, identified by its application name.
	if got := s.value(t, "pg_stat_activity_count", map[string]string{"application_name": "pgsidecar-collector",
		"state": "active"}); got != 1 {
		t.Errorf("collector sessions = %v, want 1", got)
	}

	// Three idle in transaction, the lock holder and waiter, the collector: at least six; the
	// exact number depends on other sessions of the shared test server.
	conns := s.value(t, "pg_server_connections", nil)
	if conns < 6 {
		t.Errorf("pg_server_connections = %v, want at least 6", conns)
	}
	var perDB float64
	for _, v := range s.values("pg_stat_activity_count", nil) {
		perDB += v
	}
	if perDB != conns {
		t.Errorf("pg_server_connections = %v, but pg_stat_activity_count sums to %v", conns, perDB)
	}
	if got, want := s.value(t, "pg_server_connection_utilization_ratio", nil), conns/100; got != want {
		t.Errorf("utilisation = %v, want %v (max_connections 100)", got, want)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "activity"}); got != 1 {
		t.Errorf("activity success = %v", got)
	}

	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-waitDone; err != nil {
		t.Fatalf("waiting session: %v", err)
	}
}
