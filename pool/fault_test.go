package pool

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
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
	fp, cfg := viaFaultProxy(t)
	defer fp.Close() // before the Manager's Close (a cleanup): it ends connections in progress
	cfg.HealthCheckInterval = time.Second
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
	err := hangGuard(t, time.Second, func(ctx context.Context) error {
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

// insertCount is the number of rows in table whose tag is tag, read directly from the server.
func insertCount(t *testing.T, table, tag string) int64 {
	t.Helper()
	n, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT count(*) FROM "+table+" WHERE tag = $1", tag)
	if err != nil {
		t.Fatalf("counting rows: %v", err)
	}
	return n
}

// createTagTable makes a table with no unique constraint (a duplicate insert must show up as a
// second row, not as a 23505 that hides it), dropped at the end of the test.
func createTagTable(t *testing.T, table string) {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	if err := cluster.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id serial PRIMARY KEY, tag text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
}

// waitCut waits for a cut armed with CutReplyAfter (a liveness bound, not a timing assertion).
func waitCut(t *testing.T, cut <-chan struct{}) {
	t.Helper()
	select {
	case <-cut:
	case <-time.After(30 * time.Second):
		t.Fatal("the proxy never saw the marked request's reply")
	}
}

// TestLostReplyIsNotRetried: a statement whose bytes reached the server, which ran and committed
// it, but whose reply never came back (the connection was reset instead) is not run again. The
// caller gets the connection error and the row exists once. The proxy passes traffic again right
// after the cut, so a retry, if one were made, would go through and insert a second row.
func TestLostReplyIsNotRetried(t *testing.T) {
	fp, cfg := viaFaultProxy(t)
	defer fp.Close() // before the Manager's Close (a cleanup): it ends connections in progress
	cfg.RetryAttempts = 5
	h := newManager(t, cfg)
	h.waitHealthy(t)

	t.Run("autocommit statement", func(t *testing.T) {
		createTagTable(t, "lost_reply")
		// No arguments, so pgx sends one simple-protocol Query: the server commits the INSERT
		// before it writes CommandComplete, so the reply the proxy drops implies the commit.
		tag := "lost-reply-once"
		cut := fp.CutReplyAfter([]byte(tag))
		retriesBefore := h.metricValue(t, "pgsidecar_retries_total", nil)
		calls := 0
		err := hangGuard(t, 30*time.Second, func(ctx context.Context) error {
			return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
				calls++
				_, err := h.m.Pool().Exec(ctx, "INSERT INTO lost_reply (tag) VALUES ('"+tag+"')")
				return err
			})
		})
		waitCut(t, cut)
		if n := insertCount(t, "lost_reply", tag); n != 1 || calls != 1 {
			t.Fatalf("the statement ran %d times, %d rows (want 1, 1); err=%v", calls, n, err)
		}
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) || !IsConnectionError(err) || Retryable(err) {
			t.Fatalf("want a connection error that is not retryable, got %v", err)
		}
		var re *RetryError
		if !errors.As(err, &re) || re.Attempts != 1 {
			t.Fatalf("want a *RetryError after 1 attempt, got %v", err)
		}
		if got := h.metricValue(t, "pgsidecar_retries_total", nil) - retriesBefore; got != 0 {
			t.Fatalf("pgsidecar_retries_total rose by %v", got)
		}
	})

	// The same with arguments: pgx uses the extended protocol (Parse once, then Bind/Execute
	// per call) and reports the loss as a read error, not as pgconn.ErrConnClosed.
	t.Run("statement with arguments", func(t *testing.T) {
		createTagTable(t, "lost_reply_args")
		tag := "lost-args-once"
		// The marker is the argument, sent in the Bind message after the statement was
		// prepared, so it is the INSERT's execution whose reply is lost.
		cut := fp.CutReplyAfter([]byte(tag))
		calls := 0
		err := hangGuard(t, 30*time.Second, func(ctx context.Context) error {
			return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
				calls++
				_, err := h.m.Pool().Exec(ctx, "INSERT INTO lost_reply_args (tag) VALUES ($1)", tag)
				return err
			})
		})
		waitCut(t, cut)
		var re *RetryError
		if err == nil || !IsConnectionError(err) || Retryable(err) || !errors.As(err, &re) || re.Attempts != 1 || calls != 1 {
			t.Fatalf("calls=%d err=%v", calls, err)
		}
		if n := insertCount(t, "lost_reply_args", tag); n != 1 {
			t.Fatalf("%d rows, want exactly 1", n)
		}
	})

	// The same for the COMMIT of a transaction: fn is not run again after a COMMIT whose
	// outcome the client never learned.
	t.Run("transaction commit", func(t *testing.T) {
		createTagTable(t, "lost_commit")
		// The simple-protocol Query message of pgx's Tx.Commit: 'Q', length 11, "commit\0".
		cut := fp.CutReplyAfter([]byte("Q\x00\x00\x00\x0bcommit\x00"))
		calls := 0
		err := hangGuard(t, 30*time.Second, func(ctx context.Context) error {
			return h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
				calls++
				_, err := tx.Exec(ctx, "INSERT INTO lost_commit (tag) VALUES ('lost-commit-once')")
				return err
			}, TxOptions{})
		})
		waitCut(t, cut)
		var re *RetryError
		if err == nil || !IsConnectionError(err) || !errors.As(err, &re) || re.Attempts != 1 || calls != 1 {
			t.Fatalf("calls=%d err=%v", calls, err)
		}
		if n := insertCount(t, "lost_commit", "lost-commit-once"); n != 1 {
			t.Fatalf("%d rows, want exactly 1 (the commit reached the server)", n)
		}
	})

	// The pool gets over the reset connections by itself.
	h.waitHealthy(t)
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// TestConnectionLostBeforeSendIsRetried is the contrast: a pool connection whose backend was
// terminated while idle holds the server's FATAL 57P01; the statement sent on it never runs (the
// backend is gone), the error comes from the server, and ExecuteWithRetry runs it again on a new
// connection. The first attempt uses that dead connection explicitly: pgxpool would ping and drop
// it on its own when it had been idle for over a second.
func TestConnectionLostBeforeSendIsRetried(t *testing.T) {
	cfg := testConfig(t)
	cfg.ApplicationName = "lost-before-send"
	cfg.RetryAttempts = 3
	h := newManager(t, cfg)
	h.waitHealthy(t)
	createTagTable(t, "lost_before_send")
	ctx := ctxTimeout(t, 60*time.Second)

	dead, err := h.m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			dead.Release()
		}
	}
	defer release()
	pid := dead.Conn().PgConn().PID()
	if err := cluster.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(10*time.Second, func() bool {
		n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
		return err == nil && n == 0
	}) {
		t.Fatal("the terminated backend did not exit")
	}

	retriesBefore := h.metricValue(t, "pgsidecar_retries_total", nil)
	const insert = "INSERT INTO lost_before_send (tag) VALUES ('retried-once')"
	calls := 0
	var firstErr error
	err = hangGuard(t, 30*time.Second, func(ctx context.Context) error {
		return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
			calls++
			if calls == 1 {
				_, err := dead.Exec(ctx, insert)
				release()
				firstErr = err
				return err
			}
			_, err := h.m.Pool().Exec(ctx, insert)
			return err
		})
	})
	if err != nil || calls != 2 {
		t.Fatalf("calls=%d err=%v (first attempt: %v)", calls, err, firstErr)
	}
	var pgErr *pgconn.PgError
	if !errors.As(firstErr, &pgErr) || pgErr.Code != "57P01" {
		t.Fatalf("first attempt: want the server's 57P01, got %v", firstErr)
	}
	if n := insertCount(t, "lost_before_send", "retried-once"); n != 1 {
		t.Fatalf("%d rows, want exactly 1", n)
	}
	if got := h.metricValue(t, "pgsidecar_retries_total", nil) - retriesBefore; got != 1 {
		t.Fatalf("pgsidecar_retries_total rose by %v, want 1", got)
	}
}

