package pool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// hangGuard runs fn and fails the test if it has not returned long after its own deadline: a
// liveness check (nothing hangs forever), not a performance assertion.
func hangGuard(t *testing.T, deadline time.Duration, fn func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(deadline + 20*time.Second):
		t.Fatalf("call still running 20s past its %s deadline", deadline)
		return nil
	}
}

func TestRepeatedCrashRestartsUnderLoad(t *testing.T) {
	cluster.RequireControl(t)
	if testing.Short() {
		t.Skip("20 restarts take a while")
	}
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 6, 2
	cfg.ApplicationName = "crash-loop"
	cfg.RetryAttempts = 3
	h := newManager(t, cfg)
	h.waitHealthy(t)

	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := hangGuard(t, 3*time.Second, func(ctx context.Context) error {
					if w%2 == 0 {
						return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
							_, err := h.m.Pool().Exec(ctx, "SELECT 1")
							return err
						})
					}
					return h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
						_, err := tx.Exec(ctx, "SELECT pg_sleep(0.005)")
						return err
					}, TxOptions{Timeout: 2 * time.Second, MaxWait: time.Second})
				})
				if err == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	for i := range 20 {
		before := ok.Load()
		if !pgtest.WaitFor(30*time.Second, func() bool { return ok.Load() > before+5 }) {
			t.Fatalf("round %d: no successful calls after restart; health %+v", i, h.m.Health())
		}
		if err := cluster.Stop("immediate"); err != nil {
			t.Fatal(err)
		}
		if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
			t.Fatalf("round %d: never noticed the server was down", i)
		}
		if err := cluster.StartAgain(); err != nil {
			t.Fatal(err)
		}
		if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
			t.Fatalf("round %d: did not recover: %+v", i, h.m.Health())
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls succeeded, %d failed across 20 crashes", ok.Load(), failed.Load())
	if got := h.metricValue(t, "pgsidecar_reconnects_total", nil); got < 20 {
		t.Fatalf("reconnects = %v, want at least 20", got)
	}
	// No leaked server sessions: what the server sees is what the pool holds.
	if !pgtest.WaitFor(10*time.Second, func() bool {
		return cluster.Sessions(t, "crash-loop") == int64(h.m.Stats().TotalConns)
	}) {
		t.Fatalf("server sessions %d, pool connections %d", cluster.Sessions(t, "crash-loop"), h.m.Stats().TotalConns)
	}
	if st := h.m.Stats(); st.UsedConns != 0 || st.TotalConns > cfg.MaxConns {
		t.Fatalf("pool after the storm: %+v", st)
	}
}

func TestServerDownLongerThanRetryBudget(t *testing.T) {
	cluster.RequireControl(t)
	cfg := testConfig(t)
	cfg.RetryAttempts = 3
	h := newManager(t, cfg)
	h.waitHealthy(t)
	if err := cluster.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cluster.StartAgain(); err != nil {
			t.Fatal(err)
		}
	}()
	calls := 0
	err := hangGuard(t, 30*time.Second, func(ctx context.Context) error {
		return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
			calls++
			_, err := h.m.Pool().Exec(ctx, "SELECT 1")
			return err
		})
	})
	var re *RetryError
	if !errors.As(err, &re) || re.Attempts != 3 || calls != 3 || !IsConnectionError(err) {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
	if !strings.Contains(err.Error(), "failed after 3 attempts") {
		t.Fatalf("message %q does not say how many attempts", err)
	}
}

func TestServerDownAtStartThenUp(t *testing.T) {
	cluster.RequireControl(t)
	if err := cluster.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	h := newManager(t, cfg)
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.log.Count("Database connection failed") >= 1 }) {
		t.Fatal("no failed attempt logged")
	}
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	// The connect loop backs off up to RetryMaxDelay (100ms here), so it connects soon after.
	h.waitHealthy(t)
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestTerminatedBackendsAreReplaced(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinConns, cfg.MaxConns = 3, 3
	cfg.ApplicationName = "terminate-me"
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 60*time.Second)
	if !pgtest.WaitFor(10*time.Second, func() bool { return cluster.Sessions(t, "terminate-me") == 3 }) {
		t.Fatal("warm-up incomplete")
	}
	if err := cluster.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'terminate-me'"); err != nil {
		t.Fatal(err)
	}
	// Retried calls succeed on fresh connections; the pool ends healthy and full again.
	for i := range 10 {
		if err := h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
			_, err := h.m.Pool().Exec(ctx, "SELECT 1")
			return err
		}); err != nil {
			t.Fatalf("call %d after pg_terminate_backend: %v", i, err)
		}
	}
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
		t.Fatalf("health %+v", h.m.Health())
	}
}

