package pool

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// returnsWithin runs fn and fails the test if it has not returned after limit: a liveness check
// (the call does not hang), not a performance assertion.
func returnsWithin[T any](t *testing.T, limit time.Duration, what string, fn func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case v := <-done:
		return v
	case <-time.After(limit):
		t.Fatalf("%s still running after %s", what, limit)
		panic("unreachable")
	}
}

// A cancel that lands while ExecuteWithRetry waits to retry leaves an error that still reaches
// the last attempt's *pgconn.PgError, and the cancellation too.
func TestRetryCanceledDuringBackoffKeepsCause(t *testing.T) {
	cfg := testConfig(t)
	cfg.RetryAttempts = 3
	cfg.RetryDelay, cfg.RetryMaxDelay = time.Hour, time.Hour // the cancel always comes first
	h := newManager(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- h.m.ExecuteWithRetry(ctx, func(context.Context) error {
			calls.Add(1)
			return &pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access"}
		})
	}()
	// The debug line is written just before the backoff wait.
	if !pgtest.WaitFor(30*time.Second, func() bool { return h.log.Count("Retrying database operation") == 1 }) {
		t.Fatal("no retry was scheduled")
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ExecuteWithRetry kept waiting after its context was canceled")
	}
	var pgErr *pgconn.PgError
	var re *RetryError
	if !errors.As(err, &pgErr) || pgErr.Code != "40001" {
		t.Fatalf("errors.As to *pgconn.PgError fails on %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancellation is lost from %v", err)
	}
	if calls.Load() != 1 || !errors.As(err, &re) || re.Attempts != 1 {
		t.Fatalf("calls=%d err=%v", calls.Load(), err)
	}
}

// BatchExecute stops scheduling when ctx is canceled while an op waits for its turn: that op
// never starts.
func TestBatchExecuteStopsWaitingForATurnOnCancel(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 1, 1 // one op at a time
	h := newManager(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstRunning, releaseFirst := make(chan struct{}), make(chan struct{})
	var laterStarted atomic.Int32
	ops := []func(context.Context) (int, error){
		func(context.Context) (int, error) {
			close(firstRunning)
			<-releaseFirst
			return 1, nil
		},
	}
	for range 3 {
		ops = append(ops, func(context.Context) (int, error) {
			laterStarted.Add(1)
			return 0, nil
		})
	}
	results := make(chan []Result[int], 1)
	go func() { results <- BatchExecute(ctx, h.m, ops, len(ops)) }()
	<-firstRunning
	// Let the scheduler reach the wait for the only slot (the outcome must not depend on it).
	time.Sleep(100 * time.Millisecond)
	cancel()
	close(releaseFirst)
	res := returnsWithin(t, 30*time.Second, "BatchExecute", func() []Result[int] { return <-results })
	if n := laterStarted.Load(); n != 0 {
		t.Fatalf("%d ops started after ctx was canceled", n)
	}
	if res[0].Err != nil || res[0].Value != 1 {
		t.Fatalf("running op: %+v", res[0])
	}
	for i, r := range res[1:] {
		if !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("op %d: %+v, want context.Canceled", i+1, r)
		}
	}
}

