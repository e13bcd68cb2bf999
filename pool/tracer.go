package pool

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
)

// tracer measures queries, batches, copies, connects and acquires through pgx's tracer
// interfaces. Its start hooks wrap the context in one small struct (one allocation) that carries
// what the end hook needs.
type tracer struct {
	metrics     *metrics
	recordQuery func(op Operation, sql string, tr sqlcomment.Trace, d time.Duration, err error) // Manager.recordTraced
	noteError   func(err error)                                                                 // a connection may be lost
	checkNow    func()                                                                          // ask the health loop to check now
	pending     atomic.Int64
	// held counts connections handed to callers and not yet released. pgxpool's own count of
	// acquired connections also has those an acquire is still pinging, which on a database
	// that does not answer (a frozen server) would read as a busy pool.
	held atomic.Int64
}

// busy reports whether callers hold every connection p may open: a wait for a connection is a
// wait for one to come back. When not busy, a wait is for the database (to answer the ping of
// an idle connection or to open a new one).
func (t *tracer) busy(p *pgxpool.Pool) bool { return t.held.Load() >= int64(p.Stat().MaxConns()) }

// TraceRelease implements pgxpool.ReleaseTracer.
func (t *tracer) TraceRelease(*pgxpool.Pool, pgxpool.TraceReleaseData) { t.held.Add(-1) }

type queryTrace struct {
	context.Context
	start time.Time
	sql   string
	op    Operation
	trace sqlcomment.Trace // of the OpenTelemetry span the query ran in
}

type acquireTrace struct {
	context.Context
	start time.Time
}

var (
	_ pgx.QueryTracer       = (*tracer)(nil)
	_ pgx.BatchTracer       = (*tracer)(nil)
	_ pgx.CopyFromTracer    = (*tracer)(nil)
	_ pgx.ConnectTracer     = (*tracer)(nil)
	_ pgxpool.AcquireTracer = (*tracer)(nil)
	_ pgxpool.ReleaseTracer = (*tracer)(nil)
)

// TraceQueryStart implements pgx.QueryTracer.
func (t *tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return &queryTrace{Context: ctx, start: time.Now(), sql: d.SQL, op: ClassifyOperation(d.SQL), trace: spanTrace(ctx)}
}

// TraceQueryEnd implements pgx.QueryTracer.
func (t *tracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if q, ok := ctx.(*queryTrace); ok {
		t.recordQuery(q.op, q.sql, q.trace, time.Since(q.start), d.Err)
	}
}

// TraceBatchStart implements pgx.BatchTracer.
func (t *tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer: each statement of a batch is one query, timed from
// when pgx started reading its result.
func (t *tracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	var dur time.Duration
	if !d.ReadStartTime.IsZero() {
		dur = time.Since(d.ReadStartTime)
	}
	t.recordQuery(ClassifyOperation(d.SQL), d.SQL, spanTrace(ctx), dur, d.Err)
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t *tracer) TraceBatchEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	if d.Err != nil {
		t.noteError(d.Err)
	}
}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (t *tracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return &queryTrace{Context: ctx, start: time.Now(), sql: "COPY", op: OpCopy, trace: spanTrace(ctx)}
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (t *tracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceCopyFromEndData) {
	if q, ok := ctx.(*queryTrace); ok {
		t.recordQuery(q.op, q.sql, q.trace, time.Since(q.start), d.Err)
	}
}

// TraceConnectStart implements pgx.ConnectTracer.
func (t *tracer) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}

// TraceConnectEnd implements pgx.ConnectTracer: a failed connect marks the pool unhealthy.
func (t *tracer) TraceConnectEnd(ctx context.Context, d pgx.TraceConnectEndData) {
	if d.Err != nil && ctx.Err() == nil {
		t.metrics.connectErrors.Inc()
		t.noteError(d.Err)
	}
}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t *tracer) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	t.pending.Add(1)
	return &acquireTrace{Context: ctx, start: time.Now()}
}

// TraceAcquireEnd implements pgxpool.AcquireTracer.
func (t *tracer) TraceAcquireEnd(ctx context.Context, p *pgxpool.Pool, d pgxpool.TraceAcquireEndData) {
	t.pending.Add(-1)
	if d.Err == nil {
		t.held.Add(1)
	}
	a, ok := ctx.(*acquireTrace)
	if !ok {
		return
	}
	t.metrics.acquireWait.Observe(time.Since(a.start).Seconds())
	if d.Err == nil {
		return
	}
	if errors.Is(d.Err, context.DeadlineExceeded) {
		// Only a wait for a busy pool is a saturation signal. A wait that ran out while
		// connections were free for the taking was a wait for the database (down, frozen or
		// slow to accept): the health check, asked to look now, reports that.
		if t.busy(p) {
			t.metrics.acquireTimeout.Inc()
		} else {
			t.checkNow()
		}
		return
	}
	t.noteError(d.Err)
}