func TestConnectionLimitGives53300(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS limited; CREATE ROLE limited LOGIN PASSWORD 'limited-pw' CONNECTION LIMIT 2"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DatabaseURL = cluster.URLFor("limited", "limited-pw", "postgres")
	cfg.MinConns, cfg.MaxConns, cfg.RetryAttempts = 1, 4, 2
	h := newManager(t, cfg)
	h.waitHealthy(t)
	var held []*pgxpool.Conn
	for range 2 {
		c, err := h.m.Pool().Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	err := h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
		_, err := h.m.Pool().Exec(ctx, "SELECT 1")
		return err
	})
	for _, c := range held {
		c.Release()
	}
	var pgErr *pgconn.PgError
	var re *RetryError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !errors.As(err, &re) || re.Attempts != 2 {
		t.Fatalf("want 53300 after 2 attempts, got %v", err)
	}
	if strings.Contains(err.Error(), "limited-pw") {
		t.Fatal("error leaks the password")
	}
	if got := h.metricValue(t, "pgsidecar_pool_connect_errors_total", nil); got < 2 {
		t.Fatalf("connect errors = %v", got)
	}
	// With the held connections back, the pool serves again.
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestStatementTimeoutIsNotAConnectionProblem(t *testing.T) {
	cfg := testConfig(t)
	cfg.DatabaseURL = cluster.URL("") + "&statement_timeout=100"
	h := newManager(t, cfg)
	h.waitHealthy(t)
	calls := 0
	err := h.m.ExecuteWithRetry(ctxTimeout(t, 30*time.Second), func(ctx context.Context) error {
		calls++
		_, err := h.m.Pool().Exec(ctx, "SELECT pg_sleep(2)")
		return err
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" || calls != 1 {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
	if st := h.m.Health().Status; st != StatusHealthy {
		t.Fatalf("a statement timeout made the pool %s", st)
	}
	if got := h.metricValue(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "57014"}); got != 1 {
		t.Fatalf("57014 errors = %v", got)
	}
}

func TestStalledNetwork(t *testing.T) {
	fp, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer fp.Close()
	cfg := testConfig(t)
	cfg.DatabaseURL = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", pgtest.SuperuserPassword, fp.Port())
	cfg.HealthCheckInterval = 200 * time.Millisecond
	cfg.HealthCheckTimeout = 500 * time.Millisecond
	cfg.ConnectTimeout = time.Second
	cfg.RetryAttempts = 1
	h := newManager(t, cfg)
	h.waitHealthy(t)

	// Added latency: slower, still correct.
	fp.SetLatency(20 * time.Millisecond)
	var v int
	if err := h.m.Pool().QueryRow(ctxTimeout(t, 10*time.Second), "SELECT 5").Scan(&v); err != nil || v != 5 {
		t.Fatalf("with latency: %v %v", v, err)
	}
	fp.SetLatency(0)

	// Black hole: calls end at their deadline, the health check notices.
	fp.SetMode(faultproxy.BlackHole)
	err = hangGuard(t, time.Second, func(ctx context.Context) error {
		_, err := h.m.Pool().Exec(ctx, "SELECT 1")
		return err
	})
	if err == nil {
		t.Fatal("query through a black hole succeeded")
	}
	if !pgtest.WaitFor(15*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
		t.Fatalf("black hole not detected: %+v", h.m.Health())
	}
	if hl := h.m.Health(); !strings.Contains(hl.LastError, "no answer within DB_HEALTH_CHECK_TIMEOUT (500ms)") || hl.LastErrorCode != "timeout" {
		t.Errorf("health error of a black-holed check does not say it timed out: %q (%s)", hl.LastError, hl.LastErrorCode)
	}

	// Resets: connections fail fast.
	fp.SetMode(faultproxy.Refuse)
	err = hangGuard(t, 5*time.Second, func(ctx context.Context) error {
		_, err := h.m.Pool().Exec(ctx, "SELECT 1")
		return err
	})
	if err == nil || !IsConnectionError(err) {
		t.Fatalf("query through resets: %v", err)
	}

	// Network back: healthy again.
	fp.SetMode(faultproxy.Pass)
	if !pgtest.WaitFor(20*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
		t.Fatalf("did not recover after the network came back: %+v", h.m.Health())
	}
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}