// With every connection in use, each helper gives up after DB_CONNECTION_TIMEOUT with
// ErrAcquireTimeout naming the setting, even when the caller's ctx has no deadline, and does not
// retry that; the query that follows an acquire is not bounded by it.
func TestHelpersBoundTheAcquireWait(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 1, 1
	cfg.ConnectTimeout = 500 * time.Millisecond
	cfg.RetryAttempts = 3
	h := newManager(t, cfg)
	h.waitHealthy(t)
	bg := context.Background()
	held, err := h.m.Pool().Acquire(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(held.Release) }
	t.Cleanup(release) // Close waits for it, also when the test fails early

	const limit = time.Minute // liveness only
	wantTimeout := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrAcquireTimeout) || !strings.Contains(err.Error(), "no free connection within DB_CONNECTION_TIMEOUT (500ms)") {
			t.Fatalf("%s: want ErrAcquireTimeout naming DB_CONNECTION_TIMEOUT (500ms), got %v", what, err)
		}
	}
	timeouts := 0.0
	countsTimeouts := func(what string, n int) {
		t.Helper()
		timeouts += float64(n)
		if got := h.metricValue(t, "pgsidecar_pool_acquire_timeouts_total", nil); got != timeouts {
			t.Fatalf("%s: acquire_timeouts_total = %v, want %v", what, got, timeouts)
		}
	}

	calls := 0
	err = returnsWithin(t, limit, "ExecuteWithRetry", func() error {
		return h.m.ExecuteWithRetry(bg, func(ctx context.Context) error {
			calls++
			_, err := h.m.Pool().Exec(ctx, "SELECT 1")
			return err
		})
	})
	wantTimeout("ExecuteWithRetry", err)
	var re *RetryError
	if calls != 1 || !errors.As(err, &re) || re.Attempts != 1 || Retryable(err) || IsConnectionError(err) {
		t.Fatalf("an acquire timeout was retried or taken for a connection error: calls=%d err=%v", calls, err)
	}
	if got := h.metricValue(t, "pgsidecar_retries_total", nil); got != 0 {
		t.Fatalf("retries_total = %v", got)
	}
	countsTimeouts("ExecuteWithRetry", 1)

	err = returnsWithin(t, limit, "ExecuteWithRetryValue", func() error {
		_, err := ExecuteWithRetryValue(bg, h.m, func(ctx context.Context) (int, error) {
			var v int
			err := h.m.Pool().QueryRow(ctx, "SELECT 1").Scan(&v)
			return v, err
		})
		return err
	})
	wantTimeout("ExecuteWithRetryValue", err)
	countsTimeouts("ExecuteWithRetryValue", 1)

	res := returnsWithin(t, limit, "BatchExecute", func() []Result[int] {
		return BatchExecute(bg, h.m, []func(context.Context) (int, error){
			func(ctx context.Context) (int, error) {
				_, err := h.m.Pool().Exec(ctx, "SELECT 1")
				return 0, err
			},
		}, 1)
	})
	wantTimeout("BatchExecute", res[0].Err)
	countsTimeouts("BatchExecute", 1)

	err = returnsWithin(t, limit, "ExecPipeline", func() error {
		_, err := h.m.ExecPipeline(bg, []Statement{{SQL: "SELECT 1"}})
		return err
	})
	wantTimeout("ExecPipeline", err)
	countsTimeouts("ExecPipeline", 1)

	err = returnsWithin(t, limit, "Transaction", func() error {
		return h.m.Transaction(bg, func(context.Context, pgx.Tx) error { return nil }, TxOptions{})
	})
	wantTimeout("Transaction", err)
	countsTimeouts("Transaction", 1)

	err = returnsWithin(t, limit, "Warmup", func() error { _, err := h.m.Warmup(bg, 1); return err })
	if err == nil || !strings.Contains(err.Error(), "DB_CONNECTION_TIMEOUT (500ms)") {
		t.Fatalf("Warmup: %v", err)
	}
	countsTimeouts("Warmup", 1)

	// A caller's earlier deadline ends the wait as its own: no acquire timeout.
	short, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	err = h.m.ExecuteWithRetry(short, func(ctx context.Context) error {
		_, err := h.m.Pool().Exec(ctx, "SELECT 1")
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrAcquireTimeout) {
		t.Fatalf("caller's deadline: %v", err)
	}
	release()

	// The bound is on the wait only: queries longer than DB_CONNECTION_TIMEOUT still run.
	const long = "SELECT pg_sleep(1.5)"
	if err := h.m.ExecuteWithRetry(bg, func(ctx context.Context) error {
		_, err := h.m.Pool().Exec(ctx, long)
		return err
	}); err != nil {
		t.Fatalf("ExecuteWithRetry, long query: %v", err)
	}
	if res := BatchExecute(bg, h.m, []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
		_, err := h.m.Pool().Exec(ctx, long)
		return 0, err
	}}, 1); res[0].Err != nil {
		t.Fatalf("BatchExecute, long query: %v", res[0].Err)
	}
	if _, err := h.m.ExecPipeline(bg, []Statement{{SQL: long}, {SQL: "SELECT $1::int", Args: []any{1}}}); err != nil {
		t.Fatalf("ExecPipeline, long query: %v", err)
	}
	if err := h.m.Transaction(bg, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, long)
		return err
	}, TxOptions{}); err != nil {
		t.Fatalf("Transaction, long query: %v", err)
	}
}

