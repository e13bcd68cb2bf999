package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

func TestWarmupOpensMinConns(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinConns, cfg.MaxConns = 3, 6
	cfg.ApplicationName = "warmup-test"
	h := newManager(t, cfg)
	h.waitHealthy(t)
	if !pgtest.WaitFor(10*time.Second, func() bool { return cluster.Sessions(t, "warmup-test") == 3 }) {
		t.Fatalf("pg_stat_activity shows %d sessions, want 3", cluster.Sessions(t, "warmup-test"))
	}
	if !strings.Contains(h.log.String(), "Database connected") {
		t.Fatalf("no connect log line:\n%s", h.log.String())
	}

	res, err := h.m.Warmup(ctxTimeout(t, 10*time.Second), 5)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requested != 5 || res.Opened != 2 || res.Total != 5 {
		t.Fatalf("warm-up result %+v, want 2 opened, 5 total", res)
	}
	if n := cluster.Sessions(t, "warmup-test"); n != 5 {
		t.Fatalf("pg_stat_activity shows %d sessions after Warmup(5), want 5", n)
	}
	if _, err := h.m.Warmup(context.Background(), 7); err == nil || !strings.Contains(err.Error(), "DB_MAX_CONNECTIONS (6)") {
		t.Fatalf("Warmup above max: %v", err)
	}
	if got := h.metricValue(t, "pgsidecar_pool_connections", map[string]string{"state": "idle"}); got != 5 {
		t.Fatalf("idle connections metric = %v, want 5", got)
	}
}

func TestHistogramCountsEveryQuery(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	const n = 57
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var v int
			if err := h.m.Pool().QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
				t.Errorf("query %d: %v %v", i, v, err)
			}
		})
	}
	wg.Wait()
	if _, err := h.m.Pool().Exec(ctx, "INSERT INTO nosuchtable VALUES (1)"); err == nil {
		t.Fatal("insert into a missing table succeeded")
	}
	if got := h.metricValue(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": "select"}); got != n {
		t.Fatalf("select histogram count = %v, want %d", got, n)
	}
	if got := h.metricValue(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": "insert"}); got != 1 {
		t.Fatalf("insert histogram count = %v, want 1", got)
	}
	if got := h.metricValue(t, "pgsidecar_query_errors_total", map[string]string{"operation": "insert", "sqlstate": "42P01"}); got != 1 {
		t.Fatalf("42P01 error count = %v, want 1", got)
	}
	st := h.m.Stats()
	if st.Queries.Count != n+1 || st.Queries.Errors != 1 || st.Queries.BySQLState["42P01"] != 1 {
		t.Fatalf("stats %+v", st.Queries)
	}
	if st.Queries.P95 <= 0 || st.Queries.P50 > st.Queries.P95 || st.Queries.P95 > st.Queries.P99 {
		t.Fatalf("quantiles not ordered: %+v", st.Queries)
	}
}

// TestQuerySeriesOnFirstUse: an operation's duration series appear with its first query, not
// up front for every operation the pool could classify.
func TestQuerySeriesOnFirstUse(t *testing.T) {
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	var counts []uint64 // of the last operations() scrape
	operations := func() []string {
		counts = nil
		mfs, err := h.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var ops []string
		for _, mf := range mfs {
			if mf.GetName() != "pgsidecar_query_duration_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				counts = append(counts, m.GetHistogram().GetSampleCount())
				for _, l := range m.GetLabel() {
					if l.GetName() == "operation" {
						ops = append(ops, l.GetValue())
					}
				}
			}
		}
		return ops
	}
	if ops := operations(); len(ops) != 0 {
		t.Fatalf("duration series before any query: %v", ops)
	}
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if ops := operations(); len(ops) != 1 || ops[0] != "select" {
		t.Fatalf("duration series after one SELECT: %v, want [select]", ops)
	}
	if counts[0] != 1 {
		t.Fatalf("select count = %d, want 1", counts[0])
	}
	if st := h.m.Stats(); st.Queries.Count != 1 || st.Queries.ByOperation["select"] != 1 {
		t.Fatalf("stats %+v", st.Queries)
	}
}

