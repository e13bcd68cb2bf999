package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Config configures an Exporter. Start from DefaultConfig; Settings fills one from flags and
// environment variables.
type Config struct {
	// Enabled switches collectors on or off by name; collectors not listed keep their default.
	Enabled map[string]bool
	// Timeout is a collection's deadline, whichever scrape started it (a scrape's
	// X-Prometheus-Scrape-Timeout-Seconds bounds only how long that scrape waits). It is also the
	// statement_timeout of the collector's sessions, so no single statement outlives it.
	Timeout time.Duration
	// MaxConns caps the collector's connections to the database.
	MaxConns int32
	// QueriesFile is the custom queries file ("" for none).
	QueriesFile string
	// StatementsLimit is how many statements the statements collector exports.
	StatementsLimit int
	// StatementsIncludeQuery adds each exported statement's text, cut to StatementsQueryLength
	// characters, as pg_stat_statements_query_id{queryid, query}. Reading the texts makes the
	// server read its query text file on every collection, so it is off by default.
	StatementsIncludeQuery bool
	// StatementsQueryLength is how many characters of a statement's text are kept.
	StatementsQueryLength int
	// StatementsExcludeDatabases and StatementsExcludeUsers are comma-separated names of the
	// databases and users whose statements are left out.
	StatementsExcludeDatabases, StatementsExcludeUsers string
	// DatabaseSizeInterval is how long database sizes are reused before being measured again
	// (0: every collection).
	DatabaseSizeInterval time.Duration
	// Databases selects the databases the per-database collectors read besides the connected
	// one (see --collector.databases); empty selects all the role may connect to.
	Databases string
	// Discover sends the per-database collectors to the other databases as well; off, they
	// read the connected database only, as postgres_exporter does without
	// --auto-discover-databases.
	Discover bool
	// DatabasesMaxIdle caps the connections to other databases kept open between scrapes.
	DatabasesMaxIdle int
	// DatabasesIdleTimeout closes a connection to another database unused for that long.
	DatabasesIdleTimeout time.Duration
	// Scope says whether this sidecar runs the server-wide collectors: always (ScopeAll),
	// never (ScopeLocal), or when elected among the sidecars of its server (ScopeAuto).
	Scope Scope
	// ElectionDatabase is the database in which ScopeAuto takes its advisory lock.
	ElectionDatabase string
	// ElectionInterval is how often ScopeAuto polls the lock.
	ElectionInterval time.Duration
	// TablesLimit is how many tables per database the per-table collectors export (0: all).
	TablesLimit int
	// MaxSeries is the series budget of one collection (0: none).
	MaxSeries int
}

// Option changes how New builds an Exporter.
type Option func(*Exporter)

// WithLogger sets the logger of collection and reload messages (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(e *Exporter) { e.log = l } }

// DefaultTimeout is a collection's deadline unless --collection-timeout gives one.
const DefaultTimeout = 5 * time.Second

// scrapeTimeoutHeader is the header in which Prometheus sends its scrape timeout.
const scrapeTimeoutHeader = "X-Prometheus-Scrape-Timeout-Seconds"

type namedCollector struct {
	name        string
	c           Collector
	perDatabase bool
}