// The periodic "Database pool metrics" line carries the pool figures, the acquire figures
// among them.
func TestMetricsLogLine(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConns, cfg.MinConns = 2, 1
	cfg.MetricsLogInterval = time.Second
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 30*time.Second)
	// With the one warm connection held, the next acquire finds no idle connection: an empty
	// acquire, with a wait (opening a connection).
	held, err := h.m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.m.Pool().Exec(ctx, "SELECT 1")
	held.Release()
	if err != nil {
		t.Fatal(err)
	}

	field := regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)
	want := []string{"pool", "total", "idle", "used", "pending", "utilisation", "queries", "errors", "error_rate",
		"avg_latency", "p95_latency", "slow_queries", "acquires", "empty_acquires", "acquire_wait", "acquire_timeouts", "status"}
	var last map[string]string
	ok := pgtest.WaitFor(30*time.Second, func() bool {
		for line := range strings.Lines(h.log.String()) {
			if !strings.Contains(line, `msg="Database pool metrics"`) {
				continue
			}
			last = map[string]string{}
			for _, m := range field.FindAllStringSubmatch(line, -1) {
				last[m[1]] = strings.Trim(m[2], `"`)
			}
			// A line written while the query ran has its acquire but not yet the query: wait for
			// one written after both.
			empty, _ := strconv.Atoi(last["empty_acquires"])
			queries, _ := strconv.Atoi(last["queries"])
			if empty >= 1 && queries >= 1 {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no metrics line counting the empty acquire and the query; last one: %v\nlogs:\n%s", last, h.log.String())
	}
	for _, k := range want {
		if _, ok := last[k]; !ok {
			t.Errorf("field %s missing from the metrics line %v", k, last)
		}
	}
	if last["pool"] != cfg.Name {
		t.Errorf("pool=%q, want %q", last["pool"], cfg.Name)
	}
	if d, err := time.ParseDuration(last["acquire_wait"]); err != nil || d <= 0 {
		t.Errorf("acquire_wait=%q after an acquire that opened a connection", last["acquire_wait"])
	}
	for _, k := range []string{"acquires", "queries", "total"} {
		if n, err := strconv.Atoi(last[k]); err != nil || n < 1 {
			t.Errorf("%s=%q, want at least 1", k, last[k])
		}
	}
	if n, err := strconv.Atoi(last["acquire_timeouts"]); err != nil || n != 0 {
		t.Errorf("acquire_timeouts=%q, want 0", last["acquire_timeouts"])
	}
}

// TestAcquireTimeoutWhileOpening: when the wait runs out while the pool had room (a new
// connection was being opened to a server that does not answer), the error says so rather
// than blaming a busy pool.
func TestAcquireTimeoutWhileOpening(t *testing.T) {
	fp, cfg := viaFaultProxy(t)
	defer fp.Close() // before the Manager's Close (a cleanup): it ends connections in progress
	fp.SetMode(faultproxy.BlackHole)
	cfg.MaxConns, cfg.MinConns = 2, 0
	cfg.ConnectTimeout = 5 * time.Second // longer than MaxWait: the wait runs out first
	h := newManager(t, cfg)
	err := returnsWithin(t, time.Minute, "Transaction", func() error {
		return h.m.Transaction(context.Background(), func(context.Context, pgx.Tx) error { return nil },
			TxOptions{MaxWait: 300 * time.Millisecond})
	})
	if !errors.Is(err, ErrAcquireTimeout) || !strings.Contains(err.Error(), "the database did not answer within TxOptions.MaxWait (300ms)") {
		t.Fatalf("want ErrAcquireTimeout saying the database did not answer, got %v", err)
	}
}
