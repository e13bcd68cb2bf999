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