// Exporter runs the enabled collectors against the pool manager's database and exports their
// metrics. It is a prometheus.Collector (unchecked: custom queries define metrics at run time);
// register it on the same registry that serves /metrics and wrap that handler with Middleware.
type Exporter struct {
	cfg  Config
	log  *slog.Logger
	pool *pgxpool.Pool
	// scrubErr masks passwords in errors before they are logged: a failing query's error may
	// quote one (Manager.ScrubError; none without a Manager).
	scrubErr func(error) error
	cols     []namedCollector
	custom   *customCollector // nil without a queries file
	ctx      context.Context  // canceled by Close
	cancel   context.CancelFunc

	mu      sync.Mutex
	running *run              // the collection in progress, nil between collections
	serving *collection       // what the Middleware is encoding, nil when it is not
	failing map[string]string // collector → last error logged
	wasUp   bool
	upKnown bool // a collection has connected or failed since start
	// --collector.databases patterns that matched no database, as last logged.
	unmatchedPatterns string
	unmatchedKnown    bool

	encodeSlot  chan struct{} // held while the Middleware encodes an answer
	inFlight    atomic.Int64  // scrapes the Middleware is serving
	maxInFlight atomic.Int64  // maxScrapesInFlight; tests lower it
	rejected    atomic.Int64  // scrapes refused past maxScrapesInFlight

	collections atomic.Int64
	// lastDuration is how long the last finished collection took, in seconds.
	lastDuration float64

	// Per-database collection: the filter, the side connection to other databases, and a hook
	// tests use to act just before a database is visited.
	databases      databaseFilter
	side           *sidePool
	beforeDatabase func(datname string)
	waiting        atomic.Int64   // scrapes waiting for a collection (tests use it)
	wg             sync.WaitGroup // collections and cancel requests in progress

	ownDescs
	duplicates, invalid atomic.Int64

	// Scope and budget (budget.go): the election with ScopeAuto (nil otherwise), the pool's
	// health for pg_up when this sidecar does not collect, and the connections it may open.
	el       *election
	poolUp   func() (up, known bool)
	ownConns func() int
	poolMax  int32
	poolDB   string // the pool's database, which the per-database collectors always read
	scope    scopeDescs
	// budgetChecked runs the start-up budget check of ScopeAll in the first collection.
	budgetChecked sync.Once
	cfgHash       atomic.Pointer[string] // configHash
	// otherDatabasesSeen is how many other databases the last collection visits (-1: none yet).
	otherDatabasesSeen atomic.Int64

	// The table limit and the series budget (tables.go, series_budget.go).
	tableLim    *tableLimiter
	budget      *seriesBudget
	budgetDescs budgetDescs
}

// New checks cfg and builds an Exporter on a side pool of mgr (mgr closes it). It loads the
// queries file and fails on an invalid one, naming file and line.
func New(mgr *pool.Manager, cfg Config, opts ...Option) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := mgr.NewMonitorPool(pool.MonitorOptions{
		MaxConns:         cfg.MaxConns,
		StatementTimeout: cfg.Timeout,
		LockTimeout:      lockTimeout(cfg.Timeout),
		ApplicationName:  "pgsidecar-collector",
	})
	if err != nil {
		return nil, err
	}
	e, err := newExporter(p, mgr.Name(), cfg, opts...)
	if err != nil {
		return nil, err
	}
	e.scrubErr = mgr.ScrubError
	if e.custom != nil {
		e.custom.scrub = e.errString
	}
	e.startScope(mgr)
	return e, nil
}

// lockTimeout is the collector sessions' lock_timeout: a fifth of the collection's deadline
// (1 s by default). A query waiting for a lock past it fails, and only its collector with it;
// the others keep the rest of the deadline.
func lockTimeout(collection time.Duration) time.Duration { return collection / 5 }

// newExporter builds an Exporter on a pgxpool (New gives it the manager's side pool) from a
// validated cfg.
func newExporter(p *pgxpool.Pool, poolName string, cfg Config, opts ...Option) (*Exporter, error) {
	e := &Exporter{
		cfg:        cfg,
		log:        slog.Default(),
		pool:       p,
		scrubErr:   func(err error) error { return err },
		failing:    map[string]string{},
		wasUp:      true,
		encodeSlot: make(chan struct{}, 1),
		ownDescs:   newOwnDescs(poolName),
		scope:      newScopeDescs(),
	}
	for _, o := range opts {
		o(e)
	}
	e.maxInFlight.Store(maxScrapesInFlight)
	e.otherDatabasesSeen.Store(-1)
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.databases, _ = parseDatabaseFilter(cfg.Databases) // checked by Validate
	e.side = newSidePool(p, cfg.DatabasesMaxIdle, cfg.DatabasesIdleTimeout)
	e.initBudget()
	factoryOpts := Options{Logger: e.log, StatementsLimit: cfg.StatementsLimit, DatabaseSizeInterval: cfg.DatabaseSizeInterval,
		StatementsExcludeDatabases: splitNames(cfg.StatementsExcludeDatabases), StatementsExcludeUsers: splitNames(cfg.StatementsExcludeUsers)}
	if cfg.StatementsIncludeQuery {
		factoryOpts.StatementsQueryLength = cfg.StatementsQueryLength
	}
	for _, name := range Names() {
		on, set := cfg.Enabled[name]
		if !set {
			on = registry[name].enabled
		}
		if on {
			e.cols = append(e.cols, namedCollector{name: name, c: registry[name].factory(factoryOpts),
				perDatabase: registry[name].perDatabase})
		}
	}
	if cfg.QueriesFile != "" {
		e.custom = newCustomCollector(cfg.QueriesFile, e.log)
		if err := e.custom.reload(); err != nil {
			return nil, fmt.Errorf("--queries.file: %w", err)
		}
		// Custom queries run last, so a slow one cannot starve the built-in collectors.
		e.cols = append(e.cols, namedCollector{name: customCollectorName, c: e.custom})
	}
	return e, nil
}