func TestBatchAndCopyAreCounted(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.m.Pool().Exec(ctx, "DROP TABLE IF EXISTS batch_t; CREATE TABLE batch_t (id int primary key)"); err != nil {
		t.Fatal(err)
	}
	stmts := make([]Statement, 20)
	for i := range stmts {
		stmts[i] = Statement{SQL: "INSERT INTO batch_t VALUES ($1)", Args: []any{i}}
	}
	tags, err := h.m.ExecPipeline(ctx, stmts)
	if err != nil || len(tags) != 20 {
		t.Fatalf("pipeline: %d tags, %v", len(tags), err)
	}
	rows := [][]any{{100}, {101}, {102}}
	if _, err := h.m.Pool().CopyFrom(ctx, pgx.Identifier{"batch_t"}, []string{"id"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if got := h.metricValue(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": "insert"}); got != 20 {
		t.Fatalf("insert count = %v, want 20 (one per batched statement)", got)
	}
	if got := h.metricValue(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": "copy"}); got != 1 {
		t.Fatalf("copy count = %v, want 1", got)
	}
	// A failing statement in the middle stops the pipeline and reports the error.
	tags, err = h.m.ExecPipeline(ctx, []Statement{{SQL: "INSERT INTO batch_t VALUES (500)"}, {SQL: "INSERT INTO batch_t VALUES (1)"}})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || len(tags) != 1 {
		t.Fatalf("pipeline with duplicate: tags=%d err=%v", len(tags), err)
	}
	n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM batch_t WHERE id = 500")
	if n != 0 {
		t.Fatal("the pipeline's implicit transaction did not roll back its first statement")
	}
}

func TestSlowQueryIsLogged(t *testing.T) {
	cfg := testConfig(t)
	cfg.SlowQueryThreshold = 50 * time.Millisecond
	h := newManager(t, cfg)
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.m.Pool().Exec(ctx, "SELECT pg_sleep(0.1), $1::text", "argument-value-never-logged"); err != nil {
		t.Fatal(err)
	}
	logs := h.log.String()
	if !strings.Contains(logs, "Slow query detected") || !strings.Contains(logs, "operation=select") ||
		!strings.Contains(logs, `sql="SELECT pg_sleep($2), $1::text"`) {
		t.Fatalf("no slow query line:\n%s", logs)
	}
	if strings.Contains(logs, "argument-value-never-logged") {
		t.Fatal("slow query log contains an argument value")
	}
	if got := h.metricValue(t, "pgsidecar_slow_queries_total", nil); got != 1 {
		t.Fatalf("slow query counter = %v, want 1", got)
	}
	sq := h.m.SlowQueries()
	if len(sq) != 1 || sq[0].Operation != "select" || sq[0].Duration < 50*time.Millisecond {
		t.Fatalf("slow query ring: %+v", sq)
	}
}

func TestSerializationConflictIsRetriedAndBothCommit(t *testing.T) {
	cfg := testConfig(t)
	cfg.RetryAttempts = 5
	h := newManager(t, cfg)
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := h.m.Pool().Exec(ctx, "DROP TABLE IF EXISTS ser_t; CREATE TABLE ser_t (k int primary key, v int); INSERT INTO ser_t VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	// Both transactions read the row, then wait for each other before writing, so one of them
	// must fail with 40001 on its first try.
	var readers sync.WaitGroup
	readers.Add(2)
	var firstTry atomic.Int32
	var calls atomic.Int32
	tx := func() error {
		return h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
			calls.Add(1)
			var v int
			if err := tx.QueryRow(ctx, "SELECT v FROM ser_t WHERE k = 1").Scan(&v); err != nil {
				return err
			}
			if firstTry.Add(1) <= 2 {
				readers.Done()
				readers.Wait()
			}
			_, err := tx.Exec(ctx, "UPDATE ser_t SET v = $1 WHERE k = 1", v+1)
			return err
		}, TxOptions{IsoLevel: pgx.Serializable, Timeout: 20 * time.Second})
	}
	errs := make(chan error, 2)
	go func() { errs <- tx() }()
	go func() { errs <- tx() }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("transaction failed: %v", err)
		}
	}
	v, _ := cluster.QueryInt(ctx, "SELECT v FROM ser_t WHERE k = 1")
	if v != 2 {
		t.Fatalf("v = %d, want 2 (both increments committed)", v)
	}
	if calls.Load() < 3 {
		t.Fatalf("fn ran %d times; a conflict must have caused a retry", calls.Load())
	}
	if got := h.metricValue(t, "pgsidecar_retries_total", nil); got < 1 {
		t.Fatalf("retries_total = %v", got)
	}
	if got := h.metricValue(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "40001"}); got < 1 {
		t.Fatalf("no 40001 error counted")
	}
	if got := h.metricValue(t, "pgsidecar_transactions_total", map[string]string{"outcome": "commit"}); got != 2 {
		t.Fatalf("commits = %v, want 2", got)
	}
}

