package pool

import (
	"context"
	"time"
)

// ExecuteWithRetry runs fn, and runs it again while it fails with a Retryable error, up to
// DB_RETRY_ATTEMPTS tries with exponential backoff and jitter from DB_RETRY_DELAY. It stops at
// once when ctx is done. fn must be safe to run again as a whole (for example one statement, or
// a function that opens its own transaction). The error after the last try is a *RetryError
// carrying the cause and the number of attempts.
func (m *Manager) ExecuteWithRetry(ctx context.Context, fn func(ctx context.Context) error) error {
	_, err := ExecuteWithRetryValue(ctx, m, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, fn(ctx)
	})
	return err
}

// ExecuteWithRetryValue is ExecuteWithRetry for functions that return a value.
func ExecuteWithRetryValue[T any](ctx context.Context, m *Manager, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	for attempt := 1; ; attempt++ {
		v, err := fn(ctx)
		if err == nil {
			return v, nil
		}
		if attempt >= m.cfg.RetryAttempts || !Retryable(err) || ctx.Err() != nil {
			return zero, &RetryError{Attempts: attempt, Err: err}
		}
		m.metrics.retries.Inc()
		delay := Backoff(attempt, m.cfg.RetryDelay, m.cfg.RetryMaxDelay)
		m.log.Debug("Retrying database operation", "attempt", attempt, "sqlstate", SQLState(err), "next_attempt_in", delay)
		if err := sleep(ctx, delay); err != nil {
			return zero, &RetryError{Attempts: attempt, Err: err}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
