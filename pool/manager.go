// Package pool is pgsidecar's pool manager: a warm pgxpool that connects in the background,
// retries with exponential backoff, checks its health, reconnects by itself, wraps transactions
// and batches, and measures every query through pgx's tracer interfaces.
//
// Go applications import it directly; the pgsidecar binary builds on it.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgsidecar/pgsidecar/internal/redact"
	"github.com/prometheus/client_golang/prometheus"
)

// Status is the pool's health as the health endpoints report it.
type Status string

// Health statuses. Degraded pools still serve queries: readiness probes pass for them.
const (
	StatusStarting  Status = "starting"
	StatusHealthy   Status = "healthy"
	StatusDegraded  Status = "degraded"
	StatusUnhealthy Status = "unhealthy"
)

// Option changes how New builds a Manager.
type Option func(*Manager)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithRegisterer registers the pool's metrics on r (default: none). Close unregisters them.
func WithRegisterer(r prometheus.Registerer) Option { return func(m *Manager) { m.reg = r } }

// Manager owns one pgxpool and everything around it. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	dsn     string // for scrubbing passwords out of error text
	log     *slog.Logger
	reg     prometheus.Registerer
	pool    *pgxpool.Pool
	tracer  *tracer
	metrics *metrics
	started time.Time

	closedConns atomic.Int64
	connErrSeen atomic.Bool // a connection error since the last good check
	fullSeen    atomic.Bool // the last check found the server full (53300) with connections kept
	trigger     chan struct{}
	ctx         context.Context // canceled by Close
	cancel      context.CancelFunc
	closeOnce   sync.Once
	wg          sync.WaitGroup

	mu        sync.Mutex
	health    Health
	slow      slowRing
	sidePools []*pgxpool.Pool
}

// New validates cfg, builds the pool and returns at once, also when the database is down: the
// pool connects and warms up in the background, retrying with backoff. Queries made before that
// wait for a connection like any other.
func New(cfg Config, opts ...Option) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := cfg.pgxConfig()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:     cfg,
		dsn:     cfg.DatabaseURL,
		log:     slog.Default(),
		started: time.Now(),
		trigger: make(chan struct{}, 1),
		health:  Health{Status: StatusStarting},
	}
	for _, o := range opts {
		o(m)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.log = m.log.With("pool", cfg.Name)
	m.tracer = &tracer{m: m}
	pc.ConnConfig.Tracer = acquireTracer{m.tracer}
	pc.BeforeClose = func(*pgx.Conn) { m.closedConns.Add(1) }
	// pgxpool keeps MinConns open (it tops the pool up in its background health check and
	// closes idle connections only down to MinConns); the manager's connect loop adds the
	// logged, backed-off first warm-up.
	m.metrics = newMetrics(m)
	m.pool, err = pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %s", cfg.Name, redact.Scrub(err.Error(), m.dsn))
	}
	if m.reg != nil {
		if err := m.reg.Register(m.metrics); err != nil {
			m.pool.Close()
			return nil, fmt.Errorf("pool %s: registering metrics: %w", cfg.Name, err)
		}
	}
	m.log.Info("Database pool created", "database", redact.DSN(cfg.DatabaseURL), "max_connections", cfg.MaxConns,
		"min_connections", cfg.MinConns)
	m.wg.Add(1)
	go m.run()
	if cfg.MetricsLogInterval > 0 {
		m.wg.Add(1)
		go m.logMetricsLoop()
	}
	return m, nil
}

// Pool returns the underlying pgxpool for queries. Queries through it are measured.
func (m *Manager) Pool() *pgxpool.Pool { return m.pool }

// Config returns the configuration the manager was built with.
func (m *Manager) Config() Config { return m.cfg }

// Name is the pool's name in metrics and logs.
func (m *Manager) Name() string { return m.cfg.Name }

// Close stops the background loops, closes every connection and unregisters the metrics. It
// waits for connections in use to be released.
func (m *Manager) Close() {
	m.closeOnce.Do(func() {
		m.cancel()
		m.wg.Wait()
		m.mu.Lock()
		side := m.sidePools
		m.mu.Unlock()
		for _, p := range side {
			p.Close()
		}
		m.pool.Close()
		if m.reg != nil {
			m.reg.Unregister(m.metrics)
		}
		m.log.Info("Database pool closed")
	})
}