// ownDescs are the exporter's own series, beside the collectors'.
type ownDescs struct {
	upDesc, staticDesc, durationDesc, successDesc *prometheus.Desc
	collectionsDesc, droppedDesc                  *prometheus.Desc
	dbSuccessDesc, dbDurationDesc                 *prometheus.Desc
	lastErrorDesc, lastDurationDesc, scrapesDesc  *prometheus.Desc
	rejectedDesc                                  *prometheus.Desc
}

func newOwnDescs(poolName string) ownDescs {
	return ownDescs{
		upDesc: declareType(prometheus.NewDesc("pg_up", "1 if the last collection could connect to PostgreSQL and query it, else 0.",
			nil, prometheus.Labels{"pool": poolName}), TypeGauge),
		staticDesc: untypedDesc("pg_static", "PostgreSQL server version; the value is always 1.", "version", "short_version"),
		durationDesc: gaugeDesc("pg_scrape_collector_duration_seconds",
			"Time a collector took in the last collection.", "collector"),
		successDesc: gaugeDesc("pg_scrape_collector_success",
			"1 if a collector succeeded in the last collection, 0 if it failed or ran out of time.", "collector"),
		collectionsDesc: counterDesc("pgsidecar_collections_total",
			"Collections run against the database; concurrent scrapes share one."),
		droppedDesc: counterDesc("pgsidecar_collector_dropped_series_total",
			"Samples dropped from collections, by reason (duplicate series, invalid label value, left out by the series budget of --collector.max-series).", "reason"),
		dbSuccessDesc: gaugeDesc("pgsidecar_collector_database_success",
			"1 if the per-database collectors could read a database in the last collection, 0 if it refused the connection, failed or ran out of time.", "datname"),
		dbDurationDesc: gaugeDesc("pgsidecar_collector_database_duration_seconds",
			"Time the per-database collectors took in a database in the last collection, connecting included.", "datname"),
		lastErrorDesc: gaugeDesc("pg_exporter_last_scrape_error",
			"1 if the last collection could not reach the database or a collector failed in it, else 0."),
		lastDurationDesc: gaugeDesc("pg_exporter_last_scrape_duration_seconds", "Duration of the last collection."),
		scrapesDesc:      counterDesc("pg_exporter_scrapes_total", "Collections run against the database; concurrent scrapes share one."),
		rejectedDesc: counterDesc("pgsidecar_scrapes_rejected_total",
			"Scrapes of /metrics answered 503 because 64 were already being served."),
	}
}

// ExporterMetrics declares the exporter's own series (pg_up, pg_scrape_collector_*,
// pgsidecar_collector_*, the custom queries' own ...), as Declarations declares the
// collectors'. It needs no database.
func ExporterMetrics() []Metric {
	declareMu.Lock()
	defer declareMu.Unlock()
	b := &declarationBuilder{byDesc: map[*prometheus.Desc]*Metric{}}
	builtinMu.Lock()
	declaring = b
	builtinMu.Unlock()
	newOwnDescs("pool")
	newScopeDescs()
	newBudgetDescs()
	builtinMu.Lock()
	declaring = nil
	builtinMu.Unlock()
	out := make([]Metric, 0, len(b.metrics)+3)
	for _, m := range b.metrics {
		out = append(out, *m)
	}
	c := newCustomCollector("", slog.New(slog.DiscardHandler))
	ch := make(chan *prometheus.Desc, 1)
	for _, x := range []struct {
		c   prometheus.Collector
		typ string
	}{{c.reloadOK, TypeGauge}, {c.reloadTS, TypeGauge}, {c.errs, TypeCounter}} {
		x.c.Describe(ch)
		out = append(out, Metric{Desc: <-ch, Type: x.typ})
	}
	return out
}