func TestUniqueViolationIsNotRetried(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.m.Pool().Exec(ctx, "DROP TABLE IF EXISTS uniq_t; CREATE TABLE uniq_t (name text primary key)"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Pool().Exec(ctx, "INSERT INTO uniq_t VALUES ('coffee')"); err != nil {
		t.Fatal(err)
	}
	calls := 0
	err := h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
		calls++
		_, err := h.m.Pool().Exec(ctx, "INSERT INTO uniq_t VALUES ('coffee')")
		return err
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("want 23505, got %v", err)
	}
	var re *RetryError
	if calls != 1 || !errors.As(err, &re) || re.Attempts != 1 || !strings.Contains(err.Error(), "after 1 attempt") {
		t.Fatalf("unique violation ran %d times: %v", calls, err)
	}
	if got := h.metricValue(t, "pgsidecar_retries_total", nil); got != 0 {
		t.Fatalf("retries_total = %v, want 0", got)
	}
}

func TestExecuteWithRetryValueGivesUpAfterAttempts(t *testing.T) {
	cfg := testConfig(t)
	cfg.RetryAttempts = 3
	h := newManager(t, cfg)
	ctx := ctxTimeout(t, 30*time.Second)
	calls := 0
	_, err := ExecuteWithRetryValue(ctx, h.m, func(ctx context.Context) (int, error) {
		calls++
		// A real deadlock error from the server, raised on purpose.
		_, err := h.m.Pool().Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40P01'; END $$")
		return 0, err
	})
	var re *RetryError
	if calls != 3 || !errors.As(err, &re) || re.Attempts != 3 {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
	v, err := ExecuteWithRetryValue(ctx, h.m, func(ctx context.Context) (int, error) {
		var n int
		err := h.m.Pool().QueryRow(ctx, "SELECT 42").Scan(&n)
		return n, err
	})
	if err != nil || v != 42 {
		t.Fatalf("value form: %v %v", v, err)
	}
	// Cancellation stops retrying at once.
	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = h.m.ExecuteWithRetry(cctx, func(ctx context.Context) error {
		calls++
		cancel()
		return &pgconn.PgError{Code: "40001"}
	})
	// The final error keeps both the cause and the cancellation.
	var pgErr *pgconn.PgError
	if calls != 1 || !errors.Is(err, context.Canceled) || !errors.As(err, &pgErr) || pgErr.Code != "40001" {
		t.Fatalf("after cancel: calls=%d err=%v", calls, err)
	}
}

func TestTransactionRollsBackOnErrorAndPanic(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.m.Pool().Exec(ctx, "DROP TABLE IF EXISTS tx_t; CREATE TABLE tx_t (id int)"); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("app says no")
	err := h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO tx_t VALUES (1)"); err != nil {
			return err
		}
		return boom
	}, TxOptions{})
	if !errors.Is(err, boom) {
		t.Fatalf("want app error, got %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("panic not re-raised: %v", r)
			}
		}()
		_ = h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
			_, _ = tx.Exec(ctx, "INSERT INTO tx_t VALUES (2)")
			panic("kaboom")
		}, TxOptions{})
	}()
	if n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM tx_t"); n != 0 {
		t.Fatalf("%d rows survived rollbacks", n)
	}
	err = h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO tx_t VALUES (3)")
		return err
	}, TxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM tx_t"); n != 1 {
		t.Fatalf("commit: %d rows", n)
	}
	if got := h.metricValue(t, "pgsidecar_transactions_total", map[string]string{"outcome": "rollback"}); got != 2 {
		t.Fatalf("rollbacks = %v, want 2", got)
	}
	// The connection went back to the pool clean.
	if st := h.m.Stats(); st.UsedConns != 0 {
		t.Fatalf("%d connections still in use", st.UsedConns)
	}
}

