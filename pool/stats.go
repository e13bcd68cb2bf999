package pool

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
	"github.com/pgsidecar/pgsidecar/internal/sqlstate"
)

// RecordQuery counts one query in the pool's metrics and logs it when slow. The tracer calls it
// for library traffic; other front ends (such as a protocol relay) call it for theirs.
//
// With statement measurement on (Config.StatementsTop), it also counts the query in its
// statement's histogram, found by the statement's fingerprint.
//
// A statement whose text carries a sqlcommenter comment with a sampled traceparent gets an
// exemplar with its trace_id and span_id in both histograms (rate-limited: see exemplarLimit).
func (m *Manager) RecordQuery(op Operation, sql string, d time.Duration, err error) {
	m.record(op, sql, StatementID{}, sqlcomment.Trace{}, d, err)
}

// RecordStatement is RecordQuery for a front end that keeps only the first bytes of a
// statement's text (sql): id, from Identify over the whole text, names the statement.
func (m *Manager) RecordStatement(op Operation, sql string, id StatementID, d time.Duration, err error) {
	m.record(op, sql, id, id.trace, d, err)
}

// recordTraced is RecordQuery for a query that ran in the trace context tr (the zero Trace: none
// known), what the tracer records.
func (m *Manager) recordTraced(op Operation, sql string, tr sqlcomment.Trace, d time.Duration, err error) {
	m.record(op, sql, StatementID{}, tr, d, err)
}

// record measures one query; tr is its trace context, if known (an OpenTelemetry span, or the
// comment of a text of which only a prefix is at hand), else read from the comment in sql.
func (m *Manager) record(op Operation, sql string, id StatementID, tr sqlcomment.Trace, d time.Duration, err error) {
	x := m.metrics
	if !tr.Valid() {
		_, tr = sqlcomment.Split(sql)
	}
	observe(x.queryObserver(op), &x.queryExemplars[op], d.Seconds(), tr)
	if err != nil {
		x.queryErrors.WithLabelValues(op.String(), sqlStateLabel(err)).Inc()
		m.noteError(err)
	}
	var fp fingerprint.Fingerprint
	if x.stmts != nil {
		fp = x.stmts.record(op, sql, id, tr, d, err)
	}
	if d >= m.cfg.SlowQueryThreshold {
		x.slowQueries.Inc()
		if x.stmts == nil {
			fp = fingerprintOf(op, sql)
		}
		text := truncateSQL(m.scrub.Scrub(shownSQL(op, sql, len(sql) < id.n)), 500)
		m.mu.Lock()
		m.slow.add(SlowQuery{Time: time.Now(), Duration: d, Operation: op.String(), SQL: text, Fingerprint: fp.String()})
		m.mu.Unlock()
		m.log.Warn("Slow query detected", "duration", d, "operation", op.String(), "fingerprint", fp.String(), "sql", text)
	}
}

// fingerprintOf is the fingerprint of sql, or of its operation's unnormalisable statements.
func fingerprintOf(op Operation, sql string) fingerprint.Fingerprint {
	fp, _, err := fingerprint.Of(sql)
	if err != nil {
		return fingerprint.Unnormalisable(op.String())
	}
	return fp
}

// sqlStateLabel is the sqlstate label of pgsidecar_query_errors_total for err: SQLState's value,
// with a server code PostgreSQL does not define (a client can raise any five characters) folded
// into its class or "other", so that clients cannot add series without end.
func sqlStateLabel(err error) string {
	switch s := SQLState(err); s {
	case "timeout", "canceled", "client":
		return s
	default:
		return sqlstate.Label(s)
	}
}

// succeededQueries is how many measured statements succeeded, from the query metrics.
func (m *Manager) succeededQueries() uint64 {
	h, _, _ := m.metrics.read()
	return h.Count - h.Errors
}

// Stats is a snapshot of the pool for APIs and logs.
type Stats struct {
	Name              string
	TotalConns        int32
	IdleConns         int32
	UsedConns         int32
	ConstructingConns int32
	MaxConns          int32
	MinConns          int32
	PendingAcquires   int64
	Utilisation       float64 // used / max
	AcquireCount      int64
	EmptyAcquireCount int64
	AcquireWait       time.Duration // cumulative wait of acquires that found no idle connection
	ConnectionsOpened int64
	Queries           QueryStats
	SlowQueries       uint64
	Retries           uint64
	Uptime            time.Duration
	Health            Health
}

