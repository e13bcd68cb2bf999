// Package collector exports PostgreSQL statistics with postgres_exporter-compatible pg_* names:
// one collector per file, each registered by name in an init() and switchable with
// --[no-]collector.NAME, plus custom metrics from a queries.yaml file.
//
// All queries of a scrape go through one small side pool of the pool manager (one connection by
// default), under the collection's deadline (--collection-timeout); the per-database collectors
// also visit the other databases, one at a time on a connection of their own, while the other
// collectors run (databases.go). Concurrent scrapes share one
// collection, and a failing or slow collector only sets its own
// pg_scrape_collector_success{collector} to 0: the scrape itself always answers.
package collector

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector reads one group of statistics during a scrape and emits them through s.
type Collector interface {
	Update(ctx context.Context, s *Scrape) error
}

// Querier runs SQL; *pgxpool.Conn, *pgxpool.Pool and *pgx.Conn satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Options is what a collector factory gets.
type Options struct {
	Logger *slog.Logger
	// StatementsLimit is the number of statements the statements collector exports.
	StatementsLimit int
	// StatementsQueryLength is the length of the statement text label, 0 for none.
	StatementsQueryLength int
	// DatabaseSizeInterval is how long the database collector reuses database sizes.
	DatabaseSizeInterval time.Duration
	// StatementsExcludeDatabases and StatementsExcludeUsers name the databases and users whose
	// statements the statements collector leaves out.
	StatementsExcludeDatabases, StatementsExcludeUsers []string
}

type registration struct {
	name    string
	enabled bool // default state
	help    string
	factory func(Options) Collector
	// perDatabase collectors read views that only show the connected database; they run in
	// every database --collector.databases selects.
	perDatabase bool
}

var registry = map[string]registration{}

// register makes a collector known by name with its default state. Collectors call it from
// init(); the name becomes the --collector.NAME flag.
func register(name string, enabled bool, help string, factory func(Options) Collector) {
	if _, dup := registry[name]; dup {
		panic("collector: " + name + " registered twice")
	}
	registry[name] = registration{name: name, enabled: enabled, help: help, factory: factory}
}

// registerPerDatabase registers a collector that runs once in each selected database. Its
// series must carry a datname label, so that two databases never give the same series.
func registerPerDatabase(name string, enabled bool, help string, factory func(Options) Collector) {
	register(name, enabled, help, factory)
	r := registry[name]
	r.perDatabase = true
	registry[name] = r
}

// Names lists the registered collectors in sorted order.
func Names() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultEnabled reports whether the named collector runs unless switched off.
func DefaultEnabled(name string) bool { return registry[name].enabled }

// Scrape is one collector's view of a running collection: the connection to query, the
// server version, and emit functions that build const metrics and drop duplicates.
type Scrape struct {
	// Conn runs the collector's queries.
	Conn Querier
	// Version is the server's server_version_num (e.g. 150004).
	Version int
	// ConfigKey changes whenever the settings the collection's session sees may have changed:
	// it is the server's configuration load time and the session's backend pid.
	ConfigKey string

	sink *sink
	// collector is the registered name of the collector this scrape runs ("" for the custom
	// queries), for emitCheck.
	collector string
	// tables is the table choice of the database Conn is connected to, for the per-table
	// collectors (nil: every table).
	tables *dbTables
	// everySidecarOnly limits the custom queries to those that run on every sidecar, on a
	// sidecar that does not collect the server's statistics.
	everySidecarOnly bool
}

// Gauge emits a gauge sample. Label values must match the desc's variable labels.
func (s *Scrape) Gauge(d *prometheus.Desc, v float64, labels ...string) {
	s.check(d, TypeGauge)
	s.sink.add(d, prometheus.GaugeValue, v, labels)
}

// Counter emits a counter sample.
func (s *Scrape) Counter(d *prometheus.Desc, v float64, labels ...string) {
	s.check(d, TypeCounter)
	s.sink.add(d, prometheus.CounterValue, v, labels)
}

// Untyped emits an untyped sample.
func (s *Scrape) Untyped(d *prometheus.Desc, v float64, labels ...string) {
	s.check(d, TypeUntyped)
	s.sink.add(d, prometheus.UntypedValue, v, labels)
}

