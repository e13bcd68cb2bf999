package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/client_golang/prometheus"
)

// customCollectorName is the collector label of custom queries in pg_scrape_collector_*.
const customCollectorName = "queries"

// customCollector runs the queries of a queries file. The set of queries is swapped whole on
// reload, so a scrape sees either the old or the new set.
type customCollector struct {
	path  string
	log   *slog.Logger
	scrub func(error) string // renders errors without passwords

	queries atomic.Pointer[[]*customQuery]

	reloadOK prometheus.Gauge
	reloadTS prometheus.Gauge
	errs     *prometheus.CounterVec

	mu      sync.Mutex
	cache   map[*customQuery]cachedResult
	failing map[string]string // query name → last error logged
}

type cachedResult struct {
	until   time.Time
	samples []sample
}

type sample struct {
	desc   *prometheus.Desc
	vtype  prometheus.ValueType
	value  float64
	labels []string
	hist   *histogramValue // a HISTOGRAM column's sample instead of value
}

type histogramValue struct {
	count   uint64
	sum     float64
	buckets map[float64]uint64
}

func newCustomCollector(path string, log *slog.Logger) *customCollector {
	return &customCollector{
		path: path,
		log:  log,
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgsidecar_queries_last_reload_successful",
			Help: "1 if the last load of the custom queries file succeeded, 0 if it failed and the previous queries stay in use."}),
		reloadTS: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgsidecar_queries_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful load of the custom queries file."}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgsidecar_custom_query_errors_total",
			Help: "Custom query runs that failed or returned a value that is not a number, by query."}, []string{"query"}),
		cache:   map[*customQuery]cachedResult{},
		failing: map[string]string{},
	}
}

// reload loads the queries file; on error the current queries stay. The first load's error
// is the caller's to report (it stops the program).
func (c *customCollector) reload() error {
	qs, warnings, err := loadQueries(c.path, builtinName)
	if err != nil {
		c.reloadOK.Set(0)
		if c.queries.Load() != nil {
			c.log.Error("Custom queries not reloaded, keeping the previous ones", "file", c.path, "error", err.Error())
		}
		return err
	}
	c.queries.Store(&qs)
	c.mu.Lock()
	c.cache = map[*customQuery]cachedResult{}
	c.failing = map[string]string{}
	c.mu.Unlock()
	for _, q := range qs {
		c.errs.WithLabelValues(q.name)
	}
	for _, w := range warnings {
		c.log.Warn("Custom query metric not loaded", "reason", w)
	}
	c.reloadOK.Set(1)
	c.reloadTS.SetToCurrentTime()
	c.log.Info("Custom queries loaded", "file", c.path, "queries", len(qs))
	return nil
}

// hasEverySidecar reports whether a query of the current set runs on every sidecar.
func (c *customCollector) hasEverySidecar() bool {
	qs := c.queries.Load()
	if qs == nil {
		return false
	}
	for _, q := range *qs {
		if q.everySidecar {
			return true
		}
	}
	return false
}

// collectOwn sends the reload and error metrics, which do not need the database.
func (c *customCollector) collectOwn(ch chan<- prometheus.Metric) {
	c.reloadOK.Collect(ch)
	c.reloadTS.Collect(ch)
	c.errs.Collect(ch)
}

func (c *customCollector) Update(ctx context.Context, s *Scrape) error {
	qs := c.queries.Load()
	if qs == nil {
		return nil
	}
	var due []*customQuery
	now := time.Now()
	c.mu.Lock()
	for _, q := range *qs {
		if !q.appliesTo(s.Version) || (s.everySidecarOnly && !q.everySidecar) {
			continue
		}
		if cached, ok := c.cache[q]; ok && now.Before(cached.until) {
			emit(s, cached.samples)
			continue
		}
		due = append(due, q)
	}
	c.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	pc, ok := s.Conn.(interface{ Conn() *pgx.Conn })
	if !ok {
		return errors.New("custom queries need a pooled pgx connection")
	}
	results := runPipeline(ctx, pc.Conn(), due)
	var failed []string
	var lastErr error
	for i, q := range due {
		r := results[i]
		emit(s, r.samples)
		c.noteResult(q, r.err)
		if r.err != nil {
			failed = append(failed, q.name)
			lastErr = r.err
			continue
		}
		if q.cacheSeconds > 0 {
			c.mu.Lock()
			c.cache[q] = cachedResult{until: now.Add(time.Duration(q.cacheSeconds) * time.Second), samples: r.samples}
			c.mu.Unlock()
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d custom queries failed (%v), last error: %w", len(failed), failed, lastErr)
	}
	return nil
}

func emit(s *Scrape, samples []sample) {
	for _, x := range samples {
		if x.hist != nil {
			s.sink.addHistogram(x.desc, x.hist, x.labels)
			continue
		}
		s.sink.add(x.desc, x.vtype, x.value, x.labels)
	}
}

// noteResult counts a failure and logs when a query starts failing or fails differently, not
// on every scrape.
func (c *customCollector) noteResult(q *customQuery, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if _, was := c.failing[q.name]; was {
			delete(c.failing, q.name)
			c.log.Info("Custom query works again", "query", q.name)
		}
		return
	}
	c.errs.WithLabelValues(q.name).Inc()
	msg := err.Error()
	if c.scrub != nil {
		msg = c.scrub(err)
	}
	if c.failing[q.name] != msg {
		c.failing[q.name] = msg
		c.log.Warn("Custom query failed", "query", q.name, "error", msg)
	}
}

