package pool

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

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