// Close stops collections in progress and waits for them. The side pool itself belongs to
// the pool manager.
func (e *Exporter) Close() {
	e.cancel()
	e.wg.Wait()
	e.side.close()
}

// Enabled lists the collectors that run, in the order they run.
func (e *Exporter) Enabled() []string {
	out := make([]string, len(e.cols))
	for i, c := range e.cols {
		out[i] = c.name
	}
	return out
}

// Reload reads the queries file again. On error the previous queries stay in use and
// pgsidecar_queries_last_reload_successful turns 0. Without a queries file it does nothing.
func (e *Exporter) Reload() error {
	if e.custom == nil {
		return nil
	}
	if err := e.custom.reload(); err != nil {
		return err
	}
	e.noteConfig()
	return nil
}

// Middleware serves each scrape from the shared collection, waiting for it at most until the
// scrape's own deadline (Prometheus' X-Prometheus-Scrape-Timeout-Seconds, clamped, less a
// margin; else Config.Timeout). A scrape whose deadline comes first answers with what the
// collection has finished so far; the collection itself runs on with the server's own bound,
// Config.Timeout, so one scraper's header never shortens, or lengthens, another's collection.
//
// The answer is encoded once per collection and format and the bytes shared by every scrape of
// that collection: with 290,000 series an encode costs tens of MB, and concurrent scrapers
// would otherwise each pay it. Encodes run one at a time, into memory, so a slow reader holds
// no encode; at most maxScrapesInFlight scrapes are served at once, the rest get 503. Wrap the
// /metrics handler with it.
func (e *Exporter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.inFlight.Add(1) > e.maxInFlight.Load() {
			e.inFlight.Add(-1)
			e.rejected.Add(1)
			http.Error(w, "too many scrapes in flight", http.StatusServiceUnavailable)
			return
		}
		defer e.inFlight.Add(-1)
		start := time.Now()
		budget := scrapeTimeout(r.Header.Get(scrapeTimeoutHeader), e.cfg.Timeout)
		col := e.await(start.Add(budget))
		a, err := e.answer(r, next, col, start.Add(budget+encodeMargin))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		h := w.Header()
		for k, v := range a.header {
			h[k] = v
		}
		w.WriteHeader(a.status)
		_, _ = w.Write(a.body)
	})
}

// maxScrapesInFlight bounds the scrapes served at once. A scrape waiting for the shared
// collection or answer costs a goroutine and a reference to bytes it shares, not an encode of
// its own, so the bound is generous for any real set of scrapers (an HA pair of Prometheus
// servers, agents, people with curl) and only stops a client that loops or floods; past it a
// scrape gets 503 at once. (promhttp's own limit, behind the Middleware, then never binds.)
const maxScrapesInFlight = 64

// encodeMargin is the part of a scrape's timeout kept for encoding and sending the answer.
const encodeMargin = 500 * time.Millisecond

// Header values outside [minScrapeTimeout, maxScrapeTimeout] seconds are clamped: Prometheus
// sends its scrape_timeout, which is never below a tenth of a second nor above an hour in any
// sane configuration, and larger values overflowed time.Duration (9.3e9 s read as negative).
const (
	minScrapeTimeout = 0.1
	maxScrapeTimeout = 3600.0
)

// scrapeTimeout turns the scrape timeout header into how long the scrape waits for the
// collection: the header's value, clamped to a sane range, less a margin for encoding and
// sending the answer (half a second, or a fifth of short timeouts), or def when the header is
// missing or invalid.
func scrapeTimeout(header string, def time.Duration) time.Duration {
	if header == "" {
		return def
	}
	secs, err := strconv.ParseFloat(header, 64)
	if err != nil || secs <= 0 || math.IsNaN(secs) || math.IsInf(secs, 0) {
		return def
	}
	secs = min(max(secs, minScrapeTimeout), maxScrapeTimeout)
	t := time.Duration(secs * float64(time.Second))
	return t - min(encodeMargin, t/5)
}