func TestTransactionTimeoutAndMaxWait(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns, cfg.RetryAttempts = 1, 1, 1
	h := newManager(t, cfg)
	ctx := ctxTimeout(t, 30*time.Second)
	err := h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT pg_sleep(10)")
		return err
	}, TxOptions{Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrTxTimeout) {
		t.Fatalf("want ErrTxTimeout, got %v", err)
	}
	// Hold the only connection, then ask for another with a short MaxWait.
	held, err := h.m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = h.m.Transaction(ctx, func(context.Context, pgx.Tx) error { return nil }, TxOptions{MaxWait: 100 * time.Millisecond})
	held.Release()
	if !errors.Is(err, ErrAcquireTimeout) || !strings.Contains(err.Error(), "100ms") {
		t.Fatalf("want ErrAcquireTimeout, got %v", err)
	}
	if got := h.metricValue(t, "pgsidecar_pool_acquire_timeouts_total", nil); got != 1 {
		t.Fatalf("acquire timeouts = %v, want 1", got)
	}
	// The pool still works.
	if err := h.m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	}, TxOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBatchExecuteOrderAndCancel(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	ops := make([]func(context.Context) (int, error), 25)
	var running, peak atomic.Int32
	for i := range ops {
		ops[i] = func(ctx context.Context) (int, error) {
			cur := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if cur <= p || peak.CompareAndSwap(p, cur) {
					break
				}
			}
			var v int
			err := h.m.Pool().QueryRow(ctx, "SELECT $1::int * 2 FROM pg_sleep(0.01)", i).Scan(&v)
			if i == 7 {
				return v, fmt.Errorf("op 7 fails")
			}
			return v, err
		}
	}
	res := BatchExecute(ctx, h.m, ops, 10)
	for i, r := range res {
		if i == 7 {
			if r.Err == nil {
				t.Fatal("op 7 error lost")
			}
			continue
		}
		if r.Err != nil || r.Value != 2*i {
			t.Fatalf("result %d = %+v", i, r)
		}
	}
	if p := peak.Load(); p > 4 {
		t.Fatalf("peak concurrency %d exceeds the pool size 4", p)
	}
	// After cancellation nothing else starts.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var started atomic.Int32
	for i := range ops {
		ops[i] = func(context.Context) (int, error) {
			if started.Add(1) == 2 {
				cancel()
			}
			return i, nil
		}
	}
	res = BatchExecute(cctx, h.m, ops, 2)
	if started.Load() != 2 {
		t.Fatalf("%d ops started after cancel in the first chunk", started.Load())
	}
	for _, r := range res[2:] {
		if !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("unscheduled op: %+v", r)
		}
	}
}

func TestNewReturnsAtOnceWhenDatabaseIsDown(t *testing.T) {
	cfg := testConfig(t)
	cfg.DatabaseURL = "postgres://postgres:pw@127.0.0.1:1/postgres?sslmode=disable"
	cfg.ConnectTimeout = time.Second
	h := newManager(t, cfg)
	if st := h.m.Health().Status; st == StatusHealthy {
		t.Fatalf("status %s with no server", st)
	}
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.log.Count("Database connection failed") >= 2 }) {
		t.Fatalf("no retried connection attempts logged:\n%s", h.log.String())
	}
	logs := h.log.String()
	if !strings.Contains(logs, "next_attempt_in=") || strings.Contains(logs, ":pw@") {
		t.Fatalf("connect failure log missing delay or leaking password:\n%s", logs)
	}
	if h.m.Health().Status != StatusUnhealthy || h.metricValue(t, "pgsidecar_health_check_up", nil) != 0 {
		t.Fatalf("health %+v", h.m.Health())
	}
}

func TestHealthLoopSeesStopAndRecovers(t *testing.T) {
	cluster.RequireControl(t)
	cfg := testConfig(t)
	cfg.HealthCheckInterval = time.Hour // only query errors and recovery checks drive it
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 120*time.Second)
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.StartAgain() })
	// A query sees the lost connection; the pool turns unhealthy without waiting for a tick.
	_, err := h.m.Pool().Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("query succeeded with the server stopped")
	}
	lost := time.Now()
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
		t.Fatalf("still %s after a connection error", h.m.Health().Status)
	}
	t.Logf("unhealthy %s after the query saw the connection error", time.Since(lost))
	if !pgtest.WaitFor(5*time.Second, func() bool { return strings.Contains(h.log.String(), "Database health check") }) {
		t.Fatal("no health check log line")
	}
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
		t.Fatalf("pool did not recover: %+v\n%s", h.m.Health(), h.log.String())
	}
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("query after recovery: %v", err)
	}
	if got := h.metricValue(t, "pgsidecar_reconnects_total", nil); got != 1 {
		t.Fatalf("reconnects = %v, want 1", got)
	}
	if got := h.metricValue(t, "pgsidecar_health_check_failures_total", nil); got < 1 {
		t.Fatalf("health failures = %v", got)
	}
	if !strings.Contains(h.log.String(), "Database reconnected") {
		t.Fatal("no reconnect log line")
	}
}

