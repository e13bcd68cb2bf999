package pool

import (
	"math"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// queryBuckets are the classic buckets of pgsidecar_query_duration_seconds (QueryHistogram.Bounds
// hands out a copy). They have
// boundaries at the alert thresholds (0.5 s average latency, 1 s slow query).
var queryBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// metrics holds every metric of one pool. Events are counted into vecs created once; pool state
// is read from pgxpool at scrape time and sent as const metrics.
type metrics struct {
	snapshot func() poolSnapshot
	stmts    *statements // nil when statement measurement is off

	queryDuration *prometheus.HistogramVec
	// queryObservers caches the histogram of each operation once it has a series: series are
	// created on an operation's first query, not up front for operations never seen.
	queryObservers [numOperations]atomic.Pointer[prometheus.Observer]
	queryExemplars [numOperations]exemplarLimit
	queryErrors    *prometheus.CounterVec
	slowQueries    prometheus.Counter
	retries        prometheus.Counter
	transactions   *prometheus.CounterVec
	acquireWait    prometheus.Histogram
	acquireTimeout prometheus.Counter
	connectErrors  prometheus.Counter
	healthUp       prometheus.Gauge
	healthDuration prometheus.Gauge
	healthFailures prometheus.Counter
	reconnects     prometheus.Counter

	closedOther monotonic

	connections    *prometheus.Desc
	maxConns       *prometheus.Desc
	minConns       *prometheus.Desc
	pending        *prometheus.Desc
	acquires       *prometheus.Desc
	opened         *prometheus.Desc
	closed         *prometheus.Desc
	emptyAcquires  *prometheus.Desc
	acquireCancels *prometheus.Desc
}

// poolSnapshot is the pool state that metrics read at scrape time.
type poolSnapshot struct {
	stat     *pgxpool.Stat
	minConns int32
	pending  int64 // acquires waiting now
	closed   int64 // connections closed, for any reason
}

// newMetrics creates the metrics of the pool called name; snapshot reads its state at scrape
// time.
func newMetrics(name string, snapshot func() poolSnapshot) *metrics {
	labels := prometheus.Labels{"pool": name}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels})
	}
	desc := func(name, help string, varLabels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, varLabels, labels)
	}
	x := &metrics{
		snapshot: snapshot,
		queryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "pgsidecar_query_duration_seconds",
			Help:                            "Duration of queries, from send to last row read, by operation.",
			ConstLabels:                     labels,
			Buckets:                         queryBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"operation"}),
		queryErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_query_errors_total",
			Help:        "Queries that ended in an error, by operation and SQLSTATE (08006 for a lost connection, timeout/canceled for client deadlines, client for client-side errors).",
			ConstLabels: labels,
		}, []string{"operation", "sqlstate"}),
		slowQueries: counter("pgsidecar_slow_queries_total", "Queries that took at least the slow query threshold."),
		retries:     counter("pgsidecar_retries_total", "Retries made by ExecuteWithRetry and Transaction after a retryable error."),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_transactions_total",
			Help:        "Transactions run by Transaction, by outcome (commit, rollback, error).",
			ConstLabels: labels,
		}, []string{"outcome"}),
		acquireWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "pgsidecar_pool_acquire_wait_seconds",
			Help:        "Time spent waiting for a pool connection, including opening one.",
			ConstLabels: labels,
			Buckets:     []float64{0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10},
		}),
		acquireTimeout: counter("pgsidecar_pool_acquire_timeouts_total", "Acquires that gave up because their deadline passed while callers held every pool connection (a wait for a database that does not answer is not counted)."),
		connectErrors:  counter("pgsidecar_pool_connect_errors_total", "Failed attempts to open a connection to PostgreSQL."),
		healthUp:       gauge("pgsidecar_health_check_up", "1 if the last health check succeeded, else 0."),
		healthDuration: gauge("pgsidecar_health_check_duration_seconds", "Duration of the last health check."),
		healthFailures: counter("pgsidecar_health_check_failures_total", "Health checks that failed."),
		reconnects:     counter("pgsidecar_reconnects_total", "Times the pool came back healthy after losing the database."),

		connections:    desc("pgsidecar_pool_connections", "Connections in the pool by state.", "state"),
		maxConns:       desc("pgsidecar_pool_max_connections", "Maximum connections of the pool (DB_MAX_CONNECTIONS)."),
		minConns:       desc("pgsidecar_pool_min_connections", "Minimum connections of the pool (DB_MIN_CONNECTIONS)."),
		pending:        desc("pgsidecar_pool_pending_acquires", "Callers waiting for a pool connection right now."),
		acquires:       desc("pgsidecar_pool_acquires_total", "Connections handed out by the pool."),
		opened:         desc("pgsidecar_pool_connections_opened_total", "Connections the pool started to open."),
		closed:         desc("pgsidecar_pool_connections_closed_total", "Connections the pool closed, by reason (max_lifetime, max_idle, other).", "reason"),
		emptyAcquires:  desc("pgsidecar_pool_empty_acquires_total", "Acquires that found no idle connection and had to wait or open one."),
		acquireCancels: desc("pgsidecar_pool_canceled_acquires_total", "Acquires canceled by their caller's context."),
	}
	for _, o := range []string{"commit", "rollback", "error"} {
		x.transactions.WithLabelValues(o)
	}
	return x
}