// Describe sends nothing: the Exporter is an unchecked collector, since custom queries
// define their metrics at run time.
func (e *Exporter) Describe(chan<- *prometheus.Desc) {}

// Collect sends the collection the Middleware is encoding, or (for a Gather outside it, such
// as the API's) the shared collection once it finishes.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	res := e.serving
	e.mu.Unlock()
	if res == nil {
		res = e.await(time.Time{})
	}
	for _, m := range res.metrics {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(e.collectionsDesc, prometheus.CounterValue, float64(e.collections.Load()))
	ch <- prometheus.MustNewConstMetric(e.scrapesDesc, prometheus.CounterValue, float64(e.collections.Load()))
	e.mu.Lock()
	lastDur := e.lastDuration
	e.mu.Unlock()
	lastErr := 0.0
	if res.failed {
		lastErr = 1
	}
	ch <- prometheus.MustNewConstMetric(e.lastErrorDesc, prometheus.GaugeValue, lastErr)
	ch <- prometheus.MustNewConstMetric(e.lastDurationDesc, prometheus.GaugeValue, lastDur)
	ch <- prometheus.MustNewConstMetric(e.droppedDesc, prometheus.CounterValue, float64(e.duplicates.Load()), "duplicate")
	ch <- prometheus.MustNewConstMetric(e.droppedDesc, prometheus.CounterValue, float64(e.invalid.Load()), "invalid")
	ch <- prometheus.MustNewConstMetric(e.rejectedDesc, prometheus.CounterValue, float64(e.rejected.Load()))
	e.collectScope(ch)
	e.collectBudget(ch)
	if e.custom != nil {
		e.custom.collectOwn(ch)
	}
}

// collection is the result of one collection, shared by the scrapes that joined it, or a
// scrape's view of one still running.
type collection struct {
	metrics []prometheus.Metric
	// failed is set when the database was unreachable, a collector failed, or the scrape's
	// deadline passed before the collection finished.
	failed bool

	mu      sync.Mutex
	answers map[string]*answer // encoded answers, by format
}

// answer is an encoded /metrics response, shared by the scrapes of one collection that asked
// for the same format.
type answer struct {
	done   chan struct{} // closed once the fields are set
	header http.Header
	status int
	body   []byte
}