// snapshot reads the pool state that metrics need at scrape time.
func (m *Manager) snapshot() poolSnapshot {
	return poolSnapshot{stat: m.pool.Stat(), minConns: m.cfg.MinConns, pending: m.tracer.pending.Load(),
		closed: m.closedConns.Load()}
}

// Stats reads the pool and its metrics once.
func (m *Manager) Stats() Stats {
	s := m.pool.Stat()
	return Stats{
		Name:              m.cfg.Name,
		TotalConns:        s.TotalConns(),
		IdleConns:         s.IdleConns(),
		UsedConns:         s.AcquiredConns(),
		ConstructingConns: s.ConstructingConns(),
		MaxConns:          s.MaxConns(),
		MinConns:          m.cfg.MinConns,
		PendingAcquires:   m.tracer.pending.Load(),
		Utilisation:       utilisation(s),
		AcquireCount:      s.AcquireCount(),
		EmptyAcquireCount: s.EmptyAcquireCount(),
		AcquireWait:       s.EmptyAcquireWaitTime(),
		ConnectionsOpened: s.NewConnsCount(),
		Queries:           m.metrics.queryStats(),
		SlowQueries:       counterValue(m.metrics.slowQueries),
		Retries:           counterValue(m.metrics.retries),
		Uptime:            time.Since(m.started),
		Health:            m.Health(),
	}
}

// SlowQuery is one entry of the recent slow query list.
type SlowQuery struct {
	Time      time.Time
	Duration  time.Duration
	Operation string
	SQL       string // normalised (constants as $n, no comments) and truncated; never argument values
	// Fingerprint names the statement (16 hex digits), as the fingerprint label of the
	// statement metrics does.
	Fingerprint string
}

// SlowQueries returns the most recent slow queries, newest first.
func (m *Manager) SlowQueries() []SlowQuery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slow.list()
}

const slowRingSize = 50

type slowRing struct {
	buf  [slowRingSize]SlowQuery
	next int
	n    int
}

func (r *slowRing) add(q SlowQuery) {
	r.buf[r.next] = q
	r.next = (r.next + 1) % slowRingSize
	r.n = min(r.n+1, slowRingSize)
}

func (r *slowRing) list() []SlowQuery {
	out := make([]SlowQuery, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.buf[(r.next-i+slowRingSize)%slowRingSize])
	}
	return out
}

// shownSQL is the text of sql that may leave the process (logs, the slow query list, the API):
// normalised, every constant a placeholder and every comment gone, so that no password or other
// value in it is shown whatever its spelling. Text the normaliser cannot lex is not shown at all,
// only its operation and length.
func shownSQL(op Operation, sql string, cut bool) string {
	normalize := sqlnorm.Normalize
	if cut {
		normalize = sqlnorm.NormalizePrefix // the first bytes of a longer statement
	}
	text, err := normalize(sql)
	if err != nil {
		return fmt.Sprintf("(not shown: %s statement of %d bytes that cannot be normalised)", strings.ToUpper(op.String()), len(sql))
	}
	return text
}

// truncateSQL collapses whitespace and cuts the text at limit bytes (on a rune boundary).
func truncateSQL(sql string, limit int) string {
	s := strings.Join(strings.Fields(sql), " ")
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && (s[cut]&0xC0) == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}

// logMetricsLoop writes the periodic "Database pool metrics" line, with the pool's
// acquire figures added: acquires, those that found no idle connection (empty_acquires), their
// cumulative wait (acquire_wait) and the acquires that gave up at their deadline.
func (m *Manager) logMetricsLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.MetricsLogInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
			s := m.Stats()
			m.log.Info("Database pool metrics", "total", s.TotalConns, "idle", s.IdleConns, "used", s.UsedConns,
				"pending", s.PendingAcquires, "utilisation", fmt.Sprintf("%.1f%%", s.Utilisation*100),
				"queries", s.Queries.Count, "errors", s.Queries.Errors, "error_rate", fmt.Sprintf("%.2f%%", s.Queries.ErrorRate*100),
				"avg_latency", s.Queries.Average, "p95_latency", s.Queries.P95, "slow_queries", s.SlowQueries,
				"acquires", s.AcquireCount, "empty_acquires", s.EmptyAcquireCount, "acquire_wait", s.AcquireWait,
				"acquire_timeouts", counterValue(m.metrics.acquireTimeout), "status", s.Health.Status)
		}
	}
}
