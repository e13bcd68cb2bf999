// Package pool is pgsidecar's pool manager: a warm pgxpool that connects in the background,
// retries with exponential backoff, checks its health, reconnects by itself, wraps transactions
// and batches, and measures every query through pgx's tracer interfaces.
//
// Go applications import it directly; the pgsidecar binary builds on it.
package pool

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/redact"
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
	scrub   *redact.Scrubber // the DSN's passwords, kept out of errors and logs
	log     *slog.Logger
	reg     prometheus.Registerer
	pool    *pgxpool.Pool
	tracer  *tracer
	metrics *metrics
	started time.Time

	closedConns atomic.Int64
	connErrSeen atomic.Bool // a query saw a connection error since the last good check
	fullSeen    atomic.Bool // the last check found the server full (53300) with connections kept
	// okAtFailure is succeededQueries at the last failed check. A check that cannot ping
	// because callers hold every connection reads recovery from the difference.
	okAtFailure atomic.Uint64
	trigger     chan struct{}
	ctx         context.Context // canceled by Close
	cancel      context.CancelFunc
	closeOnce   sync.Once
	wg          sync.WaitGroup

	// password is what new connections log in with once ReloadPassword has run (nil: the
	// one DATABASE_URL gave at New); passwordMu serialises reloads.
	password   atomic.Pointer[string]
	passwordMu sync.Mutex

	mu        sync.Mutex
	health    Health
	slow      slowRing
	sidePools []*pgxpool.Pool
}

// New validates cfg, builds the pool and returns at once, also when the database is down: the
// pool connects and warms up in the background, retrying with backoff. Queries made before that
// wait for a connection like any other.
func New(cfg Config, opts ...Option) (*Manager, error) {
	scrub := redact.NewScrubber(cfg.DatabaseURL)
	if err := cfg.Validate(); err != nil {
		return nil, scrubbed(scrub, err)
	}
	pc, err := cfg.pgxConfig()
	if err != nil {
		return nil, scrubbed(scrub, err)
	}
	m := &Manager{
		cfg:     cfg,
		scrub:   scrub,
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
	m.metrics = newMetrics(cfg.Name, m.snapshot)
	if cfg.StatementsTop > 0 {
		m.metrics.stmts = newStatements(prometheus.Labels{"pool": cfg.Name}, cfg, m.scrub.Scrub)
	}
	m.tracer = &tracer{metrics: m.metrics, recordQuery: m.recordTraced, noteError: m.noteError, checkNow: m.checkNow}
	pc.ConnConfig.Tracer = acquireTracer{m.tracer}
	pc.BeforeClose = func(*pgx.Conn) { m.closedConns.Add(1) }
	m.usePassword(pc)
	// pgxpool keeps MinConns open (it tops the pool up in its background health check and
	// closes idle connections only down to MinConns); the manager's connect loop adds the
	// logged, backed-off first warm-up.
	m.pool, err = pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, m.scrubbed(fmt.Errorf("pool %s: %w", cfg.Name, err))
	}
	if m.reg != nil {
		if err := m.reg.Register(m.metrics); err != nil {
			m.pool.Close()
			return nil, m.scrubbed(fmt.Errorf("pool %s: registering metrics: %w", cfg.Name, err))
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

// Pool returns the underlying pgxpool for queries. Queries through it are measured. Acquire
// connections with its Acquire (or the helpers that use it), not AcquireAllIdle, and give them
// back with Release, not Hijack: pgxpool traces neither, and the pool counts the connections
// callers hold to tell a busy pool from a database that does not answer.
func (m *Manager) Pool() *pgxpool.Pool { return m.pool }

// Config returns the configuration the manager was built with, its DatabaseURL with the
// password masked (xxxxx): the password stays inside the pool.
func (m *Manager) Config() Config {
	c := m.cfg
	c.DatabaseURL = redact.DSN(c.DatabaseURL)
	return c
}

// Name is the pool's name in metrics and logs.
func (m *Manager) Name() string { return m.cfg.Name }

// Database is the name of the database the pool connects to, as DATABASE_URL (or the
// environment's PGDATABASE) gives it. Callers that need only that do not have to read it from
// Pool().Config(), which also holds the password.
func (m *Manager) Database() string { return m.pool.Config().ConnConfig.Database }

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

func (m *Manager) isClosed() bool { return m.ctx.Err() != nil }