type queryResult struct {
	samples []sample
	err     error
}

// runPipeline sends the queries in one round trip, each followed by a Sync so that each runs
// in its own implicit transaction and one failing query does not abort the others. A query
// with a timeout is preceded by a transaction-local statement_timeout: the server cancels it
// cleanly and the session stays usable. Results are read in order, so when the deadline cuts
// the pipeline the queries answered before it keep their results.
func runPipeline(ctx context.Context, conn *pgx.Conn, qs []*customQuery) []queryResult {
	results := make([]queryResult, len(qs))
	var longest time.Duration
	for _, q := range qs {
		longest = max(longest, q.timeout)
	}
	if longest > 0 {
		// Backs up the server-side timeouts, which fire first.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sumTimeouts(qs)+time.Second)
		defer cancel()
	}
	p := conn.PgConn().StartPipeline(ctx)
	for _, q := range qs {
		if q.timeout > 0 {
			p.SendQueryParams("SELECT set_config('statement_timeout', $1, true)",
				[][]byte{[]byte(strconv.FormatInt(q.timeout.Milliseconds(), 10))}, nil, nil, nil)
		}
		p.SendQueryParams(q.sql, nil, nil, nil, nil)
		p.SendPipelineSync()
	}
	fail := func(from int, err error) {
		for i := from; i < len(qs); i++ {
			if results[i].err == nil {
				results[i].err = err
			}
		}
	}
	if err := p.Flush(); err != nil {
		_ = p.Close()
		fail(0, err)
		return results
	}
	tm := conn.TypeMap()
	for i, q := range qs {
		readers := 0
		want := 1
		if q.timeout > 0 {
			want = 2 // the set_config result comes first
		}
	segment:
		for {
			res, err := p.GetResults()
			var pgErr *pgconn.PgError
			switch {
			case errors.As(err, &pgErr):
				results[i].err = err
				continue
			case err != nil:
				_ = p.Close()
				fail(i, err)
				return results
			}
			switch r := res.(type) {
			case *pgconn.ResultReader:
				readers++
				if readers == want {
					results[i].samples, err = readResult(r, q, tm)
				} else {
					_, err = r.Close()
				}
				if err != nil && results[i].err == nil {
					results[i].err = err
				}
			case *pgconn.PipelineSync:
				break segment
			case nil:
				_ = p.Close()
				fail(i, errors.New("pipeline ended before all results"))
				return results
			}
		}
	}
	if err := p.Close(); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			fail(0, err)
		}
	}
	return results
}

func sumTimeouts(qs []*customQuery) time.Duration {
	var d time.Duration
	for _, q := range qs {
		d += q.timeout
	}
	return d
}

