package collector

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Config configures an Exporter. Start from DefaultConfig; Settings fills one from flags and
// environment variables.
type Config struct {
	// Enabled switches collectors on or off by name; collectors not listed keep their default.
	Enabled map[string]bool
	// Timeout is the collection deadline when a scrape does not send
	// X-Prometheus-Scrape-Timeout-Seconds. It is also the statement_timeout of the collector's
	// sessions, so no single statement outlives it on the server.
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
}

// Option changes how New builds an Exporter.
type Option func(*Exporter)

// WithLogger sets the logger of collection and reload messages (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(e *Exporter) { e.log = l } }

// DefaultTimeout is the collection deadline when neither the scrape nor the flag gives one.
const DefaultTimeout = 5 * time.Second

// waitGrace is how long past its deadline a scrape waits for the collection to hand over its
// results; it stays within the margin scrapeTimeout keeps for encoding the answer.
const waitGrace = 200 * time.Millisecond

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

	group singleflight.Group

	mu        sync.Mutex
	deadlines map[uint64]time.Time // deadlines of scrapes in flight
	failing   map[string]string    // collector → last error logged
	nextID    uint64
	wasUp     bool
	upKnown   bool // a collection has connected or failed since start

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

	upDesc, staticDesc, durationDesc, successDesc *prometheus.Desc
	collectionsDesc, droppedDesc                  *prometheus.Desc
	dbSuccessDesc, dbDurationDesc                 *prometheus.Desc
	lastErrorDesc, lastDurationDesc, scrapesDesc  *prometheus.Desc
	duplicates, invalid                           atomic.Int64
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
	return e, nil
}

// newExporter builds an Exporter on a pgxpool (New gives it the manager's side pool) from a
// validated cfg.
func newExporter(p *pgxpool.Pool, poolName string, cfg Config, opts ...Option) (*Exporter, error) {
	e := &Exporter{
		cfg:       cfg,
		log:       slog.Default(),
		pool:      p,
		scrubErr:  func(err error) error { return err },
		deadlines: map[uint64]time.Time{},
		failing:   map[string]string{},
		wasUp:     true,
		upDesc: prometheus.NewDesc("pg_up", "1 if the last collection could connect to PostgreSQL and query it, else 0.",
			nil, prometheus.Labels{"pool": poolName}),
		staticDesc: desc("pg_static", "PostgreSQL server version; the value is always 1.", "version", "short_version"),
		durationDesc: desc("pg_scrape_collector_duration_seconds",
			"Time a collector took in the last collection.", "collector"),
		successDesc: desc("pg_scrape_collector_success",
			"1 if a collector succeeded in the last collection, 0 if it failed or ran out of time.", "collector"),
		collectionsDesc: desc("pgsidecar_collections_total",
			"Collections run against the database; concurrent scrapes share one."),
		droppedDesc: desc("pgsidecar_collector_dropped_series_total",
			"Samples dropped from collections, by reason (duplicate series, invalid label value).", "reason"),
		dbSuccessDesc: desc("pgsidecar_collector_database_success",
			"1 if the per-database collectors could read a database in the last collection, 0 if it refused the connection, failed or ran out of time.", "datname"),
		dbDurationDesc: desc("pgsidecar_collector_database_duration_seconds",
			"Time the per-database collectors took in a database in the last collection, connecting included.", "datname"),
		lastErrorDesc: desc("pg_exporter_last_scrape_error",
			"1 if the last collection could not reach the database or a collector failed in it, else 0."),
		lastDurationDesc: desc("pg_exporter_last_scrape_duration_seconds", "Duration of the last collection."),
		scrapesDesc:      desc("pg_exporter_scrapes_total", "Collections run against the database; concurrent scrapes share one."),
	}
	for _, o := range opts {
		o(e)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.databases, _ = parseDatabaseFilter(cfg.Databases) // checked by Validate
	e.side = newSidePool(p, cfg.DatabasesMaxIdle, cfg.DatabasesIdleTimeout)
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
	return e.custom.reload()
}

// Middleware passes each scrape's deadline (Prometheus' X-Prometheus-Scrape-Timeout-Seconds
// minus a margin, else Config.Timeout) to the collection that serves it. Wrap the /metrics
// handler with it.
func (e *Exporter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := scrapeTimeout(r.Header.Get(scrapeTimeoutHeader), e.cfg.Timeout)
		release := e.addDeadline(time.Now().Add(d))
		defer release()
		next.ServeHTTP(w, r)
	})
}

// scrapeTimeout turns the scrape timeout header into a collection budget: the header's value
// less a margin for encoding and sending the answer (half a second, or a fifth of short
// timeouts), or def when the header is missing or invalid.
func scrapeTimeout(header string, def time.Duration) time.Duration {
	if header == "" {
		return def
	}
	secs, err := strconv.ParseFloat(header, 64)
	if err != nil || secs <= 0 || math.IsInf(secs, 0) || math.IsNaN(secs) {
		return def
	}
	t := time.Duration(secs * float64(time.Second))
	return t - min(500*time.Millisecond, t/5)
}

