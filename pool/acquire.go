package pool

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/internal/backoff"
)

// The wait for a free connection. pgxpool has no limit of its own on it; the Manager's helpers
// (ExecuteWithRetry and ExecuteWithRetryValue, BatchExecute, ExecPipeline, Transaction, Warmup)
// bound it by DB_CONNECTION_TIMEOUT, as node-postgres' connectionTimeoutMillis does, while the
// queries run on the caller's ctx alone, so a long query is not cut short. The functions these
// helpers run acquire through m.Pool() with the ctx they are given, so the bound travels in that
// ctx as an *acquireLimit and acquireTracer applies it to each acquire made with it.

type acquireLimitKey struct{}

// acquireLimit bounds each pool acquire made with a context that carries it.
type acquireLimit struct {
	wait     time.Duration
	setting  string      // what set wait, for the error: DB_CONNECTION_TIMEOUT or TxOptions.MaxWait
	timedOut atomic.Bool // an acquire under this limit gave up because of it
	// opening: when it gave up, callers did not hold every connection, so the wait was for the
	// database (to open a connection or answer the ping of an idle one), not for a busy
	// connection to come back.
	opening atomic.Bool
}

// withAcquireLimit returns ctx carrying a new limit of wait for each acquire made with it (or
// with a context derived from it, unless that carries a limit of its own).
func withAcquireLimit(ctx context.Context, wait time.Duration, setting string) (context.Context, *acquireLimit) {
	l := &acquireLimit{wait: wait, setting: setting}
	return context.WithValue(ctx, acquireLimitKey{}, l), l
}

// explain turns err, the outcome of work done under l, into the acquire-timeout error when an
// acquire under l gave up on l's bound and err is that acquire's deadline error. When ctx (the
// caller's) is done, err stays as it is: the caller ended the wait.
func (l *acquireLimit) explain(ctx context.Context, err error) error {
	if err == nil || !l.timedOut.Load() || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &AcquireError{Setting: l.setting, Wait: l.wait, Opening: l.opening.Load()}
}

// Acquire borrows a connection from the pool for the caller to Release, waiting at most
// DB_CONNECTION_TIMEOUT for it (less when ctx ends first). While a connection cannot be opened
// (the database is down, or refuses) it tries again with backoff, from 50 ms up to 1 s, until
// then. When DB_CONNECTION_TIMEOUT runs out the error is an *AcquireError (errors.Is
// ErrAcquireTimeout) that tells a busy pool from a database that could not be reached, with the
// last connection error as its Cause. When ctx ends first the error is ctx's.
func (m *Manager) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	wait := m.cfg.ConnectTimeout
	actx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var lastErr error
	for attempt := 1; ; attempt++ {
		c, err := m.pool.Acquire(actx)
		switch {
		case err == nil:
			return c, nil
		case m.isClosed():
			// Closed before or during the wait: no connection will come.
			return nil, ErrClosed
		case ctx.Err() != nil:
			return nil, m.scrubbed(err)
		case actx.Err() != nil:
			return nil, m.scrubbed(m.acquireTimeout(wait, lastErr, err))
		}
		lastErr = err
		_ = sleep(actx, backoff.Delay(attempt, 50*time.Millisecond, time.Second))
	}
}

// acquireTimeout is Acquire's error when DB_CONNECTION_TIMEOUT ran out: err is the last
// acquire's, lastErr the connection error before it, if any.
func (m *Manager) acquireTimeout(wait time.Duration, lastErr, err error) *AcquireError {
	if lastErr == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		lastErr = err
	}
	if h := m.Health(); lastErr == nil && h.Status == StatusUnhealthy {
		// The only attempt was still connecting when time ran out; the health loop knows why.
		lastErr = &healthError{msg: h.LastError, code: h.LastErrorCode}
	}
	return &AcquireError{Setting: "DB_CONNECTION_TIMEOUT", Wait: wait,
		Opening: lastErr != nil || !m.tracer.busy(m.pool), Cause: m.scrubbed(lastErr)}
}

// acquire takes a connection from the pool, waiting at most wait (set by setting) for a free one,
// or less when ctx ends first. Only the wait is bounded: the connection is the caller's to use
// with ctx.
func (m *Manager) acquire(ctx context.Context, wait time.Duration, setting string) (*pgxpool.Conn, error) {
	actx, l := withAcquireLimit(ctx, wait, setting)
	c, err := m.pool.Acquire(actx)
	if err != nil && m.isClosed() {
		return nil, ErrClosed
	}
	return c, l.explain(ctx, err)
}

// acquireTracer is the pool's tracer plus the acquireLimit of the acquiring context: pgxpool
// waits for a connection with the context that TraceAcquireStart returns.
type acquireTracer struct{ *tracer }

// limitedAcquire is the context of an acquire bounded by an acquireLimit.
type limitedAcquire struct {
	context.Context                 // bounded by the limit; what pgxpool waits with
	inner           context.Context // what the tracer's own start hook returned
	limit           *acquireLimit
	cancel          context.CancelFunc
}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t acquireTracer) TraceAcquireStart(ctx context.Context, p *pgxpool.Pool, d pgxpool.TraceAcquireStartData) context.Context {
	ctx = t.tracer.TraceAcquireStart(ctx, p, d)
	l, _ := ctx.Value(acquireLimitKey{}).(*acquireLimit)
	if l == nil {
		return ctx
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= l.wait {
		return ctx // the caller's own deadline comes first
	}
	bounded, cancel := context.WithTimeoutCause(ctx, l.wait, errAcquireLimit)
	return &limitedAcquire{Context: bounded, inner: ctx, limit: l, cancel: cancel}
}

// TraceAcquireEnd implements pgxpool.AcquireTracer. The tracer's own hook counts an acquire that
// ran out of its limit in pgsidecar_pool_acquire_timeouts_total, like any acquire deadline.
func (t acquireTracer) TraceAcquireEnd(ctx context.Context, p *pgxpool.Pool, d pgxpool.TraceAcquireEndData) {
	if a, ok := ctx.(*limitedAcquire); ok {
		if d.Err != nil && a.inner.Err() == nil && errors.Is(context.Cause(a.Context), errAcquireLimit) {
			a.limit.opening.Store(!t.busy(p))
			a.limit.timedOut.Store(true)
		}
		a.cancel()
		ctx = a.inner
	}
	t.tracer.TraceAcquireEnd(ctx, p, d)
}