// RecordQuery counts one query in the pool's metrics and logs it when slow. The tracer calls it
// for library traffic; other front ends (such as a protocol relay) call it for theirs.
func (m *Manager) RecordQuery(op Operation, sql string, d time.Duration, err error) {
	x := m.metrics
	x.queryObservers[op].Observe(d.Seconds())
	if err != nil {
		x.queryErrors.WithLabelValues(op.String(), SQLState(err)).Inc()
		m.noteError(err)
	}
	if d >= m.cfg.SlowQueryThreshold {
		x.slowQueries.Inc()
		text := truncateSQL(redact.SQLPasswords(redact.Scrub(sql, m.dsn)), 500)
		m.mu.Lock()
		m.slow.add(SlowQuery{Time: time.Now(), Duration: d, Operation: op.String(), SQL: text})
		m.mu.Unlock()
		m.log.Warn("Slow query detected", "duration", d, "operation", op.String(), "sql", text)
	}
}

// noteError marks the pool unhealthy at once when err is a connection-class error and asks the
// health loop to check now instead of at the next tick.
func (m *Manager) noteError(err error) {
	if !IsConnectionError(err) {
		return
	}
	if serverFull(err) {
		// The server answered, refusing a new connection: it is up. Let the check decide,
		// without marking down the connections the pool holds.
		select {
		case m.trigger <- struct{}{}:
		default:
		}
		return
	}
	if !m.connErrSeen.Swap(true) {
		m.metrics.healthUp.Set(0)
		m.mu.Lock()
		m.health.LastError = redact.Scrub(err.Error(), m.dsn)
		m.mu.Unlock()
	}
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// run connects (with backoff) and then checks health until Close.
func (m *Manager) run() {
	defer m.wg.Done()
	if !m.connect() {
		return
	}
	timer := time.NewTimer(m.cfg.HealthCheckInterval)
	defer timer.Stop()
	ok := true
	for {
		// While healthy, an error seen by a query triggers a check at once. While unhealthy the
		// loop rechecks on its own short timer; triggers then (many come from the failing check
		// itself) must not make it spin.
		trigger := m.trigger
		if !ok {
			trigger = nil
		}
		select {
		case <-m.ctx.Done():
			return
		case <-timer.C:
		case <-trigger:
		}
		ok = m.check()
		select {
		case <-m.trigger: // raised by this check or during it
		default:
		}
		next := m.cfg.HealthCheckInterval
		if m.fullSeen.Load() {
			next = min(next, time.Second)
		} else if !ok {
			// Look again soon so recovery is seen within about a second, backing off from 250 ms
			// to 1 s so a long outage (or a rotated password) costs the server one login a second.
			next = min(next, Backoff(m.Health().ConsecutiveFailures, 250*time.Millisecond, time.Second))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// connect warms MinConns connections (at least one), retrying with capped exponential backoff
// and jitter. It logs each failed attempt once with the delay before the next. It returns false
// when the manager was closed first.
func (m *Manager) connect() bool {
	m.awaitPoolWarmup()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.ConnectTimeout)
		res, err := m.warmup(ctx, max(int(m.cfg.MinConns), 1))
		cancel()
		if m.isClosed() {
			return false
		}
		if res.Ready > 0 || m.saturated() {
			// One working connection is enough to serve; the pool tops up the rest itself. A pool
			// whose every connection clients took already is connected too.
			pctx, pcancel := context.WithTimeout(m.ctx, m.cfg.HealthCheckTimeout)
			d, perr := m.ping(pctx)
			pcancel()
			if errors.Is(perr, errSaturated) {
				perr = nil // the connections are busy serving: the database answers
			}
			m.setHealth(perr == nil, d, perr)
			if perr == nil {
				m.log.Info("Database connected", "attempt", attempt, "connections_opened", res.Opened,
					"duration", res.Duration)
				if err != nil {
					m.log.Warn("Database warm-up incomplete", "ready", res.Ready, "wanted", res.Requested,
						"error", redact.Scrub(err.Error(), m.dsn))
				}
				return true
			}
			err = perr
		} else {
			m.setHealth(false, time.Since(start), err)
		}
		delay := Backoff(attempt, m.cfg.RetryDelay, m.cfg.RetryMaxDelay)
		if delay <= 0 {
			delay = 100 * time.Millisecond
		}
		m.log.Warn("Database connection failed", "attempt", attempt, "error", redact.Scrub(err.Error(), m.dsn),
			"next_attempt_in", delay)
		if sleep(m.ctx, delay) != nil {
			return false
		}
	}
}

// awaitPoolWarmup lets pgxpool's own start-up creation of MinConns connections finish before the
// connect loop acquires any: acquiring while they are still being opened would open more.
func (m *Manager) awaitPoolWarmup() {
	start := time.Now()
	for time.Since(start) < m.cfg.ConnectTimeout && !m.isClosed() {
		s := m.pool.Stat()
		// Done once nothing is being opened and pgxpool has tried all of them (NewConnsCount
		// counts attempts as they start), or it has had ample time to begin.
		if s.ConstructingConns() == 0 && (s.NewConnsCount() >= int64(m.cfg.MinConns) || time.Since(start) > 250*time.Millisecond) {
			return
		}
		_ = sleep(m.ctx, 10*time.Millisecond)
	}
}

// check pings through the pool and records the result. On the first failure it drops every
// pooled connection (they are most likely dead); on recovery it warms the pool again.
func (m *Manager) check() bool {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HealthCheckTimeout)
	defer cancel()
	d, err := m.ping(ctx)
	if errors.Is(err, context.Canceled) && m.isClosed() {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		// A bare "context deadline exceeded" in /api/database/health and the logs says nothing.
		err = fmt.Errorf("no answer within DB_HEALTH_CHECK_TIMEOUT (%s): %w", m.cfg.HealthCheckTimeout, err)
	}
	if serverFull(err) && !m.connErrSeen.Load() && m.holdsOpenConns() {
		// The server refused a new connection for lack of slots (max_connections reached) but
		// the pool still holds open connections (not merely ones being opened), which work:
		// keep them, since once closed they may not be had again while the server is full.
		// Health() reports degraded. Returning false keeps the loop on its own one-second
		// recheck: every refused acquire triggers a check, and each check is a login.
		m.setServerFull(d, err)
		if !m.fullSeen.Swap(true) {
			m.log.Warn("Database health check: the server refuses new connections; keeping the pool's",
				"status", StatusDegraded, "error", redact.Scrub(err.Error(), m.dsn))
		}
		return false
	}
	if m.fullSeen.Swap(false) && err == nil {
		m.log.Info("Database accepts new connections again")
	}
	if errors.Is(err, errSaturated) {
		// Every connection is busy serving queries: the database answers, the pool is full.
		// Health() reports that as degraded; it is no reason to drop connections.
		m.log.Debug("Database health check skipped: every pool connection is in use")
		return !m.connErrSeen.Load()
	}
	m.mu.Lock()
	wasUp := m.health.Status == StatusHealthy || m.health.Status == StatusDegraded
	failures := m.health.ConsecutiveFailures
	m.mu.Unlock()

	m.setHealth(err == nil, d, err)
	st := m.Health()
	switch {
	case err == nil && !wasUp:
		m.metrics.reconnects.Inc()
		m.log.Info("Database health check", "status", st.Status, "latency", d, "recovered_after_failures", failures)
		m.log.Info("Database reconnected")
		m.wg.Add(1)
		go m.rewarm()
	case err == nil:
		m.log.Info("Database health check", "status", st.Status, "latency", d)
	case wasUp:
		m.pool.Reset()
		m.log.Warn("Database health check", "status", st.Status, "latency", d, "error", st.LastError)
	case st.ConsecutiveFailures%max(int(m.cfg.HealthCheckInterval/(250*time.Millisecond)), 1) == 0:
		// Still down: remind once per health interval rather than on every quick recheck.
		m.log.Warn("Database health check", "status", st.Status, "consecutive_failures", st.ConsecutiveFailures,
			"error", st.LastError)
	}
	return err == nil
}

// ping checks one pooled connection. The latency it returns is the round trip alone when a
// connection was at hand, so that opening a connection after a restart does not read as a slow
// (degraded) server; on failure it is the time until the failure.
func (m *Manager) ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if m.saturated() && !m.connErrSeen.Load() {
		return 0, errSaturated
	}
	c, err := m.pool.Acquire(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && m.saturated() {
			return time.Since(start), errSaturated
		}
		return time.Since(start), err
	}
	defer c.Release()
	start = time.Now()
	err = c.Ping(ctx)
	return time.Since(start), err
}