// answer encodes col for r with next (the registry's handler), or returns the answer already
// encoded for another scrape of col in r's format. It gives up at deadline when other encodes
// hold the encoder.
func (e *Exporter) answer(r *http.Request, next http.Handler, col *collection, deadline time.Time) (*answer, error) {
	// promhttp picks the format and compression from these headers alone.
	key := r.Header.Get("Accept") + "\x00" + r.Header.Get("Accept-Encoding")
	col.mu.Lock()
	if col.answers == nil {
		col.answers = map[string]*answer{}
	}
	a, shared := col.answers[key]
	if !shared {
		a = &answer{done: make(chan struct{})}
		col.answers[key] = a
	}
	col.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	if shared {
		select {
		case <-a.done:
			if a.status == 0 {
				return nil, errEncodeBusy
			}
			return a, nil
		case <-timer.C:
			return nil, errEncodeBusy
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	defer close(a.done)
	select {
	case e.encodeSlot <- struct{}{}:
	case <-timer.C:
		e.forget(col, key)
		return nil, errEncodeBusy
	case <-r.Context().Done():
		e.forget(col, key)
		return nil, r.Context().Err()
	}
	defer func() { <-e.encodeSlot }()
	e.mu.Lock()
	e.serving = col
	e.mu.Unlock()
	rec := &recorder{header: http.Header{}}
	// The request's context must not cut an encode that other scrapes share.
	next.ServeHTTP(rec, r.WithContext(context.WithoutCancel(r.Context())))
	e.mu.Lock()
	e.serving = nil
	e.mu.Unlock()
	a.header, a.status, a.body = rec.header, rec.status, rec.body.Bytes()
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return a, nil
}

// forget drops an answer its encoder gave up on, so a later scrape encodes it afresh.
func (e *Exporter) forget(col *collection, key string) {
	col.mu.Lock()
	delete(col.answers, key)
	col.mu.Unlock()
}

var errEncodeBusy = errors.New("the metrics encoder is busy with other scrapes past this scrape's deadline")

// recorder is an http.ResponseWriter that keeps the response in memory.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

// run is one collection against the database, in progress or finished; scrapes join it.
type run struct {
	done   chan struct{} // closed once result is set
	result *collection

	mu        sync.Mutex
	sink      *sink             // the collectors' series so far
	connected bool              // the collection reached the database
	static    []string          // pg_static's labels, once known
	finished  map[int]colResult // collectors whose outcome is final, by index in e.cols
	// visitsOthers is set (before the collectors start) when the per-database collectors visit
	// other databases after the connected one.
	visitsOthers bool
	// tables holds the table choice of each database visited, set up by the collection's
	// goroutine before the collectors of that database run.
	tables map[string]*dbTables
}

func newRun() *run {
	return &run{done: make(chan struct{}), sink: newSink(), finished: map[int]colResult{}, tables: map[string]*dbTables{}}
}

// finish records collector i's final outcome, for scrapes that answer before the run ends.
func (r *run) finish(i int, res colResult) {
	r.mu.Lock()
	r.finished[i] = res
	r.mu.Unlock()
}

// await returns the shared collection once it finishes, starting one when none runs; when
// deadline (if not zero) comes first, what the collection has finished so far.
func (e *Exporter) await(deadline time.Time) *collection {
	e.waiting.Add(1)
	defer e.waiting.Add(-1)
	r := e.currentRun()
	if deadline.IsZero() {
		<-r.done
		return r.result
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-r.done:
		return r.result
	case <-timer.C:
		return e.snapshot(r)
	}
}

// currentRun returns the collection in progress, or starts one. A collection's deadline is
// Config.Timeout from its start, whoever asked for it.
func (e *Exporter) currentRun() *run {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running != nil {
		return e.running
	}
	r := newRun()
	e.running = r
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Timeout)
		defer cancel()
		res := e.collect(ctx, r)
		e.mu.Lock()
		r.result = res
		e.running = nil
		e.mu.Unlock()
		close(r.done)
	}()
	return r
}

// snapshot is a scrape's answer from a collection still running: the series of the collectors
// that finished and their success; the others unsuccessful. Before the collection has reached
// the database it is an unfinished answer.
func (e *Exporter) snapshot(r *run) *collection {
	r.mu.Lock()
	connected, static := r.connected, r.static
	finished := maps.Clone(r.finished)
	r.mu.Unlock()
	if !connected {
		return e.unfinished()
	}
	r.sink.mu.Lock()
	metrics := slices.Clone(r.sink.metrics)
	tables := slices.Clone(r.sink.tables)
	r.sink.mu.Unlock()
	metrics = e.budget.fit(metrics, tables)
	own := newSink()
	own.add(e.upDesc, prometheus.GaugeValue, 1, nil)
	own.add(e.staticDesc, prometheus.UntypedValue, 1, static)
	for i, c := range e.cols {
		res, done := finished[i]
		success := 0.0
		if done && res.err == nil {
			success = 1
		}
		own.add(e.durationDesc, prometheus.GaugeValue, res.dur.Seconds(), []string{c.name})
		own.add(e.successDesc, prometheus.GaugeValue, success, []string{c.name})
	}
	return &collection{metrics: append(metrics, own.metrics...), failed: true}
}

// unfinished answers a scrape whose deadline passed while the collection it joined still
// runs: nothing succeeded for it, but whether the database is up is the last collection's
// finding, not something this scrape learned, so pg_up keeps it (0 before any collection
// finished) and nothing is logged.
func (e *Exporter) unfinished() *collection {
	e.mu.Lock()
	up := e.wasUp && e.upKnown
	e.mu.Unlock()
	if up {
		return e.nothingRan(1)
	}
	return e.nothingRan(0)
}

// failed is a collection where nothing could run.
func (e *Exporter) failed(err error) *collection {
	e.noteUp(false, err)
	return e.nothingRan(0)
}