// queryObserver returns the duration histogram of op, creating its series on first use.
func (x *metrics) queryObserver(op Operation) prometheus.Observer {
	if o := x.queryObservers[op].Load(); o != nil {
		return *o
	}
	// Concurrent first uses get the same series from the vec.
	o := x.queryDuration.WithLabelValues(op.String())
	x.queryObservers[op].Store(&o)
	return o
}

// Describe implements prometheus.Collector.
func (x *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range x.eventCollectors() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{x.connections, x.maxConns, x.minConns, x.pending, x.acquires,
		x.opened, x.closed, x.emptyAcquires, x.acquireCancels} {
		ch <- d
	}
	if x.stmts != nil {
		x.stmts.describe(ch)
	}
}

// Collect implements prometheus.Collector: event metrics as counted, pool state from one
// pgxpool.Stat snapshot.
func (x *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range x.eventCollectors() {
		c.Collect(ch)
	}
	if x.stmts != nil {
		x.stmts.collect(ch)
	}
	snap := x.snapshot()
	s := snap.stat
	g := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	c := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}
	g(x.connections, float64(s.IdleConns()), "idle")
	g(x.connections, float64(s.AcquiredConns()), "used")
	g(x.connections, float64(s.ConstructingConns()), "constructing")
	g(x.maxConns, float64(s.MaxConns()))
	g(x.minConns, float64(snap.minConns))
	g(x.pending, float64(snap.pending))
	c(x.acquires, float64(s.AcquireCount()))
	c(x.opened, float64(s.NewConnsCount()))
	lifetime, idle := s.MaxLifetimeDestroyCount(), s.MaxIdleDestroyCount()
	// BeforeClose runs after pgxpool counts a lifetime or idle close, so the difference can dip
	// for a moment; a counter must not go down.
	other := x.closedOther.max(snap.closed - lifetime - idle)
	c(x.closed, float64(lifetime), "max_lifetime")
	c(x.closed, float64(idle), "max_idle")
	c(x.closed, float64(other), "other")
	c(x.emptyAcquires, float64(s.EmptyAcquireCount()))
	c(x.acquireCancels, float64(s.CanceledAcquireCount()))
}

func (x *metrics) eventCollectors() []prometheus.Collector {
	return []prometheus.Collector{x.queryDuration, x.queryErrors, x.slowQueries, x.retries, x.transactions,
		x.acquireWait, x.acquireTimeout, x.connectErrors, x.healthUp, x.healthDuration, x.healthFailures, x.reconnects}
}

// QueryStats summarises the query histograms and error counters of a pool.
type QueryStats struct {
	Count       uint64            // queries measured
	Errors      uint64            // queries that failed
	SumSeconds  float64           // total query time
	Average     time.Duration     // SumSeconds / Count
	P50         time.Duration     // estimated from the classic buckets
	P95         time.Duration     // estimated from the classic buckets
	P99         time.Duration     // estimated from the classic buckets
	ErrorRate   float64           // Errors / Count, 0 when there were no queries
	ByOperation map[string]uint64 // query count by operation, only non-zero ones
	BySQLState  map[string]uint64 // error count by SQLSTATE
}

// queryStats summarises the pool's own histograms: no extra counting on the query path.
func (x *metrics) queryStats() QueryStats {
	h, byOp, byState := x.read()
	qs := QueryStats{Count: h.Count, Errors: h.Errors, SumSeconds: h.SumSeconds, ByOperation: byOp, BySQLState: byState}
	if qs.Count > 0 {
		qs.Average = seconds(qs.SumSeconds / float64(qs.Count))
		qs.ErrorRate = float64(qs.Errors) / float64(qs.Count)
		qs.P50 = seconds(bucketQuantile(0.50, h.Cumulative, qs.Count))
		qs.P95 = seconds(bucketQuantile(0.95, h.Cumulative, qs.Count))
		qs.P99 = seconds(bucketQuantile(0.99, h.Cumulative, qs.Count))
	}
	return qs
}