// readResult turns one query's rows into samples. It returns the samples it could read even
// when some values were not numbers, with an error naming the column.
func readResult(rr *pgconn.ResultReader, q *customQuery, tm *pgtype.Map) ([]sample, error) {
	fields := rr.FieldDescriptions()
	index := make(map[string]int, len(fields))
	for i, f := range fields {
		index[f.Name] = i
	}
	missing := func(kind, col string) ([]sample, error) {
		if _, err := rr.Close(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s column %s is not in the query result", kind, col)
	}
	labelIdx := make([]int, len(q.labels))
	for i, l := range q.labels {
		j, ok := index[l]
		if !ok {
			return missing("label", l)
		}
		labelIdx[i] = j
	}
	type metricCol struct {
		col   *customColumn
		idx   int
		vtype prometheus.ValueType
		parts [3]int // a histogram's _bucket, _sum and _count columns
	}
	var mcols []metricCol
	for i := range q.columns {
		col := &q.columns[i]
		if col.desc == nil {
			continue
		}
		j, ok := index[col.name]
		if !ok {
			return missing("metric", col.name)
		}
		m := metricCol{col: col, idx: j, vtype: prometheus.GaugeValue}
		if col.usage == usageCounter {
			m.vtype = prometheus.CounterValue
		}
		if col.usage == usageHistogram {
			for k, part := range []string{"_bucket", "_sum", "_count"} {
				if m.parts[k], ok = index[col.name+part]; !ok {
					return missing("histogram", col.name+part)
				}
			}
		}
		mcols = append(mcols, m)
	}
	// Columns the file does not list become untyped metrics, as in postgres_exporter.
	for j, f := range fields {
		if q.known[f.Name] || !metricNameRE.MatchString(q.name+"_"+f.Name) {
			continue
		}
		if d := q.unknownDesc(f.Name); d != nil {
			mcols = append(mcols, metricCol{col: &customColumn{name: f.Name, desc: d}, idx: j, vtype: prometheus.UntypedValue})
		}
	}
	var out []sample
	var convErr error
	seen := map[string]struct{}{} // label sets of the rows read
	duplicates := 0
	for rr.NextRow() {
		raw := rr.Values()
		labels := make([]string, len(labelIdx))
		for i, j := range labelIdx {
			labels[i] = labelValue(decode(tm, fields[j], raw[j]))
		}
		// A label set already read (NULL reads as '', so NULL beside '' is one too) would make
		// duplicate series: the first row's stay, and the query counts as failed, as
		// postgres_exporter fails it, rather than losing rows silently.
		key := strings.Join(labels, "\xff")
		if _, dup := seen[key]; dup {
			duplicates++
			continue
		}
		seen[key] = struct{}{}
		for _, m := range mcols {
			if raw[m.idx] == nil {
				continue // NULL is no sample, not zero
			}
			v := decode(tm, fields[m.idx], raw[m.idx])
			x := sample{desc: m.col.desc, vtype: m.vtype, labels: labels}
			var err error
			switch m.col.usage {
			case usageHistogram:
				x.hist, err = histogramSample(v, func(k int) any { return decode(tm, fields[m.parts[k]], raw[m.parts[k]]) })
			case usageMapped:
				// Numbers pass as they are, as in postgres_exporter; text goes through the
				// mapping, and text without one gives no sample there either.
				var ok bool
				if x.value, ok = toFloat(v); !ok {
					if x.value, ok = m.col.mapping[labelValue(v)]; !ok {
						continue
					}
				}
			case usageDuration:
				// Numbers (milliseconds, -1 for off) pass as they are, as in postgres_exporter;
				// text such as 1.5s is converted to milliseconds.
				var ok bool
				if x.value, ok = toFloat(v); !ok {
					d, perr := time.ParseDuration(labelValue(v))
					if perr != nil {
						err = fmt.Errorf("column %s: %q is not a number of milliseconds or a duration such as 1.5s", m.col.name, labelValue(v))
					}
					x.value = float64(d) / float64(time.Millisecond)
				}
			case "": // a column the file does not list: numbers only, anything else is skipped
				var ok bool
				if x.value, ok = toFloat(v); !ok {
					continue
				}
			default:
				var ok bool
				if x.value, ok = toFloat(v); !ok {
					err = fmt.Errorf("column %s: a value of type %s cannot be a metric value", m.col.name, typeName(fields[m.idx].DataTypeOID))
				}
			}
			if err != nil {
				convErr = err
				continue
			}
			out = append(out, x)
		}
		if len(out) > q.maxSeries {
			if _, err := rr.Close(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("more than %d series (max_series); none exported: aggregate the query, drop a label or raise max_series", q.maxSeries)
		}
	}
	if _, err := rr.Close(); err != nil {
		return out, err
	}
	if duplicates > 0 && convErr == nil {
		// No count in the message: the failure is logged when it starts or changes, once
		// per reload while it goes on.
		convErr = fmt.Errorf("rows repeat a set of label values (%v), only the first of each exported: make the labels unique (NULL and '' read the same)", q.labels)
	}
	return out, convErr
}

// histogramSample reads a HISTOGRAM column: bounds holds the upper bounds; part(0) the
// cumulative counts per bound, part(1) the sum and part(2) the count. A histogram Prometheus
// would misread is an error and no sample: bounds must be finite numbers in increasing order
// (a last bound of +Inf is allowed; its count must then be _count), with as many counts,
// cumulative (never decreasing) whole numbers no larger than _count.
func histogramSample(bounds any, part func(int) any) (*histogramValue, error) {
	les, ok1 := bounds.([]any)
	counts, ok2 := part(0).([]any)
	if !ok1 || !ok2 {
		return nil, errors.New("a histogram's bounds and _bucket columns must be arrays")
	}
	if len(les) != len(counts) {
		return nil, fmt.Errorf("a histogram has %d bounds and %d bucket counts", len(les), len(counts))
	}
	sum, oks := toFloat(part(1))
	count, okc := toFloat(part(2))
	if !oks || !okc || !wholeCount(count) {
		return nil, errors.New("a histogram's _sum must be a number and its _count a whole number of at least 0")
	}
	h := &histogramValue{buckets: make(map[float64]uint64, len(les)), sum: sum, count: uint64(count)}
	prevBound, prevCount := math.Inf(-1), 0.0
	for i, le := range les {
		b, okb := toFloat(le)
		c, okc := toFloat(counts[i])
		if !okb || !okc {
			return nil, errors.New("a histogram's bounds and counts must be numbers")
		}
		switch {
		case math.IsNaN(b) || math.IsInf(b, -1) || math.IsInf(b, 1) && i != len(les)-1:
			return nil, fmt.Errorf("histogram bound %v: bounds must be finite (+Inf only as the last)", b)
		case b <= prevBound:
			return nil, fmt.Errorf("histogram bounds must increase: %v after %v", b, prevBound)
		case !wholeCount(c):
			return nil, fmt.Errorf("histogram bucket le=%v: count %v is not a whole number of at least 0", b, c)
		case c < prevCount:
			return nil, fmt.Errorf("histogram counts must be cumulative: %v at le=%v after %v", c, b, prevCount)
		case c > count:
			return nil, fmt.Errorf("histogram bucket le=%v counts %v, more than _count %v", b, c, count)
		case math.IsInf(b, 1):
			if c != count {
				return nil, fmt.Errorf("histogram bucket le=+Inf counts %v, not _count %v", c, count)
			}
			continue // the +Inf bucket is _count, which the exposition adds
		}
		prevBound, prevCount = b, c
		h.buckets[b] = uint64(c)
	}
	return h, nil
}

// wholeCount reports whether v can be an observation count.
func wholeCount(v float64) bool { return v >= 0 && v == math.Trunc(v) && v < 1<<63 }

// unknownDesc is the untyped metric of a result column the file does not list, made on first
// sight; nil when a built-in collector exports that name.
func (q *customQuery) unknownDesc(column string) *prometheus.Desc {
	q.unknownMu.Lock()
	defer q.unknownMu.Unlock()
	if d, ok := q.unknown[column]; ok {
		return d
	}
	name := q.name + "_" + column
	var d *prometheus.Desc
	if q.reserved == nil || !q.reserved(name) {
		d = prometheus.NewDesc(name, "Unknown metric from "+q.name, q.labels, nil)
	}
	q.unknown[column] = d
	return d
}

// decode turns a raw column value into the Go value pgx would return for it.
func decode(tm *pgtype.Map, f pgconn.FieldDescription, raw []byte) any {
	if raw == nil {
		return nil
	}
	if t, ok := tm.TypeForOID(f.DataTypeOID); ok {
		if v, err := t.Codec.DecodeValue(tm, f.DataTypeOID, f.Format, raw); err == nil {
			return v
		}
	}
	if f.Format == pgtype.TextFormatCode {
		return string(raw)
	}
	return raw
}

var typeMap = pgtype.NewMap()

func typeName(oid uint32) string {
	if t, ok := typeMap.TypeForOID(oid); ok {
		return t.Name
	}
	return "oid " + strconv.FormatUint(uint64(oid), 10)
}

// toFloat converts a column value to a sample value: numbers, booleans (1/0), numeric,
// intervals (seconds), timestamps (Unix seconds) and text holding a number.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int64:
		return float64(x), true
	case int32:
		return float64(x), true
	case int16:
		return float64(x), true
	case int8:
		return float64(x), true
	case int:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	case pgtype.Numeric:
		f, err := x.Float64Value()
		if err != nil || !f.Valid {
			return 0, false
		}
		return f.Float64, true
	case pgtype.Interval:
		if !x.Valid {
			return 0, false
		}
		us := float64(x.Microseconds) + float64(x.Days)*86400e6 + float64(x.Months)*30*86400e6
		return us / 1e6, true
	case time.Time:
		return float64(x.UnixNano()) / 1e9, true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		if err != nil || math.IsNaN(f) && x != "NaN" {
			return 0, false
		}
		return f, true
	}
	return 0, false
}

// labelValue renders a column value as a label value; NULL becomes "".
func labelValue(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return fmt.Sprintf("%x", x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case pgtype.Numeric:
		if f, ok := toFloat(x); ok {
			return strconv.FormatFloat(f, 'g', -1, 64)
		}
		return ""
	case [16]byte: // uuid
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	}
	return fmt.Sprint(v)
}