// errSaturated is what ping reports when it could not get a connection because all are in use.
var errSaturated = errors.New("every pool connection is in use")

// saturated reports whether every connection the pool may open is handed out (connections
// still being opened do not count: they say nothing about a busy pool).
func (m *Manager) saturated() bool {
	s := m.pool.Stat()
	return s.AcquiredConns() >= s.MaxConns()
}

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
	// opening: when it gave up, the pool had room, so the wait was for a new connection to
	// open (a slow or unreachable server), not for a busy one to come back.
	opening atomic.Bool
}

// withAcquireLimit returns ctx carrying a new limit of wait for each acquire made with it (or
// with a context derived from it, unless that carries a limit of its own).
func withAcquireLimit(ctx context.Context, wait time.Duration, setting string) (context.Context, *acquireLimit) {
	l := &acquireLimit{wait: wait, setting: setting}
	return context.WithValue(ctx, acquireLimitKey{}, l), l
}

// errAcquireLimit is the cause of an acquire's context that ran out of its acquireLimit.
var errAcquireLimit = errors.New("pool acquire limit reached")

// explain turns err, the outcome of work done under l, into the acquire-timeout error when an
// acquire under l gave up on l's bound and err is that acquire's deadline error. When ctx (the
// caller's) is done, err stays as it is: the caller ended the wait.
func (l *acquireLimit) explain(ctx context.Context, err error) error {
	if err == nil || !l.timedOut.Load() || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if l.opening.Load() {
		return fmt.Errorf("%w: no connection could be opened to the database within %s (%s)", ErrAcquireTimeout, l.setting, l.wait)
	}
	return fmt.Errorf("%w: the pool had no free connection within %s (%s)", ErrAcquireTimeout, l.setting, l.wait)
}

