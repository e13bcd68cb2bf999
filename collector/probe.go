package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/internal/redact"
)

// Multi-target probing: postgres_exporter's /probe?target=…&auth_module=…, for one pgsidecar
// watching servers it is not the sidecar of. Each target gets an Exporter of its own, on a small
// pool of its own, kept between probes so that they reuse its connections and its collection
// (concurrent probes of one target share one, as scrapes of /metrics do).

// ProbeOptions bound the probing.
type ProbeOptions struct {
	// MaxTargets caps the targets kept at once, each with its collectors' pool (at most
	// Config.MaxConns connections). A probe of a new target past it closes the least recently
	// probed one that no probe is reading; when every one is being read, it is refused.
	MaxTargets int
	// IdleTimeout closes a target, and its connections, unprobed for this long.
	IdleTimeout time.Duration
}

// Prober serves /probe. Build it with NewProber and close it with Close.
type Prober struct {
	cfg  Config
	opts ProbeOptions
	log  *slog.Logger
	file string

	mu      sync.Mutex
	modules *ProbeConfig
	targets map[string]*probed
	closed  bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// probed is a target's exporter and pool.
type probed struct {
	key      string
	e        *Exporter
	pool     *pgxpool.Pool
	handler  http.Handler
	inUse    int
	lastUsed time.Time
	retired  bool // out of the map: closed once its last probe ends
}

// NewProber reads the probe configuration file and returns a Prober running cfg's collectors
// (in the connected database only, whatever cfg's scope and discovery say) against the
// targets of its probes.
func NewProber(file string, cfg Config, opts ProbeOptions, log *slog.Logger) (*Prober, error) {
	if opts.MaxTargets < 1 {
		return nil, fmt.Errorf("--probe.max-targets (%d) must be at least 1", opts.MaxTargets)
	}
	if opts.IdleTimeout <= 0 {
		return nil, fmt.Errorf("--probe.idle-timeout (%s) must be greater than 0", opts.IdleTimeout)
	}
	cfg.Scope, cfg.Discover = ScopeAll, false
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mods, err := LoadProbeConfig(file)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	for _, name := range mods.moduleNames() {
		if len(mods.AuthModules[name].allow) == 0 {
			log.Warn("An auth module without targets may be probed against any host this process reaches", "auth_module", name)
		}
	}
	p := &Prober{cfg: cfg, opts: opts, log: log, file: file, modules: mods, targets: map[string]*probed{}, stop: make(chan struct{})}
	p.wg.Go(p.closeIdle)
	return p, nil
}

// errTooManyTargets refuses a probe of a new target while every kept one is being probed.
var errTooManyTargets = errors.New("too many targets are being probed at once (--probe.max-targets)")

// ServeHTTP answers one probe: the target's metrics, in the format and with the scrape deadline
// of a /metrics scrape.
func (p *Prober) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	t, err := parseProbeTarget(q.Get("target"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	name := q.Get("auth_module")
	p.mu.Lock()
	mods := p.modules
	p.mu.Unlock()
	m, ok := mods.AuthModules[name]
	switch {
	case name == "":
		http.Error(w, "the auth_module parameter is missing", http.StatusBadRequest)
		return
	case !ok:
		http.Error(w, fmt.Sprintf("auth_module %s is not in the probe configuration file", strconv.Quote(truncate(name, 64))),
			http.StatusBadRequest)
		return
	case !m.allows(t.host, t.port):
		http.Error(w, fmt.Sprintf("auth_module %s does not allow target %s", strconv.Quote(name), strconv.Quote(t.String())),
			http.StatusForbidden)
		return
	}
	pt, err := p.acquire(name, m, t)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer p.release(pt)
	pt.handler.ServeHTTP(w, r)
}

// truncate cuts s to n bytes, for echoing a client's value.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// acquire returns the target's exporter, building it (and evicting the least recently probed
// idle target if the cap is reached) when it is not kept yet.
func (p *Prober) acquire(module string, m *AuthModule, t probeTarget) (*probed, error) {
	key := module + "\x00" + t.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("shutting down")
	}
	if pt, ok := p.targets[key]; ok {
		pt.inUse++
		pt.lastUsed = time.Now()
		return pt, nil
	}
	if len(p.targets) >= p.opts.MaxTargets {
		var lru *probed
		for _, pt := range p.targets {
			if pt.inUse == 0 && (lru == nil || pt.lastUsed.Before(lru.lastUsed)) {
				lru = pt
			}
		}
		if lru == nil {
			return nil, errTooManyTargets
		}
		p.retire(lru)
	}
	pt, err := p.open(key, module, m, t)
	if err != nil {
		return nil, err
	}
	pt.inUse, pt.lastUsed = 1, time.Now()
	p.targets[key] = pt
	return pt, nil
}

// open builds a target's pool and exporter. The pool connects on the first probe, not here.
func (p *Prober) open(key, module string, m *AuthModule, t probeTarget) (*probed, error) {
	pc, err := pgxpool.ParseConfig(m.connString(t))
	if err != nil {
		return nil, fmt.Errorf("auth_module %q: %s", module, redact.Scrub(err.Error()))
	}
	// The module's password, or none: never one pgx would take from the environment or a
	// passfile, which belong to this process's own database.
	pc.ConnConfig.Password = m.password
	pc.MaxConns, pc.MinConns = p.cfg.MaxConns, 0
	pc.MaxConnIdleTime = p.opts.IdleTimeout
	pc.HealthCheckPeriod = min(p.opts.IdleTimeout, time.Minute)
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = p.cfg.Timeout
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "pgsidecar-probe"
	statement := "SET statement_timeout = " + strconv.FormatInt(p.cfg.Timeout.Milliseconds(), 10)
	lock := "SET lock_timeout = " + strconv.FormatInt(max(lockTimeout(p.cfg.Timeout).Milliseconds(), 1), 10)
	pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		for _, set := range []string{statement, lock} {
			if _, err := c.Exec(ctx, set); err != nil {
				return err
			}
		}
		return nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("auth_module %q: %s", module, redact.Scrub(err.Error()))
	}
	scrub := redact.NewScrubber()
	scrub.AddPassword(m.password)
	log := p.log.With("target", t.String(), "auth_module", module)
	e, err := newExporter(pool, "", p.cfg, WithLogger(log))
	if err != nil {
		pool.Close()
		return nil, err
	}
	e.scrubErr = func(err error) error {
		if err == nil {
			return nil
		}
		return errors.New(scrub.Scrub(err.Error()))
	}
	if e.custom != nil {
		e.custom.scrub = e.errString
	}
	// pg_up of a probe has no pool label: the target is the instance Prometheus' relabelling gives.
	e.upDesc = prometheus.NewDesc("pg_up", "1 if the last collection could connect to PostgreSQL and query it, else 0.", nil, nil)
	reg := prometheus.NewRegistry()
	// pgsidecar_build_info beside the target's series: the rules join every pg_* series with it
	// (to keep postgres_exporter's out), so the PostgreSQL alerts cover probed servers too.
	reg.MustRegister(versioncollector.NewCollector("pgsidecar"))
	if err := reg.Register(e); err != nil {
		e.Close()
		pool.Close()
		return nil, err
	}
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, EnableOpenMetrics: true})
	return &probed{key: key, e: e, pool: pool, handler: e.Middleware(h)}, nil
}