// emitCheck, set by tests, sees every metric a built-in collector emits, so that a test fails
// on a metric, type or server version the collector's declaration (Declarations) leaves out,
// which the reference docs would then get wrong. Nil in the binary.
var emitCheck func(collector string, d *prometheus.Desc, typ string, version int)

// check passes an emitted metric to emitCheck.
func (s *Scrape) check(d *prometheus.Desc, typ string) {
	if emitCheck != nil && s.collector != "" {
		emitCheck(s.collector, d, typ, s.Version)
	}
}

// sink gathers the metrics of one collection. A series already emitted (same desc and label
// values) is dropped and counted instead of failing the whole scrape later in the registry.
type sink struct {
	mu      sync.Mutex // collectors may run on several connections at once
	metrics []prometheus.Metric
	// tables holds, beside each metric, the table it belongs to ("datname\xffschemaname\xffrelname"),
	// "" for a series that belongs to no table; the series budget leaves tables out by it.
	tables     []string
	seen       map[seriesKey]struct{}
	duplicates int
	invalid    int
	lastErr    error
}

func newSink() *sink { return &sink{seen: make(map[seriesKey]struct{}, 512)} }

func (k *sink) add(d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	k.keep(d, labels, m, err)
}

// addHistogram adds a histogram sample, with the same duplicate and error handling as add.
func (k *sink) addHistogram(d *prometheus.Desc, h *histogramValue, labels []string) {
	m, err := prometheus.NewConstHistogram(d, h.count, h.sum, h.buckets, labels...)
	k.keep(d, labels, m, err)
}