// nothingRan is a collection without results: pg_up as given, every collector unsuccessful.
func (e *Exporter) nothingRan(up float64) *collection {
	s := newSink()
	s.add(e.upDesc, prometheus.GaugeValue, up, nil)
	for _, c := range e.cols {
		s.add(e.durationDesc, prometheus.GaugeValue, 0, []string{c.name})
		s.add(e.successDesc, prometheus.GaugeValue, 0, []string{c.name})
	}
	return &collection{metrics: s.metrics, failed: true}
}

// noteUp logs transitions between reachable and unreachable once, not on every scrape.
func (e *Exporter) noteUp(up bool, err error) {
	e.mu.Lock()
	was := e.wasUp
	e.wasUp, e.upKnown = up, true
	e.mu.Unlock()
	switch {
	case was && !up:
		e.log.Warn("Collection cannot reach the database", "error", e.errString(err))
	case !was && up:
		e.log.Info("Collection reaches the database again")
	}
}

// errString renders an error for logs, without the connection string's password.
func (e *Exporter) errString(err error) string {
	if err == nil {
		return ""
	}
	return e.scrubErr(err).Error()
}

type colResult struct {
	dur time.Duration
	err error
}

// collect runs every enabled collector once under ctx, and notes its duration for
// pg_exporter_last_scrape_duration_seconds.
func (e *Exporter) collect(ctx context.Context, r *run) *collection {
	if !e.collects(ctx) {
		e.budget.idle()
		return e.localOnly(ctx)
	}
	start := time.Now()
	e.collections.Add(1)
	c := e.collectOnce(ctx, r)
	e.mu.Lock()
	e.lastDuration = time.Since(start).Seconds()
	e.mu.Unlock()
	return c
}

// collectOnce runs the collectors, their series going to r's sink as they come.
func (e *Exporter) collectOnce(ctx context.Context, r *run) *collection {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return e.failed(err)
	}
	var version int
	var full, short, configKey, current string
	var allowed int
	err = conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, version(), "+
		"pg_conf_load_time()::text || ' ' || pg_backend_pid(), current_database(), "+allowedConnectionsSQL).
		Scan(&version, &full, &configKey, &current, &allowed)
	if err != nil {
		conn.Release()
		return e.failed(err)
	}
	short = semver(version)
	e.noteUp(true, nil)
	if e.cfg.Scope == ScopeAll && e.ownConns != nil {
		e.budgetChecked.Do(func() { e.checkBudget(ctx, conn.Conn(), true) })
	}
	r.mu.Lock()
	r.connected, r.static = true, []string{full, short}
	r.mu.Unlock()
	var others []string
	if e.hasPerDatabase() && e.cfg.Discover {
		if others, err = e.otherDatabases(ctx, conn); err != nil {
			conn.Release()
			return e.failed(err)
		}
	}
	r.visitsOthers = len(others) > 0
	currentTables := e.tablesFor(r.tables, current)
	for _, db := range others {
		e.tablesFor(r.tables, db)
	}
	if e.hasPerDatabase() && e.cfg.Discover {
		e.otherDatabasesSeen.Store(int64(len(others)))
	}

	s := r.sink
	// The other databases are visited on the side connection while the collectors run in the
	// pool's database: the server works on both at once.
	var side []colResult
	var sideDone sync.WaitGroup
	if len(others) > 0 {
		side = make([]colResult, len(e.cols))
		sideDone.Go(func() { e.collectDatabases(ctx, others, version, s, r.tables, side) })
	}
	results := make([]colResult, len(e.cols))
	queue := make(chan int, len(e.cols))
	for i := range e.cols {
		queue <- i
	}
	close(queue)
	workers := min(int(e.cfg.MaxConns), len(e.cols))
	var wg sync.WaitGroup
	for w := range workers {
		var first *pgxpool.Conn
		if w == 0 {
			first = conn
		}
		wg.Go(func() { e.worker(ctx, first, version, configKey, currentTables, r, queue, results) })
	}
	if workers == 0 {
		conn.Release()
	}
	wg.Wait()
	if e.hasPerDatabase() {
		e.noteCurrentDatabase(current, s, results)
	}
	sideDone.Wait()
	for i, res := range side {
		results[i].dur += res.dur
		if results[i].err == nil {
			results[i].err = res.err
		}
	}

	// The collection's own series go beside the collectors', not into r's sink, so a scrape's
	// snapshot taken meanwhile does not get them twice.
	own := newSink()
	own.add(e.upDesc, prometheus.GaugeValue, 1, nil)
	own.add(e.staticDesc, prometheus.UntypedValue, 1, []string{full, short}) // untyped, as postgres_exporter
	own.add(e.scope.allowed, prometheus.GaugeValue, float64(allowed), nil)
	failed := false
	for i, c := range e.cols {
		res := results[i]
		success := 1.0
		if res.err != nil {
			success, failed = 0, true
		}
		e.noteCollector(c.name, res)
		own.add(e.durationDesc, prometheus.GaugeValue, res.dur.Seconds(), []string{c.name})
		own.add(e.successDesc, prometheus.GaugeValue, success, []string{c.name})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.duplicates.Add(int64(s.duplicates))
	e.invalid.Add(int64(s.invalid))
	if s.invalid > 0 {
		e.log.Warn("Collection dropped invalid samples", "count", s.invalid, "error", e.errString(s.lastErr))
	}
	kept := e.fitBudget(s, r.tables)
	return &collection{metrics: append(slices.Clip(kept), own.metrics...), failed: failed}
}