// release ends a probe of pt; a target retired meanwhile is closed by its last probe.
func (p *Prober) release(pt *probed) {
	p.mu.Lock()
	pt.inUse--
	pt.lastUsed = time.Now()
	closeNow := pt.retired && pt.inUse == 0
	p.mu.Unlock()
	if closeNow {
		p.closeTarget(pt)
	}
}

// retire takes pt out of the kept targets (p.mu held); it is closed now if no probe reads it,
// else by the last one.
func (p *Prober) retire(pt *probed) {
	delete(p.targets, pt.key)
	pt.retired = true
	if pt.inUse == 0 {
		p.wg.Go(func() { p.closeTarget(pt) })
	}
}

func (p *Prober) closeTarget(pt *probed) {
	pt.e.Close()
	pt.pool.Close()
}

// closeIdle closes the targets unprobed for IdleTimeout.
func (p *Prober) closeIdle() {
	every := max(min(p.opts.IdleTimeout/4, 15*time.Second), 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		for _, pt := range p.targets {
			if pt.inUse == 0 && time.Since(pt.lastUsed) >= p.opts.IdleTimeout {
				p.retire(pt)
			}
		}
		p.mu.Unlock()
	}
}

// Targets is how many targets are kept, with their pools.
func (p *Prober) Targets() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.targets)
}

// Connections is how many connections the kept targets' pools hold now.
func (p *Prober) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pt := range p.targets {
		n += int(pt.pool.Stat().TotalConns())
	}
	return n
}

// Reload reads the probe configuration file again. On success every kept target is closed
// (once its probes end), so the next probes log in with the new credentials and read the
// queries file again; on error the previous configuration stays.
func (p *Prober) Reload() error {
	mods, err := LoadProbeConfig(p.file)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.modules = mods
	for _, pt := range p.targets {
		p.retire(pt)
	}
	return nil
}

// Close closes every target and stops closing idle ones; probes still running end first.
func (p *Prober) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	for _, pt := range p.targets {
		p.retire(pt)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