// TestStartWhileServerFull: a Manager started while every connection slot a non-superuser may
// use is taken (max_connections minus the reserved slots) returns from New at once, reports
// unhealthy with the server's 53300, and ExecuteWithRetry fails with 53300 after retrying with
// backoff (53300 is retryable: slots free up). Once the slots are released the Manager connects
// by itself.
func TestStartWhileServerFull(t *testing.T) {
	if cluster.External() {
		t.Skip("fills the whole server: needs the package's own cluster")
	}
	ctx := ctxTimeout(t, 3*time.Minute)
	// Not a superuser: superusers may also use superuser_reserved_connections.
	const role, password = "server_full_app", "server-full-secret-pw"
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS "+role+"; CREATE ROLE "+role+" LOGIN PASSWORD '"+password+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	maxConns, err := cluster.QueryInt(ctx, "SELECT current_setting('max_connections')::int")
	if err != nil {
		t.Fatal(err)
	}
	reserved, err := cluster.QueryInt(ctx, "SELECT current_setting('superuser_reserved_connections')::int + "+
		"coalesce(current_setting('reserved_connections', true)::int, 0)")
	if err != nil {
		t.Fatal(err)
	}
	slots := int(maxConns - reserved) // what non-superusers may use

	// Hold every one of those slots, and nothing more. Sessions of earlier tests that are still
	// closing hold slots for a moment: take theirs once they are gone.
	dsn := cluster.URLFor(role, password, "postgres")
	var held []*pgx.Conn
	release := func() {
		for _, c := range held {
			_ = c.Close(context.Background())
		}
		held = nil
	}
	t.Cleanup(release)
	if !pgtest.WaitFor(60*time.Second, func() bool {
		for len(held) < slots {
			c, err := pgx.Connect(ctx, dsn+"&application_name=server-full-filler")
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "53300" {
				return false // a slot is still taken by someone else
			}
			if err != nil {
				t.Fatalf("filling the server: %v", err)
			}
			held = append(held, c)
		}
		return true
	}) {
		t.Fatalf("took only %d of the %d slots", len(held), slots)
	}
	_, err = pgx.Connect(ctx, dsn)
	var full *pgconn.PgError
	if !errors.As(err, &full) || full.Code != "53300" {
		t.Fatalf("with %d connections held the server still accepts %s: %v", len(held), role, err)
	}
	t.Logf("server full with %d connections (max_connections %d, %d reserved): %s", len(held), maxConns, reserved, full.Message)

	cfg := testConfig(t)
	cfg.DatabaseURL = dsn
	cfg.ApplicationName = "server-full-app"
	cfg.MinConns, cfg.MaxConns = 1, 2
	cfg.RetryAttempts = 3
	h := &harness{reg: prometheus.NewRegistry(), log: &testutil.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	type result struct {
		m   *Manager
		err error
	}
	r := returnsWithin(t, 30*time.Second, "pool.New on a full server", func() result {
		m, err := New(cfg, WithLogger(logger), WithRegisterer(h.reg))
		return result{m, err}
	})
	if r.err != nil {
		t.Fatalf("New: %v", r.err)
	}
	h.m = r.m
	t.Cleanup(h.m.Close)

	if !pgtest.WaitFor(30*time.Second, func() bool {
		hl := h.m.Health()
		return hl.Status == StatusUnhealthy && strings.Contains(hl.LastError, "(SQLSTATE 53300)")
	}) {
		t.Fatalf("health on a full server: %+v\nlogs:\n%s", h.m.Health(), h.log.String())
	}
	hl := h.m.Health()
	if strings.Contains(hl.LastError, password) {
		t.Fatalf("health error %q shows the password", hl.LastError)
	}
	if hl.LastErrorCode != "53300" {
		t.Errorf("LastErrorCode is %q on a full server, want 53300", hl.LastErrorCode)
	}

	// 53300 is retryable: ExecuteWithRetry tries DB_RETRY_ATTEMPTS times, with backoff between,
	// then returns the server's error.
	retriesBefore := h.metricValue(t, "pgsidecar_retries_total", nil)
	calls := 0
	err = hangGuard(t, 30*time.Second, func(ctx context.Context) error {
		return h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
			calls++
			_, err := h.m.Pool().Exec(ctx, "SELECT 1")
			return err
		})
	})
	var pgErr *pgconn.PgError
	var re *RetryError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || SQLState(err) != "53300" ||
		!errors.As(err, &re) || re.Attempts != 3 || calls != 3 {
		t.Fatalf("want 53300 after 3 attempts, got calls=%d err=%v", calls, err)
	}
	if got := h.metricValue(t, "pgsidecar_retries_total", nil) - retriesBefore; got != 2 {
		t.Fatalf("pgsidecar_retries_total rose by %v, want 2", got)
	}
	if strings.Contains(err.Error(), password) || strings.Contains(h.log.String(), password) {
		t.Fatal("the error or the logs show the password")
	}

	// Slots free again: the Manager connects by itself and serves.
	release()
	h.waitHealthy(t)
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// A frozen server (SIGSTOP: connections open, nothing answers) is not a full pool. Acquires
// that run out of DB_CONNECTION_TIMEOUT while callers hold no connection say the database did
// not answer, and do not count as acquire timeouts (the saturation signal); the health check
// reports the server unhealthy; after SIGCONT the pool serves again.
func TestFrozenServerIsNotAFullPool(t *testing.T) {
	cluster.RequireControl(t)
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 8, 2
	cfg.ConnectTimeout = time.Second
	// No check on the timer: an acquire that the database does not answer asks for one.
	cfg.HealthCheckInterval = time.Hour
	cfg.HealthCheckTimeout = 500 * time.Millisecond
	h := newManager(t, cfg)
	h.waitHealthy(t)
	thaw := freezeIdle(t)
	frozen := time.Now()
	// More acquirers than connections: their pings and connects in progress must not make the
	// pool look busy either.
	errs := make(chan error, 10)
	var got []*pgxpool.Conn
	var gotMu sync.Mutex
	defer func() {
		for _, c := range got {
			c.Release()
		}
	}()
	for range 10 {
		go func() {
			c, err := h.m.Acquire(context.Background())
			if err == nil {
				gotMu.Lock()
				got = append(got, c) // kept, or the next acquire would take it unpinged
				gotMu.Unlock()
			}
			errs <- err
		}()
	}
	failed := 0
	for range 10 {
		var err error
		select {
		case err = <-errs:
		case <-time.After(30 * time.Second):
			t.Fatal("an acquire is still waiting 30 s after the freeze")
		}
		if err == nil {
			continue // a connection used less than a second ago is handed out unpinged
		}
		failed++
		var ae *AcquireError
		if !errors.As(err, &ae) || !ae.Opening {
			t.Fatalf("acquire on a frozen server = %v, want an AcquireError saying the database did not answer", err)
		}
		if !strings.Contains(err.Error(), "did not answer") && !strings.Contains(err.Error(), "no connection could be opened") {
			t.Fatalf("acquire error %q", err)
		}
		if strings.Contains(err.Error(), "no free connection") {
			t.Fatalf("a frozen server reported as a full pool: %v", err)
		}
	}
	if failed < 8 {
		t.Fatalf("only %d of 10 acquires failed on a frozen server", failed)
	}
	if got := h.metricValue(t, "pgsidecar_pool_acquire_timeouts_total", nil); got != 0 {
		t.Fatalf("acquire_timeouts_total = %v on a frozen server, want 0", got)
	}
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
		t.Fatalf("still %+v with the server frozen", h.m.Health())
	}
	t.Logf("unhealthy %s after the freeze: %+v", time.Since(frozen), h.m.Health())
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
		t.Fatalf("not healthy after SIGCONT: %+v", h.m.Health())
	}
	c, err := h.m.Acquire(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatalf("acquire after SIGCONT: %v", err)
	}
	c.Release()
}

