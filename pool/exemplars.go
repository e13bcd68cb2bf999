package pool

import (
	"context"
	"encoding/hex"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
)

// exemplarInterval is how often one bucket of a duration histogram may take a new exemplar:
// an exemplar costs allocations, and a scrape sees only the latest of each bucket, so that
// statements at full rate pay for a few exemplars a second.
const exemplarInterval = 5 * time.Second

// exemplarLimit rate-limits the exemplars of one histogram: at most one per classic bucket per
// exemplarInterval.
type exemplarLimit struct {
	last [16]atomic.Int64 // by bucket of queryBuckets, +Inf last; unix nanoseconds
}

// allow reports whether an observation of v at now (unix nanoseconds) may carry an exemplar,
// taking the bucket's turn if so.
func (l *exemplarLimit) allow(v float64, now int64) bool {
	b := &l.last[min(sort.SearchFloat64s(queryBuckets, v), len(l.last)-1)]
	last := b.Load()
	return now-last >= int64(exemplarInterval) && b.CompareAndSwap(last, now)
}

// observe observes v in o, with tr's exemplar when there is one and l allows it.
func observe(o prometheus.Observer, l *exemplarLimit, v float64, tr sqlcomment.Trace) {
	if tr.Valid() && l.allow(v, time.Now().UnixNano()) {
		if eo, ok := o.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, exemplarLabels(tr))
			return
		}
	}
	o.Observe(v)
}

// exemplarLabels are the labels of tr's exemplar, as Grafana looks them up.
func exemplarLabels(tr sqlcomment.Trace) prometheus.Labels {
	return prometheus.Labels{"trace_id": hex.EncodeToString(tr.TraceID[:]), "span_id": hex.EncodeToString(tr.SpanID[:])}
}

// spanTrace is the trace context of the OpenTelemetry span in ctx, when it is valid and
// sampled: what a library query's exemplar names.
func spanTrace(ctx context.Context) sqlcomment.Trace {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return sqlcomment.Trace{}
	}
	return sqlcomment.Trace{TraceID: sc.TraceID(), SpanID: sc.SpanID()}
}
