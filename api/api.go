// Package api serves pgsidecar's JSON endpoints (/api/database/*), the Kubernetes
// probes /healthz and /readyz, and the live /status page.
//
// Pool-side figures come from the Manager's in-memory snapshots; PostgreSQL-side figures come
// from the Prometheus registry the collectors fill. The package never queries the database
// itself, except for the warm-up endpoint, whose job is to open connections.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/settings"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Config configures a Handler. Start from DefaultConfig.
type Config struct {
	// Enabled tells the binary whether to serve the API at all (--web.enable-api); New does not
	// look at it.
	Enabled bool
	// StreamInterval is the time between two live-metrics events.
	StreamInterval time.Duration
	// Window is the span of the "recent" latency and error figures of live-metrics.
	Window time.Duration
	// MaxStreams caps concurrent live-metrics streams; more get 503.
	MaxStreams int
	// GatherMaxAge is how long one read of the collectors' metrics is reused, so that a
	// dashboard polling detailed-metrics does not run the catalog queries on every request.
	GatherMaxAge time.Duration
	// ProbeListenAddress, when set, also serves /healthz and /readyz, and nothing else, on
	// this address in plain HTTP without basic auth: probes that send no credentials
	// (Kubernetes httpGet) keep working when --web.config.file turns auth on.
	ProbeListenAddress string
	// EnableAdmin tells the binary to mount the proxy's admin endpoints (RegisterAdmin):
	// --web.enable-admin.
	EnableAdmin bool
}

// Setting describes one API setting: its flag, its environment variable, its default and its
// meaning.
type Setting = settings.Setting[Config]

// Settings lists every API setting in the order they are documented.
func Settings() []Setting {
	return []Setting{
		{Flag: "web.enable-api", Env: "PGSIDECAR_WEB_ENABLE_API", Default: "true", Bool: true,
			Help: "Serve /api/database/*, /healthz, /readyz and the /status page.",
			Set:  settings.Bool("--web.enable-api", func(c *Config) *bool { return &c.Enabled })},
		{Flag: "web.probe-listen-address", Env: "PGSIDECAR_WEB_PROBE_LISTEN_ADDRESS", Default: "", PlaceHolder: "ADDRESS",
			Help: "Also serve /healthz and /readyz, and nothing else, on this address (such as :9189), in plain HTTP without --web.config.file's TLS and basic auth, for probes that cannot send credentials (Kubernetes httpGet); empty serves them only on --web.listen-address. They reveal only whether the process is up and the pool ready.",
			Set:  settings.String(func(c *Config) *string { return &c.ProbeListenAddress })},
		{Flag: "web.enable-admin", Env: "PGSIDECAR_WEB_ENABLE_ADMIN", Default: "false", Bool: true,
			Help: "Serve the proxy's admin endpoints POST /api/proxy/pause, /api/proxy/resume and /api/proxy/reconnect (needs --web.enable-api). They are behind --web.config.file's authentication; without basic_auth_users or required client certificates there, they answer only requests to a loopback address.",
			Set:  settings.Bool("--web.enable-admin", func(c *Config) *bool { return &c.EnableAdmin })},
	}
}

// DefaultConfig returns the defaults of Settings, with a live-metrics event every second over a
// 10s window, at most 64 streams, and the collectors' metrics reused for 5s.
func DefaultConfig() Config {
	c := Config{StreamInterval: time.Second, Window: 10 * time.Second, MaxStreams: 64, GatherMaxAge: 5 * time.Second}
	if err := settings.Apply(&c, Settings()); err != nil {
		panic("api: " + err.Error())
	}
	return c
}

// Validate rejects values that cannot work. Its errors name the field and the value.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"StreamInterval", c.StreamInterval}, {"Window", c.Window}, {"GatherMaxAge", c.GatherMaxAge}} {
		if d.d <= 0 {
			add("api %s (%s) must be greater than 0", d.name, d.d)
		}
	}
	if c.MaxStreams < 1 {
		add("api MaxStreams (%d) must be at least 1", c.MaxStreams)
	}
	return errors.Join(errs...)
}

// Option changes how New builds a Handler.
type Option func(*Handler)

// WithLogger sets the logger of the few lines the API writes (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(h *Handler) { h.log = l } }

// WithGatherer reads the collectors' pg_* metrics from g (usually the binary's registry).
// Without it the PostgreSQL-side figures are null.
func WithGatherer(g prometheus.Gatherer) Option { return func(h *Handler) { h.gatherer = g } }

// Handler serves the API. Close ends the open live-metrics streams; call it at shutdown
// before the HTTP server waits for requests to finish.
type Handler struct {
	mgr       *pool.Manager
	gatherer  prometheus.Gatherer
	log       *slog.Logger
	interval  time.Duration
	window    *window
	streams   chan struct{} // semaphore of open streams
	maxAge    time.Duration
	readiness func() Readiness

	gatherMu sync.Mutex
	gathered *registrySnapshot // the last read of the registry, reused for maxAge

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // open streams
}

// New checks cfg and builds a Handler on mgr's pool.
func New(mgr *pool.Manager, cfg Config, opts ...Option) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Handler{
		mgr:      mgr,
		log:      slog.Default(),
		interval: cfg.StreamInterval,
		window:   newWindow(cfg.Window),
		streams:  make(chan struct{}, cfg.MaxStreams),
		maxAge:   cfg.GatherMaxAge,
	}
	for _, o := range opts {
		o(h)
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h, nil
}

// Close ends every live-metrics stream and waits for their handlers to return. New streams
// are refused afterwards.
func (h *Handler) Close() {
	h.mu.Lock()
	h.closed = true
	h.cancel()
	h.mu.Unlock()
	h.wg.Wait()
}

// Register mounts every endpoint on mux. Method checks are done here rather than in the mux
// patterns so that 405 answers are JSON like every other error.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle("/api/database/metrics", get(h.metrics))
	mux.Handle("/api/database/detailed-metrics", get(h.detailedMetrics))
	mux.Handle("/api/database/health", get(h.health))
	mux.Handle("/api/database/performance", get(h.performance))
	mux.Handle("/api/database/statements", get(h.statementDetail))
	mux.Handle("/api/database/live-metrics", get(h.liveMetrics))
	mux.Handle("/api/database/warmup", only(http.MethodPost, h.warmup))
	mux.Handle("/api/", http.HandlerFunc(notFound))
	mux.Handle("/api/proxy/", http.HandlerFunc(adminOff)) // RegisterAdmin's paths take precedence
	mux.Handle("/healthz", get(h.healthz))
	mux.Handle("/readyz", get(h.readyz))
	mux.Handle("/status", get(h.statusPage))
}

// RegisterProbes mounts only the probes, /healthz and /readyz, on mux: for a listener of their
// own without authentication (Config.ProbeListenAddress).
func (h *Handler) RegisterProbes(mux *http.ServeMux) {
	mux.Handle("/healthz", get(h.healthz))
	mux.Handle("/readyz", get(h.readyz))
}

// get allows GET and HEAD.
func get(f http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, r, "GET, HEAD")
			return
		}
		f(w, r)
	})
}

func only(method string, f http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			methodNotAllowed(w, r, method)
			return
		}
		f(w, r)
	})
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; use "+strings.ReplaceAll(allow, ", ", " or "))
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
}

// errorBody is the body of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // SQL text stays readable; nosniff keeps browsers from sniffing HTML
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