func TestRetryRidesOutARestart(t *testing.T) {
	cluster.RequireControl(t)
	cfg := testConfig(t)
	cfg.RetryAttempts = 40
	cfg.RetryDelay = 50 * time.Millisecond
	cfg.RetryMaxDelay = 200 * time.Millisecond
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 120*time.Second)
	if err := cluster.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	restarted := make(chan error, 1)
	go func() {
		// Start again once the retry loop has certainly seen failures.
		pgtest.WaitFor(20*time.Second, func() bool { return h.metricValue(t, "pgsidecar_retries_total", nil) >= 2 })
		restarted <- cluster.StartAgain()
	}()
	var v int
	err := h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
		return h.m.Pool().QueryRow(ctx, "SELECT 7").Scan(&v)
	})
	if rerr := <-restarted; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil || v != 7 {
		t.Fatalf("retry across restart: v=%d err=%v", v, err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	mon, err := h.m.NewMonitorPool(MonitorOptions{StatementTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var app string
	if err := mon.QueryRow(ctxTimeout(t, 10*time.Second), "SELECT current_setting('application_name')").Scan(&app); err != nil || app != "pgsidecar-collector" {
		t.Fatalf("monitor pool application_name %q: %v", app, err)
	}
	h.m.Close()
	h.m.Close() // idempotent
	if n := h.metricValue(t, "pgsidecar_query_duration_seconds", nil); n != 0 {
		t.Fatalf("metrics still registered after Close (%v samples)", n)
	}
}

func TestTwoPoolsShareARegistry(t *testing.T) {
	a := newManager(t, testConfig(t))
	cfg := testConfig(t)
	cfg.Name = "second"
	m2, err := New(cfg, WithRegisterer(a.reg), WithLogger(discardLogger()))
	if err != nil {
		t.Fatalf("second pool on the same registry: %v", err)
	}
	defer m2.Close()
	if _, err := m2.Pool().Exec(ctxTimeout(t, 10*time.Second), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if got := a.metricValue(t, "pgsidecar_query_duration_seconds", map[string]string{"pool": "second"}); got != 1 {
		t.Fatalf("second pool's queries = %v", got)
	}
}

// While the database is down the health loop rechecks on a short timer; the errors its own
// checks raise must not make it spin.
func TestHealthLoopDoesNotSpinWhileDown(t *testing.T) {
	cluster.RequireControl(t)
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cluster.StartAgain(); err != nil {
			t.Fatal(err)
		}
	}()
	_, _ = h.m.Pool().Exec(ctxTimeout(t, 5*time.Second), "SELECT 1")
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
		t.Fatal("never unhealthy")
	}
	before := h.metricValue(t, "pgsidecar_health_check_failures_total", nil)
	time.Sleep(time.Second)
	// About four rechecks a second; a spinning loop makes hundreds or thousands.
	if n := h.metricValue(t, "pgsidecar_health_check_failures_total", nil) - before; n > 40 {
		t.Fatalf("%v failed checks in about a second: the health loop spins", n)
	}
	if n := h.log.Count("Database health check"); n > 20 {
		t.Fatalf("%d health check log lines while down", n)
	}
}

// Every SQL text that leaves the pool (the Slow query detected line, the slow query list that
// the API and status page show) is normalised: no constant of any spelling PostgreSQL accepts,
// and no comment, is shown; text that cannot be lexed is not shown at all.
func TestSlowQueryTextIsNormalised(t *testing.T) {
	cfg := testConfig(t)
	cfg.SlowQueryThreshold = time.Nanosecond
	h := newManager(t, cfg)
	ctx := ctxTimeout(t, 30*time.Second)
	stmts := []struct{ sql, secret string }{
		{"DROP ROLE IF EXISTS masked; CREATE ROLE masked PASSWORD 'quoted-secret-1'", "quoted-secret-1"},
		{"ALTER ROLE masked PASSWORD $$dollar-secret-2$$", "dollar-secret-2"},
		{"ALTER ROLE masked PASSWORD $pw$tagged-secret-3$pw$", "tagged-secret-3"},
		{`ALTER ROLE masked PASSWORD E'escaped\'secret-4'`, "secret-4"},
		{"ALTER ROLE masked PASSWORD U&'unicode-secret-5'", "unicode-secret-5"},
		{"ALTER ROLE masked PASSWORD 'split-' \n 'secret-6'", "secret-6"},
		{"SELECT 1 /* comment-secret-7 /* nested */ */", "comment-secret-7"},
		{"SELECT 1 -- line-comment-secret-8\n", "line-comment-secret-8"},
		{"SELECT 'host=db password=conninfo-secret-9'", "conninfo-secret-9"},
		{"SELECT 'postgres://u:url-secret-10@db/x'", "url-secret-10"},
		{"SELECT 9876543210123", "9876543210123"},
		{"SELECT 'unterminated-secret-11", "unterminated-secret-11"},
		{`SELECT 'backslash\' , 'secret-12'`, "secret-12"},
		{"SELECT 1 /* unterminated-comment-secret-13", "unterminated-comment-secret-13"},
	}
	for _, st := range stmts {
		_, _ = h.m.Pool().Exec(ctx, st.sql)
	}
	_, _ = h.m.Pool().Exec(ctx, "DROP ROLE IF EXISTS masked")
	logs := h.log.String()
	list := h.m.SlowQueries()
	for _, st := range stmts {
		if strings.Contains(logs, st.secret) {
			t.Errorf("the log shows %q:\n%s", st.secret, logs)
		}
		for _, q := range list {
			if strings.Contains(q.SQL, st.secret) {
				t.Errorf("the slow query list shows %q: %q", st.secret, q.SQL)
			}
		}
	}
	for _, want := range []string{"ALTER ROLE masked PASSWORD $1", "SELECT $1",
		"(not shown: SELECT statement of 30 bytes that cannot be normalised)"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %q in the log:\n%s", want, logs)
		}
	}
}

// A pool whose every connection is busy is degraded, not unhealthy: the health check must not
// fail (and reset the pool) because it could not get a connection.
func TestSaturatedPoolIsDegradedNotUnhealthy(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 1, 1
	cfg.HealthCheckInterval = time.Second
	cfg.HealthCheckTimeout = 200 * time.Millisecond
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 30*time.Second)
	held, err := h.m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(held.Release) }
	t.Cleanup(release) // Close waits for it, also when the test fails early
	waiter := make(chan error, 1)
	go func() {
		c, err := h.m.Pool().Acquire(ctx)
		if err == nil {
			c.Release()
		}
		waiter <- err
	}()
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.m.Health().Status == StatusDegraded }) {
		t.Fatalf("saturated pool reports %s", h.m.Health().Status)
	}
	// Several health intervals pass with the pool full: never unhealthy, no failures counted.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if st := h.m.Health().Status; st == StatusUnhealthy {
			t.Fatalf("saturated pool turned unhealthy: %+v", h.m.Health())
		}
		time.Sleep(20 * time.Millisecond)
	}
	release()
	if err := <-waiter; err != nil {
		t.Fatal(err)
	}
	if got := h.metricValue(t, "pgsidecar_health_check_failures_total", nil); got != 0 {
		t.Fatalf("health check failures while saturated: %v", got)
	}
}