// acquire takes a connection from the pool, waiting at most wait (set by setting) for a free one,
// or less when ctx ends first. Only the wait is bounded: the connection is the caller's to use
// with ctx.
func (m *Manager) acquire(ctx context.Context, wait time.Duration, setting string) (*pgxpool.Conn, error) {
	actx, l := withAcquireLimit(ctx, wait, setting)
	c, err := m.pool.Acquire(actx)
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
			st := p.Stat()
			a.limit.opening.Store(st.AcquiredConns() < st.MaxConns())
			a.limit.timedOut.Store(true)
		}
		a.cancel()
		ctx = a.inner
	}
	t.tracer.TraceAcquireEnd(ctx, p, d)
}

func (m *Manager) rewarm() {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.ConnectTimeout)
	defer cancel()
	if _, err := m.warmup(ctx, int(m.cfg.MinConns)); err != nil && !m.isClosed() {
		m.log.Warn("Database warm-up after reconnect incomplete", "error", redact.Scrub(err.Error(), m.dsn))
	}
}

func (m *Manager) isClosed() bool { return m.ctx.Err() != nil }

func (m *Manager) setHealth(ok bool, d time.Duration, err error) {
	m.metrics.healthDuration.Set(d.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	h := &m.health
	h.LastCheck = time.Now()
	h.Latency = d
	if ok {
		m.connErrSeen.Store(false)
		h.ConsecutiveFailures = 0
		h.LastError, h.LastErrorCode = "", ""
		h.Status = StatusHealthy
		if d >= m.cfg.SlowQueryThreshold {
			h.Status = StatusDegraded
		}
		m.metrics.healthUp.Set(1)
		return
	}
	h.ConsecutiveFailures++
	h.TotalFailures++
	h.Status = StatusUnhealthy
	if err != nil {
		h.LastError = redact.Scrub(err.Error(), m.dsn)
		h.LastErrorCode = SQLState(err)
	}
	m.metrics.healthUp.Set(0)
	m.metrics.healthFailures.Inc()
}

// holdsOpenConns reports whether the pool has connections open, idle or in use; connections
// still being opened do not count.
func (m *Manager) holdsOpenConns() bool {
	s := m.pool.Stat()
	return s.IdleConns()+s.AcquiredConns() > 0
}

// setServerFull records a check that could not open a connection because the server is full,
// while the pool's own connections remain: degraded, with the server's error.
func (m *Manager) setServerFull(d time.Duration, err error) {
	m.metrics.healthDuration.Set(d.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	h := &m.health
	h.LastCheck, h.Latency = time.Now(), d
	h.Status = StatusDegraded
	h.LastError, h.LastErrorCode = redact.Scrub(err.Error(), m.dsn), SQLState(err)
	m.metrics.healthUp.Set(1)
}

// serverFull reports whether err is the server refusing a connection for lack of resources
// (SQLSTATE class 53, such as 53300 too_many_connections).
func serverFull(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "53")
}

// Health is the result of the latest health check.
type Health struct {
	Status              Status
	LastCheck           time.Time     // zero before the first check
	Latency             time.Duration // of the last check
	ConsecutiveFailures int
	TotalFailures       int
	LastError           string // scrubbed of passwords; empty when healthy
	LastErrorCode       string // LastError as SQLState labels it: the server's SQLSTATE (53300), 08006, timeout, ...
}

// Health returns the current health. A connection error seen by any query since the last
// successful check makes it unhealthy at once; a saturated pool (every connection in use and
// callers waiting) makes a healthy pool degraded.
func (m *Manager) Health() Health {
	m.mu.Lock()
	h := m.health
	m.mu.Unlock()
	if m.connErrSeen.Load() {
		h.Status = StatusUnhealthy
	}
	if h.Status == StatusHealthy {
		s := m.pool.Stat()
		if s.AcquiredConns() >= s.MaxConns() && m.tracer.pending.Load() > 0 {
			h.Status = StatusDegraded
		}
	}
	return h
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
	SQL       string // whitespace collapsed and truncated; never argument values
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

// WarmupResult says what a warm-up did.
type WarmupResult struct {
	Requested int           // connections asked for
	Ready     int           // connections that answered a ping
	Opened    int64         // new connections opened to reach it
	Total     int32         // connections in the pool afterwards
	Duration  time.Duration // time taken
}

// Warmup makes sure at least n connections are open and answer a ping, opening new ones as
// needed. n must be between 0 and the pool's maximum. Each acquire waits at most
// DB_CONNECTION_TIMEOUT for a free connection.
func (m *Manager) Warmup(ctx context.Context, n int) (WarmupResult, error) {
	if n < 0 || n > int(m.cfg.MaxConns) {
		return WarmupResult{}, fmt.Errorf("warm-up connections (%d) must be between 0 and DB_MAX_CONNECTIONS (%d)", n, m.cfg.MaxConns)
	}
	return m.warmup(ctx, n)
}

func (m *Manager) warmup(ctx context.Context, n int) (WarmupResult, error) {
	start := time.Now()
	before := m.pool.Stat().NewConnsCount()
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := m.acquire(ctx, m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT")
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			errs[i] = c.Ping(ctx)
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	res := WarmupResult{Requested: n, Opened: m.pool.Stat().NewConnsCount() - before,
		Total: m.pool.Stat().TotalConns(), Duration: time.Since(start)}
	for i, c := range conns {
		if c != nil && errs[i] == nil {
			res.Ready++
		}
	}
	if err := firstError(errs); err != nil {
		return res, &scrubbedError{msg: redact.Scrub(err.Error(), m.dsn), err: err}
	}
	return res, nil
}

// scrubbedError shows an error's text without the DSN's password but keeps the error itself
// for errors.As, so that SQLState still finds the server's code (53300, 28P01, ...).
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

func firstError(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// logMetricsLoop writes the seed's periodic "Database pool metrics" line, with the pool's
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

// Backoff returns the delay before retry number attempt (1-based): base doubled per attempt,
// capped at maxDelay, with "equal jitter" so the result lies in [d/2, d]. Spreading retries
// keeps many clients from hitting a recovering server at the same instant.
func Backoff(attempt int, base, maxDelay time.Duration) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < attempt && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
}
