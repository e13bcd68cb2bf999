package api

import (
	"math"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// The response types below are the API's contract: field names are camelCase and stable;
// durations are milliseconds (…Ms) or seconds (…Seconds) as float64; ratios are 0..1.
// Figures that are unknown (no collector data yet) are null rather than missing.

// PoolStats describes the pool's connections.
type PoolStats struct {
	Name                    string  `json:"name"`
	TotalConnections        int32   `json:"totalConnections"`
	IdleConnections         int32   `json:"idleConnections"`
	UsedConnections         int32   `json:"usedConnections"`
	ConstructingConnections int32   `json:"constructingConnections"`
	PendingRequests         int64   `json:"pendingRequests"`
	MaxConnections          int32   `json:"maxConnections"`
	MinConnections          int32   `json:"minConnections"`
	Utilization             float64 `json:"utilization"` // used / max
}

// QuerySummary counts the pool's queries since start.
type QuerySummary struct {
	Total            uint64            `json:"total"`
	Errors           uint64            `json:"errors"`
	ErrorRate        float64           `json:"errorRate"`
	AverageLatencyMs float64           `json:"averageLatencyMs"`
	P95LatencyMs     float64           `json:"p95LatencyMs"`
	SlowQueries      uint64            `json:"slowQueries"`
	ByOperation      map[string]uint64 `json:"byOperation"`
}

// MetricsResponse is the body of GET /api/database/metrics.
type MetricsResponse struct {
	Timestamp          time.Time    `json:"timestamp"`
	Status             pool.Status  `json:"status"`
	Pool               PoolStats    `json:"pool"`
	Queries            QuerySummary `json:"queries"`
	Retries            uint64       `json:"retries"`
	Acquires           int64        `json:"acquires"`
	EmptyAcquires      int64        `json:"emptyAcquires"`
	AcquireWaitSeconds float64      `json:"acquireWaitSeconds"`
	ConnectionsOpened  int64        `json:"connectionsOpened"`
	UptimeSeconds      float64      `json:"uptimeSeconds"`
}

// HealthResponse is the body of GET /api/database/health and /readyz.
type HealthResponse struct {
	Timestamp           time.Time   `json:"timestamp"`
	Status              pool.Status `json:"status"`
	LastCheck           *time.Time  `json:"lastCheck"` // null before the first check
	LatencyMs           float64     `json:"latencyMs"`
	ConsecutiveFailures int         `json:"consecutiveFailures"`
	TotalFailures       int         `json:"totalFailures"`
	LastError           *string     `json:"lastError"` // null when healthy; never holds a password
	UptimeSeconds       float64     `json:"uptimeSeconds"`
}

// Latency holds latency figures estimated from the query histograms.
type Latency struct {
	AverageMs float64 `json:"averageMs"`
	P50Ms     float64 `json:"p50Ms"`
	P95Ms     float64 `json:"p95Ms"`
	P99Ms     float64 `json:"p99Ms"`
}

// SlowQuery is one entry of the recent slow query list.
type SlowQuery struct {
	Time       time.Time `json:"time"`
	DurationMs float64   `json:"durationMs"`
	Operation  string    `json:"operation"`
	SQL        string    `json:"sql"` // normalised (every constant a $n placeholder, no comments), truncated
	// Fingerprint names the statement as the fingerprint label of the pgsidecar_statement_*
	// metrics does.
	Fingerprint string `json:"fingerprint"`
}

// Statement is one of the top statements by total time over the statements window, as the
// pool measures them (library and proxied traffic); the same figures as its
// pgsidecar_statement_* series.
type Statement struct {
	Fingerprint   string  `json:"fingerprint"`
	Operation     string  `json:"operation"`
	Text          string  `json:"text"`   // normalised (every constant a $n placeholder), truncated
	Calls         uint64  `json:"calls"`  // since the statement was last admitted to the tracked set
	Errors        uint64  `json:"errors"` // of those calls
	TotalSeconds  float64 `json:"totalSeconds"`
	WindowCalls   uint64  `json:"windowCalls"`   // calls in the statements window
	WindowSeconds float64 `json:"windowSeconds"` // time in the statements window: the ranking
	P50Ms         float64 `json:"p50Ms"`
	P95Ms         float64 `json:"p95Ms"`
	P99Ms         float64 `json:"p99Ms"`
	// Histogram holds the calls per classic bucket (not cumulative), the last one above every
	// bound (leMs null).
	Histogram []Bucket `json:"histogram"`
}

// Bucket is one bucket of a latency histogram: the calls that took more than the bucket
// before's bound and at most LeMs.
type Bucket struct {
	LeMs  *float64 `json:"leMs"` // null: above the last bound
	Count uint64   `json:"count"`
}

// TopStatement is one pg_stat_statements entry, as the collectors export it.
type TopStatement struct {
	QueryID      string  `json:"queryId"`
	Database     string  `json:"database"`
	User         string  `json:"user"`
	Calls        float64 `json:"calls"`
	TotalSeconds float64 `json:"totalSeconds"`
	MeanMs       float64 `json:"meanMs"`
	Rows         float64 `json:"rows"`
}

// Finding is the result of one of the alert checks (thresholds from internal/thresholds).
type Finding struct {
	Check          string  `json:"check"`
	Triggered      bool    `json:"triggered"`
	Severity       string  `json:"severity"` // ok, warning or critical
	Value          float64 `json:"value"`
	Threshold      float64 `json:"threshold"`
	Message        string  `json:"message"`
	Recommendation string  `json:"recommendation"` // empty when not triggered
}

// PerformanceResponse is the body of GET /api/database/performance.
type PerformanceResponse struct {
	Timestamp        time.Time         `json:"timestamp"`
	Status           pool.Status       `json:"status"`
	Queries          QueryCounts       `json:"queries"`
	Latency          Latency           `json:"latency"`
	ErrorsBySQLState map[string]uint64 `json:"errorsBySqlState"`
	SlowQueries      []SlowQuery       `json:"slowQueries"`   // newest first
	TopStatements    []TopStatement    `json:"topStatements"` // null without pg_stat_statements data
	// Statements are the top statements by total time over the statements window, measured by
	// the pool itself, most first; null when statement measurement is off.
	Statements []Statement `json:"statements"`
	Findings   []Finding   `json:"findings"`
}

// QueryCounts is a short query count summary.
type QueryCounts struct {
	Total     uint64  `json:"total"`
	Errors    uint64  `json:"errors"`
	ErrorRate float64 `json:"errorRate"`
	Slow      uint64  `json:"slow"`
}

// RecentQueries summarises only the queries of the last few seconds, for live charts.
type RecentQueries struct {
	WindowSeconds    float64 `json:"windowSeconds"`
	Queries          uint64  `json:"queries"`
	QueriesPerSecond float64 `json:"queriesPerSecond"`
	Errors           uint64  `json:"errors"`
	ErrorRate        float64 `json:"errorRate"`
	Latency
}

// LiveSnapshot is the body of GET /api/database/live-metrics and each event of its stream.
type LiveSnapshot struct {
	Timestamp         time.Time     `json:"timestamp"`
	Status            pool.Status   `json:"status"`
	LastError         *string       `json:"lastError"`
	UptimeSeconds     float64       `json:"uptimeSeconds"`
	Pool              PoolStats     `json:"pool"`
	Queries           QueryCounts   `json:"queries"`
	Latency           Latency       `json:"latency"` // since start
	Recent            RecentQueries `json:"recent"`
	RecentSlowQueries []SlowQuery   `json:"recentSlowQueries"` // at most 5, newest first
	Statements        []Statement   `json:"statements"`        // the top 10 of the performance answer's
}

// WarmupResponse is the body of POST /api/database/warmup.
type WarmupResponse struct {
	Requested        int     `json:"requested"`
	Opened           int64   `json:"opened"`
	TotalConnections int32   `json:"totalConnections"`
	DurationMs       float64 `json:"durationMs"`
	Error            string  `json:"error,omitempty"`
}

// DatabaseStats are one database's pg_stat_database figures and size.
type DatabaseStats struct {
	Name          string   `json:"name"`
	SizeBytes     *float64 `json:"sizeBytes"`
	CacheHitRatio *float64 `json:"cacheHitRatio"` // blks_hit / (blks_hit + blks_read)
	BlocksHit     *float64 `json:"blocksHit"`
	BlocksRead    *float64 `json:"blocksRead"`
	Commits       *float64 `json:"commits"`
	Rollbacks     *float64 `json:"rollbacks"`
	Deadlocks     *float64 `json:"deadlocks"`
	TempBytes     *float64 `json:"tempBytes"`
	TempFiles     *float64 `json:"tempFiles"`
	Backends      *float64 `json:"backends"`
}

// ServerConnections are the server-wide connection figures.
type ServerConnections struct {
	Current        *float64 `json:"current"`
	Max            *float64 `json:"max"`
	Utilization    *float64 `json:"utilization"`
	IdleInTx       *float64 `json:"idleInTransaction"`
	WaitingOnLocks *float64 `json:"waitingOnLocks"`
}

// DetailedMetricsResponse is the body of GET /api/database/detailed-metrics.
type DetailedMetricsResponse struct {
	Timestamp       time.Time          `json:"timestamp"`
	CollectedAt     *time.Time         `json:"collectedAt"` // when the registry was read; null without one
	Up              *bool              `json:"up"`          // pg_up; null when no collector reports it
	Version         *string            `json:"version"`
	ShortVersion    *string            `json:"shortVersion"`
	CurrentDatabase string             `json:"currentDatabase"`
	Database        *DatabaseStats     `json:"database"` // the pool's own database
	Databases       []DatabaseStats    `json:"databases"`
	SessionsByState map[string]float64 `json:"sessionsByState"`
	Connections     ServerConnections  `json:"connections"`
}

func ms(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func secs(d time.Duration) float64 { return round3(d.Seconds()) }

// round3 keeps three decimals so that answers stay short and readable.
func round3(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return math.Round(v*1000) / 1000
}

func ratio(v float64) float64 { return math.Round(v*1e6) / 1e6 }

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func poolStats(s pool.Stats) PoolStats {
	return PoolStats{
		Name:                    s.Name,
		TotalConnections:        s.TotalConns,
		IdleConnections:         s.IdleConns,
		UsedConnections:         s.UsedConns,
		ConstructingConnections: s.ConstructingConns,
		PendingRequests:         s.PendingAcquires,
		MaxConnections:          s.MaxConns,
		MinConnections:          s.MinConns,
		Utilization:             ratio(s.Utilisation),
	}
}

func latency(q pool.QueryStats) Latency {
	return Latency{AverageMs: ms(q.Average), P50Ms: ms(q.P50), P95Ms: ms(q.P95), P99Ms: ms(q.P99)}
}

func (h *Handler) slowQueries(limit int) []SlowQuery {
	list := h.mgr.SlowQueries()
	if limit > 0 && len(list) > limit {
		list = list[:limit]
	}
	out := make([]SlowQuery, 0, len(list))
	for _, q := range list {
		sql := q.SQL // normalised and scrubbed by the pool when it was recorded
		out = append(out, SlowQuery{Time: q.Time.UTC(), DurationMs: ms(q.Duration), Operation: q.Operation, SQL: sql,
			Fingerprint: q.Fingerprint})
	}
	return out
}

// statements returns the pool's top statements, at most limit (0: all); nil when statement
// measurement is off.
func (h *Handler) statements(limit int) []Statement {
	list := h.mgr.Statements()
	if list == nil {
		return nil
	}
	if limit > 0 && len(list) > limit {
		list = list[:limit]
	}
	out := make([]Statement, 0, len(list))
	for _, s := range list {
		st := Statement{Fingerprint: s.Fingerprint, Operation: s.Operation, Text: s.Text, Calls: s.Calls,
			Errors: s.Errors, TotalSeconds: round3(s.TotalSeconds), WindowCalls: s.WindowCalls,
			WindowSeconds: round3(s.WindowSeconds), P50Ms: ms(s.P50), P95Ms: ms(s.P95), P99Ms: ms(s.P99)}
		var prev uint64
		for i, le := range s.Histogram.Bounds() {
			bound := round3(le * 1000)
			st.Histogram = append(st.Histogram, Bucket{LeMs: &bound, Count: s.Histogram.Cumulative[i] - prev})
			prev = s.Histogram.Cumulative[i]
		}
		st.Histogram = append(st.Histogram, Bucket{Count: s.Histogram.Count - min(prev, s.Histogram.Count)})
		out = append(out, st)
	}
	return out
}