// A client can raise any five-character SQLSTATE; codes PostgreSQL does not define are folded
// into their class or "other", so pgsidecar_query_errors_total (and the errors-by-SQLSTATE map
// of the API, read from it) stays bounded however many made-up codes it sees.
func TestMadeUpSQLStatesKeepTheErrorSeriesBounded(t *testing.T) {
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 60*time.Second)
	for i := range 500 {
		var code string
		switch i % 3 {
		case 0:
			code = fmt.Sprintf("Q%04d", i) // no such class
		case 1:
			code = fmt.Sprintf("P0%03d", i+100) // an application's own code, class P0
		default:
			code = fmt.Sprintf("XX%03d", i+100) // class XX, code not defined
		}
		_, err := h.m.Pool().Exec(ctx, fmt.Sprintf("DO $$BEGIN RAISE EXCEPTION 'made up' USING ERRCODE = '%s'; END$$", code))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Fatalf("raising %s: %v", code, err)
		}
	}
	// A code PostgreSQL defines stays as it is.
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("no division by zero")
	}
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "pgsidecar_query_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "sqlstate" {
					got[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	want := map[string]float64{"other": 167, "P0xxx": 167, "XXxxx": 166, "22012": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("query error series by sqlstate = %v, want %v", got, want)
	}
	if by := h.m.Stats().Queries.BySQLState; len(by) != len(want) {
		t.Fatalf("errors by SQLSTATE = %v", by)
	}
}

