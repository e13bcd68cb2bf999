package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/backoff"
)

// ExecuteWithRetry runs fn, and runs it again while it fails with a Retryable error, up to
// DB_RETRY_ATTEMPTS tries with exponential backoff and jitter from DB_RETRY_DELAY. It stops at
// once when ctx is done. fn must be safe to run again as a whole (for example one statement, or
// a function that opens its own transaction). The error after the last try is a *RetryError
// carrying the cause (scrubbed of passwords) and the number of attempts; when ctx ended first it
// carries ctx's error too.
//
// fn's pool acquires (through m.Pool() with the ctx fn is given) wait at most
// DB_CONNECTION_TIMEOUT for a free connection, unless ctx ends sooner; the queries themselves
// are bounded by ctx alone. A try whose acquire timed out ends with ErrAcquireTimeout.
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
		actx, limit := withAcquireLimit(ctx, m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT")
		v, err := fn(actx)
		if err == nil {
			return v, nil
		}
		// An acquire timeout is not retried: the try waited DB_CONNECTION_TIMEOUT already, and
		// trying again would make the caller wait that long once per attempt (see Retryable).
		err = limit.explain(ctx, err)
		if attempt >= m.cfg.RetryAttempts || !Retryable(err) {
			return zero, m.retryError(attempt, err)
		}
		if ctx.Err() != nil {
			return zero, &RetryError{Attempts: attempt, Err: m.scrubbed(stoppedRetrying(ctx, err))}
		}
		m.metrics.retries.Inc()
		delay := backoff.Delay(attempt, m.cfg.RetryDelay, m.cfg.RetryMaxDelay)
		m.log.Debug("Retrying database operation", "attempt", attempt, "sqlstate", SQLState(err), "next_attempt_in", delay)
		if sleep(ctx, delay) != nil {
			return zero, &RetryError{Attempts: attempt, Err: m.scrubbed(stoppedRetrying(ctx, err))}
		}
	}
}

// retryError is the final error after attempt tries that ended with err. A nested retried
// operation (a Transaction inside ExecuteWithRetry, say) already made err a *RetryError: one
// attempt of the outer adds nothing to it, and more keep its cause with the outer count, so
// the message reads "failed after N attempts" once, not once per level.
func (m *Manager) retryError(attempt int, err error) error {
	var inner *RetryError
	if errors.As(err, &inner) {
		if attempt == 1 {
			return err
		}
		return &RetryError{Attempts: attempt, Err: inner.Err}
	}
	return &RetryError{Attempts: attempt, Err: m.scrubbed(err)}
}

// stoppedRetrying is the final error when ctx ended while a retry was due: it keeps both the
// last attempt's cause (errors.As to *pgconn.PgError) and ctx's error (errors.Is
// context.Canceled or DeadlineExceeded).
func stoppedRetrying(ctx context.Context, cause error) error {
	cerr := ctx.Err()
	if errors.Is(cause, cerr) {
		return cause
	}
	return fmt.Errorf("%w; retry abandoned: %w", cause, cerr)
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