// noteCollector logs a collector that starts failing, fails differently or works again, rather
// than every failed scrape.
func (e *Exporter) noteCollector(name string, r colResult) {
	e.mu.Lock()
	prev, was := e.failing[name]
	msg := ""
	if r.err != nil {
		msg = e.errString(r.err)
		e.failing[name] = msg
	} else {
		delete(e.failing, name)
	}
	e.mu.Unlock()
	switch {
	case r.err != nil && (!was || prev != msg):
		e.log.Warn("Collector failed", "collector", name, "duration", r.dur, "error", msg)
	case r.err == nil && was:
		e.log.Info("Collector works again", "collector", name)
	}
}

// worker runs collectors from queue on one connection, acquiring it first if conn is nil.
func (e *Exporter) worker(ctx context.Context, conn *pgxpool.Conn, version int, configKey string, tables *dbTables,
	r *run, queue <-chan int, results []colResult) {
	defer func() {
		if conn != nil {
			conn.Release()
		}
	}()
	for i := range queue {
		start := time.Now()
		if conn == nil {
			c, err := e.pool.Acquire(ctx)
			if err != nil {
				results[i] = colResult{dur: time.Since(start), err: err}
				continue
			}
			conn = c
		}
		sc := &Scrape{Conn: conn, Version: version, ConfigKey: configKey, sink: r.sink, collector: e.cols[i].name}
		if e.cols[i].perDatabase {
			sc.tables = tables
		}
		err := e.runOne(ctx, e.cols[i].c, sc)
		results[i] = colResult{dur: time.Since(start), err: err}
		if !e.cols[i].perDatabase || !r.visitsOthers {
			// A per-database collector's outcome is final once the other databases were visited too.
			r.finish(i, results[i])
		}
		if conn.Conn().IsClosed() {
			// A deadline cut the connection; the next collector needs a new one.
			if ctx.Err() != nil {
				e.cancelOnServer(conn.Conn().PgConn())
			}
			conn.Release()
			conn = nil
		}
	}
}

// cancelOnServer asks the server to cancel the statement a deadline cut off. Without it the
// backend would go on running it until statement_timeout, and slow scrapes would pile up
// work on a server that is already struggling.
func (e *Exporter) cancelOnServer(c *pgconn.PgConn) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := c.CancelRequest(ctx); err != nil {
			e.log.Debug("Cancel request failed", "error", e.errString(err))
		}
	}()
}

// runOne runs a collector, turning a panic into an error so one broken collector cannot take
// the scrape down.
func (e *Exporter) runOne(ctx context.Context, c Collector, s *Scrape) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("collector panicked: %v", r)
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.Update(ctx, s)
}

// semver renders a server_version_num like postgres_exporter's short_version ("15.4.0").
func semver(num int) string {
	if num >= 100000 {
		return fmt.Sprintf("%d.%d.0", num/10000, num%10000)
	}
	return fmt.Sprintf("%d.%d.%d", num/10000, num/100%100, num%100)
}