// QueryHistogram is the query duration histogram summed over operations. Two readings taken a
// while apart give the latency of just the queries in between, which is what live views show.
type QueryHistogram struct {
	Cumulative []uint64 // cumulative counts per bound of Bounds
	Count      uint64
	SumSeconds float64
	Errors     uint64
}

// Bounds returns the upper bounds, in seconds, of the buckets Cumulative counts over; they are
// the same for every QueryHistogram.
func (QueryHistogram) Bounds() []float64 { return slices.Clone(queryBuckets) }

// Sub returns the queries between base, an earlier reading, and h. Counts that went down (a
// reading from another pool) give 0.
func (h QueryHistogram) Sub(base QueryHistogram) QueryHistogram {
	d := QueryHistogram{Cumulative: make([]uint64, len(h.Cumulative)), Count: h.Count - min(base.Count, h.Count),
		SumSeconds: h.SumSeconds - base.SumSeconds, Errors: h.Errors - min(base.Errors, h.Errors)}
	for i := range d.Cumulative {
		if i < len(base.Cumulative) && h.Cumulative[i] >= base.Cumulative[i] {
			d.Cumulative[i] = h.Cumulative[i] - base.Cumulative[i]
		}
	}
	return d
}

// Quantile estimates quantile q (0..1) of the query durations, in seconds, the way PromQL's
// histogram_quantile does. It returns 0 when there were no queries.
func (h QueryHistogram) Quantile(q float64) float64 {
	if h.Count == 0 || len(h.Cumulative) != len(queryBuckets) {
		return 0
	}
	return bucketQuantile(q, h.Cumulative, h.Count)
}

// read reads the query histograms and error counters once: the histogram summed over
// operations, the count by operation (non-zero only) and the errors by SQLSTATE.
func (x *metrics) read() (h QueryHistogram, byOp, bySQLState map[string]uint64) {
	h.Cumulative = make([]uint64, len(queryBuckets))
	byOp, bySQLState = map[string]uint64{}, map[string]uint64{}
	for op := range numOperations {
		o := x.queryObservers[op].Load()
		if o == nil {
			continue // no query of this operation yet
		}
		var pb dto.Metric
		if err := (*o).(prometheus.Metric).Write(&pb); err != nil {
			continue
		}
		hist := pb.GetHistogram()
		if hist.GetSampleCount() == 0 {
			continue
		}
		h.Count += hist.GetSampleCount()
		h.SumSeconds += hist.GetSampleSum()
		byOp[op.String()] = hist.GetSampleCount()
		for i, b := range hist.GetBucket() {
			if i < len(h.Cumulative) {
				h.Cumulative[i] += b.GetCumulativeCount()
			}
		}
	}
	ch := make(chan prometheus.Metric, 64)
	go func() { x.queryErrors.Collect(ch); close(ch) }()
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		v := uint64(pb.GetCounter().GetValue())
		h.Errors += v
		for _, l := range pb.GetLabel() {
			if l.GetName() == "sqlstate" {
				bySQLState[l.GetValue()] += v
			}
		}
	}
	return h, byOp, bySQLState
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// bucketQuantile interpolates linearly inside the bucket holding the quantile, as PromQL's
// histogram_quantile does; past the last bound it returns that bound.
func bucketQuantile(q float64, cumulative []uint64, total uint64) float64 {
	rank := q * float64(total)
	i := sort.Search(len(cumulative), func(i int) bool { return float64(cumulative[i]) >= rank })
	if i == len(cumulative) {
		return queryBuckets[len(queryBuckets)-1]
	}
	lower, prev := 0.0, uint64(0)
	if i > 0 {
		lower, prev = queryBuckets[i-1], cumulative[i-1]
	}
	inBucket := cumulative[i] - prev
	if inBucket == 0 {
		return queryBuckets[i]
	}
	v := lower + (queryBuckets[i]-lower)*(rank-float64(prev))/float64(inBucket)
	return math.Min(v, queryBuckets[i])
}

// monotonic remembers the largest value it was given.
type monotonic struct{ v atomic.Int64 }

func (m *monotonic) max(v int64) int64 {
	for {
		cur := m.v.Load()
		if v <= cur {
			return cur
		}
		if m.v.CompareAndSwap(cur, v) {
			return v
		}
	}
}

// utilisation is used / max connections.
func utilisation(s *pgxpool.Stat) float64 {
	if s.MaxConns() == 0 {
		return 0
	}
	return float64(s.AcquiredConns()) / float64(s.MaxConns())
}

func counterValue(c prometheus.Counter) uint64 {
	var pb dto.Metric
	if c.Write(&pb) != nil {
		return 0
	}
	return uint64(pb.GetCounter().GetValue())
}