// keep adds m unless its series was already emitted or building it failed.
func (k *sink) keep(d *prometheus.Desc, labels []string, m prometheus.Metric, err error) {
	key := seriesKey{desc: d}
	switch len(labels) {
	case 0:
	case 1:
		key.labels = labels[0]
	default:
		key.labels = strings.Join(labels, "\xff")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, dup := k.seen[key]; dup {
		k.duplicates++
		return
	}
	if err != nil {
		// Invalid UTF-8 in a label value or a wrong label count: skip the sample, keep the rest.
		k.invalid++
		k.lastErr = err
		return
	}
	k.seen[key] = struct{}{}
	k.metrics = append(k.metrics, m)
	k.tables = append(k.tables, "")
}

// seriesKey identifies a series within one collection. Descs are built once per metric name
// (custom queries validate that names are unique), so the pointer stands for the name.
type seriesKey struct {
	desc   *prometheus.Desc
	labels string
}

// desc builds a Desc and records its name as taken by a built-in collector, so custom queries
// cannot export the same name. Collectors declare its type with gaugeDesc, counterDesc and the
// others, or with the column that uses it (gauge, counter).
func desc(name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc(name, help, labels, nil)
	builtinMu.Lock()
	builtinNames[name] = true
	if declaring != nil {
		declaring.add(d)
	}
	builtinMu.Unlock()
	return d
}

// gaugeDesc, counterDesc, untypedDesc and histogramDesc build a Desc and declare its type.
func gaugeDesc(name, help string, labels ...string) *prometheus.Desc {
	return declareType(desc(name, help, labels...), TypeGauge)
}

func counterDesc(name, help string, labels ...string) *prometheus.Desc {
	return declareType(desc(name, help, labels...), TypeCounter)
}

func untypedDesc(name, help string, labels ...string) *prometheus.Desc {
	return declareType(desc(name, help, labels...), TypeUntyped)
}

func histogramDesc(name, help string, labels ...string) *prometheus.Desc {
	return declareType(desc(name, help, labels...), TypeHistogram)
}

// since declares that d exists from server version v (a server_version_num) on; before
// declares that it exists only on versions before v. Both return d.
func since(v int, d *prometheus.Desc) *prometheus.Desc {
	return declare(d, func(m *Metric) { m.MinVersion = v })
}

func before(v int, d *prometheus.Desc) *prometheus.Desc {
	return declare(d, func(m *Metric) { m.BeforeVersion = v })
}

// declare records set's part of d's declaration while Declarations builds the collectors, and
// returns d.
func declare(d *prometheus.Desc, set func(*Metric)) *prometheus.Desc {
	builtinMu.Lock()
	if declaring != nil {
		set(declaring.of(d))
	}
	builtinMu.Unlock()
	return d
}

var (
	builtinMu    sync.Mutex
	builtinNames = map[string]bool{
		"pg_up": true, "pg_static": true, "pg_scrape_collector_duration_seconds": true,
		"pg_scrape_collector_success": true,
	}
	builtinOnce sync.Once
	// declaring collects what desc, declareType, since and before declare while Declarations
	// builds a collector; nil otherwise, so that building collectors keeps nothing.
	declaring *declarationBuilder
	declareMu sync.Mutex
)

// Metric types a declaration gives, as Prometheus' exposition format names them.
const (
	TypeCounter   = "counter"
	TypeGauge     = "gauge"
	TypeHistogram = "histogram"
	TypeUntyped   = "untyped"
)

// valueTypeName names a const metric's value type.
func valueTypeName(t prometheus.ValueType) string {
	switch t {
	case prometheus.CounterValue:
		return TypeCounter
	case prometheus.GaugeValue:
		return TypeGauge
	}
	return TypeUntyped
}

// Metric is one metric a collector declares.
type Metric struct {
	Desc *prometheus.Desc
	// Type is TypeCounter, TypeGauge, TypeHistogram or TypeUntyped.
	Type string
	// MinVersion is the first server_version_num the metric exists on, BeforeVersion the first
	// it no longer exists on; 0 for no bound.
	MinVersion, BeforeVersion int
}

// ExistsOn reports whether the metric exists on a server version (server_version_num).
func (m Metric) ExistsOn(version int) bool {
	return version >= m.MinVersion && (m.BeforeVersion == 0 || version < m.BeforeVersion)
}

type declarationBuilder struct {
	metrics []*Metric
	byDesc  map[*prometheus.Desc]*Metric
}

func (b *declarationBuilder) add(d *prometheus.Desc) {
	m := &Metric{Desc: d}
	b.metrics = append(b.metrics, m)
	b.byDesc[d] = m
}

// of returns d's declaration; a Desc built without desc (none should be) is added.
func (b *declarationBuilder) of(d *prometheus.Desc) *Metric {
	if m := b.byDesc[d]; m != nil {
		return m
	}
	b.add(d)
	return b.byDesc[d]
}

// Declaration is what a built-in collector declares it exports: the metrics it builds descs
// for when it is built, with their types and the server versions they exist on. The settings
// collector's pg_settings_* follow the server's settings and are built as it reads them, so
// it declares none.
type Declaration struct {
	Collector      string
	DefaultEnabled bool
	// PerDatabase collectors run in every database --collector.databases selects.
	PerDatabase bool
	Metrics     []Metric
}

// declareType notes d's type while Declarations builds a collector, and returns d.
func declareType(d *prometheus.Desc, typ string) *prometheus.Desc {
	return declare(d, func(m *Metric) { m.Type = typ })
}

// Declarations builds every registered collector once, in name order, and returns what each
// declares. It needs no database. Descs built meanwhile by another goroutine (an Exporter being
// created) would be counted too, so it is for docs and tests.
func Declarations() []Declaration {
	declareMu.Lock()
	defer declareMu.Unlock()
	var out []Declaration
	for _, name := range Names() {
		r := registry[name]
		b := &declarationBuilder{byDesc: map[*prometheus.Desc]*Metric{}}
		builtinMu.Lock()
		declaring = b
		builtinMu.Unlock()
		r.factory(Options{Logger: slog.New(slog.DiscardHandler)})
		builtinMu.Lock()
		declaring = nil
		builtinMu.Unlock()
		d := Declaration{Collector: name, DefaultEnabled: r.enabled, PerDatabase: r.perDatabase}
		for _, m := range b.metrics {
			d.Metrics = append(d.Metrics, *m)
		}
		out = append(out, d)
	}
	return out
}

// builtinName reports whether a built-in collector exports name (or, for the settings
// collector, any pg_settings_* name).
func builtinName(name string) bool {
	builtinOnce.Do(func() {
		for _, r := range registry {
			r.factory(Options{Logger: slog.New(slog.DiscardHandler)})
		}
	})
	if strings.HasPrefix(name, "pg_settings_") || strings.HasPrefix(name, "pgsidecar_") {
		return true
	}
	builtinMu.Lock()
	defer builtinMu.Unlock()
	return builtinNames[name]
}

// queryRows runs sql and calls fn for each row.
func queryRows(ctx context.Context, q Querier, sql string, fn func(pgx.Rows) error, args ...any) error {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