// A client that terminates its own backends again and again does not make the pool unhealthy:
// each error triggers a check, and only a failed check marks the pool down (a readiness probe
// polling Health would otherwise take the instance out of service for one client's doing).
func TestTerminatingOwnBackendsDoesNotFlapHealth(t *testing.T) {
	cfg := testConfig(t)
	cfg.HealthCheckInterval = time.Hour // only the triggered checks run
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 60*time.Second)
	stop := make(chan struct{})
	var kills atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := h.m.Pool().Exec(ctx, "SELECT pg_terminate_backend(pg_backend_pid())"); err != nil {
					kills.Add(1)
				}
			}
		})
	}
	var polls, down int
	var bad Health
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		polls++
		if hl := h.m.Health(); hl.Status == StatusUnhealthy {
			down++
			bad = hl
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if kills.Load() < 20 {
		t.Fatalf("only %d backends terminated", kills.Load())
	}
	if down > 0 {
		t.Fatalf("unhealthy in %d of %d polls while the server was fine (%d backends terminated): %+v",
			down, polls, kills.Load(), bad)
	}
	if got := h.metricValue(t, "pgsidecar_health_check_up", nil); got != 1 {
		t.Fatalf("pgsidecar_health_check_up = %v", got)
	}
	t.Logf("%d polls, %d backends terminated, %d health checks logged", polls, kills.Load(), h.log.Count("Database health check"))
}

// TestConfigAndDatabaseHideThePassword checks the accessors other packages use: the database
// name without reaching into pgx's config, and the configuration with the password masked.
func TestConfigAndDatabaseHideThePassword(t *testing.T) {
	cfg := testConfig(t)
	h := newManager(t, cfg)
	if got := h.m.Database(); got != "postgres" {
		t.Errorf("Database() = %q, want postgres", got)
	}
	if got := h.m.Config().DatabaseURL; strings.Contains(got, pgtest.SuperuserPassword) || !strings.Contains(got, "xxxxx") {
		t.Errorf("Config().DatabaseURL = %q shows the password or no mask", got)
	}
}

// An op that panics inside BatchExecute runs on BatchExecute's goroutine; the panic reaches the
// caller, who can recover it, after the ops still running finished, and no later op starts.
func TestBatchExecuteHandsAPanicToItsCaller(t *testing.T) {
	h := newManager(t, testConfig(t))
	ctx := ctxTimeout(t, 30*time.Second)
	var started, finished atomic.Int32
	ops := make([]func(context.Context) (int, error), 9)
	for i := range ops {
		ops[i] = func(ctx context.Context) (int, error) {
			started.Add(1)
			defer finished.Add(1)
			var v int
			err := h.m.Pool().QueryRow(ctx, "SELECT $1::int FROM pg_sleep(0.05)", i).Scan(&v)
			if i == 1 {
				panic("op 1 is broken")
			}
			return v, err
		}
	}
	got := func() (p any) {
		defer func() { p = recover() }()
		BatchExecute(ctx, h.m, ops, 3)
		return nil
	}()
	if got != "op 1 is broken" {
		t.Fatalf("recovered %v, want op 1's panic", got)
	}
	if s, f := started.Load(), finished.Load(); s != 3 || f != 3 {
		t.Errorf("%d ops started and %d finished, want the first chunk's 3 and no more", s, f)
	}
	// The health loop may hold a connection for a moment: a leaked one stays.
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.m.Pool().Stat().AcquiredConns() == 0 }) {
		t.Errorf("%d connections still acquired 5s after the panic", h.m.Pool().Stat().AcquiredConns())
	}
	var one int
	if err := h.m.Pool().QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the pool after the panic: %v", err)
	}
}