func (e *Exporter) addDeadline(t time.Time) func() {
	e.mu.Lock()
	id := e.nextID
	e.nextID++
	e.deadlines[id] = t
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.deadlines, id)
		e.mu.Unlock()
	}
}

// deadline is the earliest deadline of the scrapes in flight, so a shared collection answers
// in time for each of them; without any, Config.Timeout from now.
func (e *Exporter) deadline() time.Time {
	d := time.Now().Add(e.cfg.Timeout)
	e.mu.Lock()
	for _, t := range e.deadlines {
		if t.Before(d) {
			d = t
		}
	}
	e.mu.Unlock()
	return d
}

// Describe sends nothing: the Exporter is an unchecked collector, since custom queries
// define their metrics at run time.
func (e *Exporter) Describe(chan<- *prometheus.Desc) {}

// Collect runs a collection, or joins the one already running, and sends its metrics.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	deadline := e.deadline()
	res := e.collectShared(deadline)
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
	if e.custom != nil {
		e.custom.collectOwn(ch)
	}
}

// collection is the result of one collection, shared by the scrapes that joined it.
type collection struct {
	metrics []prometheus.Metric
	// failed is set when the database was unreachable, a collector failed, or the scrape's
	// deadline passed before the collection finished.
	failed bool
}

func (e *Exporter) collectShared(deadline time.Time) *collection {
	e.waiting.Add(1)
	defer e.waiting.Add(-1)
	resc := e.group.DoChan("collect", func() (any, error) {
		e.wg.Add(1)
		defer e.wg.Done()
		ctx, cancel := context.WithDeadline(e.ctx, deadline)
		defer cancel()
		return e.collect(ctx), nil
	})
	// The collection itself stops at the deadline; allow it a moment to wrap up and answer.
	timer := time.NewTimer(time.Until(deadline) + waitGrace)
	defer timer.Stop()
	select {
	case r := <-resc:
		return r.Val.(*collection)
	case <-timer.C:
		// Joined a collection that started with a later deadline than ours: answer without it.
		return e.unfinished()
	}
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
func (e *Exporter) collect(ctx context.Context) *collection {
	start := time.Now()
	e.collections.Add(1)
	c := e.collectOnce(ctx)
	e.mu.Lock()
	e.lastDuration = time.Since(start).Seconds()
	e.mu.Unlock()
	return c
}

// collectOnce runs the collectors.
func (e *Exporter) collectOnce(ctx context.Context) *collection {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return e.failed(err)
	}
	var version int
	var full, short, configKey, current string
	err = conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, version(), "+
		"pg_conf_load_time()::text || ' ' || pg_backend_pid(), current_database()").Scan(&version, &full, &configKey, &current)
	if err != nil {
		conn.Release()
		return e.failed(err)
	}
	short = semver(version)
	e.noteUp(true, nil)
	var others []string
	if e.hasPerDatabase() && e.cfg.Discover {
		if others, err = e.otherDatabases(ctx, conn); err != nil {
			conn.Release()
			return e.failed(err)
		}
	}
	here := e.databases.match(current)

	s := newSink()
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
		wg.Go(func() { e.worker(ctx, first, version, configKey, here, s, queue, results) })
	}
	if workers == 0 {
		conn.Release()
	}
	wg.Wait()
	if e.hasPerDatabase() {
		e.collectDatabases(ctx, current, here, others, version, s, results)
	}

	s.add(e.upDesc, prometheus.GaugeValue, 1, nil)
	s.add(e.staticDesc, prometheus.UntypedValue, 1, []string{full, short}) // untyped, as postgres_exporter
	failed := false
	for i, c := range e.cols {
		r := results[i]
		success := 1.0
		if r.err != nil {
			success, failed = 0, true
		}
		e.noteCollector(c.name, r)
		s.add(e.durationDesc, prometheus.GaugeValue, r.dur.Seconds(), []string{c.name})
		s.add(e.successDesc, prometheus.GaugeValue, success, []string{c.name})
	}
	e.duplicates.Add(int64(s.duplicates))
	e.invalid.Add(int64(s.invalid))
	if s.invalid > 0 {
		e.log.Warn("Collection dropped invalid samples", "count", s.invalid, "error", e.errString(s.lastErr))
	}
	return &collection{metrics: s.metrics, failed: failed}
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
func (e *Exporter) worker(ctx context.Context, conn *pgxpool.Conn, version int, configKey string, here bool, s *sink,
	queue <-chan int, results []colResult) {
	defer func() {
		if conn != nil {
			conn.Release()
		}
	}()
	for i := range queue {
		if e.cols[i].perDatabase && !here {
			continue // --collector.databases leaves the connected database out
		}
		start := time.Now()
		if conn == nil {
			c, err := e.pool.Acquire(ctx)
			if err != nil {
				results[i] = colResult{dur: time.Since(start), err: err}
				continue
			}
			conn = c
		}
		err := e.runOne(ctx, e.cols[i].c, &Scrape{Conn: conn, Version: version, ConfigKey: configKey, sink: s})
		results[i] = colResult{dur: time.Since(start), err: err}
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