// TestRecoveryWhileCallersHoldEveryConnection: after a failed check, callers take every
// connection as the database comes back and keep them busy. The check then cannot ping, but
// the statements they run show the database answers: the pool must read healthy again, not
// stay unhealthy for as long as the callers hold on.
func TestRecoveryWhileCallersHoldEveryConnection(t *testing.T) {
	cluster.RequireControl(t)
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 2, 1
	cfg.ConnectTimeout = time.Second
	cfg.HealthCheckInterval = time.Hour // only the rechecks of an unhealthy pool run
	cfg.HealthCheckTimeout = 500 * time.Millisecond
	h := newManager(t, cfg)
	h.waitHealthy(t)
	thaw := freezeIdle(t)
	if _, err := h.m.Acquire(context.Background()); err == nil {
		t.Fatal("acquired a connection on a frozen server")
	}
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
		t.Fatalf("a frozen server never made the pool unhealthy: %+v", h.m.Health())
	}
	// Two callers, one per connection, that take a connection as soon as one opens and keep it
	// busy until the test ends.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				c, err := h.m.Pool().Acquire(ctx)
				if err != nil {
					continue
				}
				for ctx.Err() == nil {
					if _, err := c.Exec(ctx, "SELECT pg_sleep(0.01)"); err != nil {
						break
					}
				}
				c.Release()
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // the callers' connects are under way
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status != StatusUnhealthy }) {
		t.Fatalf("the pool stayed unhealthy while its callers' statements succeeded: %+v, held %d",
			h.m.Health(), h.m.tracer.held.Load())
	}
}

// freezeIdle freezes the server (SIGSTOP) once the pool's connections have been idle long
// enough that pgxpool pings them on acquire. It returns the thaw, which the test may call
// earlier; it runs at the end of the test otherwise.
func freezeIdle(t *testing.T) func() error {
	t.Helper()
	time.Sleep(1100 * time.Millisecond)
	thaw, err := cluster.Freeze()
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var thawErr error
	do := func() error {
		once.Do(func() { thawErr = thaw() })
		return thawErr
	}
	t.Cleanup(func() { _ = do() })
	return do
}
