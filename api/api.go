// Package api serves pgsidecar's JSON endpoints (the seed's /api/database/*), the Kubernetes
// probes /healthz and /readyz, and the live /status page.
//
// Pool-side figures come from the Manager's in-memory snapshots; PostgreSQL-side figures come
// from the Prometheus registry the collectors fill. The package never queries the database
// itself, except for the warm-up endpoint, whose job is to open connections.
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Options configure a Handler.
type Options struct {
	// Manager is the pool the endpoints describe. Required.
	Manager *pool.Manager
	// Gatherer holds the collectors' pg_* metrics (usually the binary's registry). Nil means
	// no PostgreSQL-side figures: those fields are null.
	Gatherer prometheus.Gatherer
	// Logger receives the few log lines the API writes (default: slog.Default()).
	Logger *slog.Logger
	// StreamInterval is the time between two live-metrics events (default 1s).
	StreamInterval time.Duration
	// Window is the span of the "recent" latency and error figures of live-metrics
	// (default 10s).
	Window time.Duration
	// MaxStreams caps concurrent live-metrics streams; more get 503 (default 64).
	MaxStreams int
	// GatherMaxAge is how long one read of the collectors' metrics is reused, so that a
	// dashboard polling detailed-metrics does not run the catalog queries on every request
	// (default 5s).
	GatherMaxAge time.Duration
}

// Handler serves the API. Close ends the open live-metrics streams; call it at shutdown
// before the HTTP server waits for requests to finish.
type Handler struct {
	mgr      *pool.Manager
	gatherer prometheus.Gatherer
	log      *slog.Logger
	interval time.Duration
	window   *window
	streams  chan struct{} // semaphore of open streams
	maxAge   time.Duration

	gatherMu sync.Mutex
	gathered *registrySnapshot // the last read of the registry, reused for maxAge

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // open streams
}

// New builds a Handler.
func New(o Options) *Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StreamInterval <= 0 {
		o.StreamInterval = time.Second
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 64
	}
	if o.GatherMaxAge <= 0 {
		o.GatherMaxAge = 5 * time.Second
	}
	h := &Handler{
		mgr:      o.Manager,
		gatherer: o.Gatherer,
		log:      o.Logger,
		interval: o.StreamInterval,
		window:   newWindow(o.Window),
		streams:  make(chan struct{}, o.MaxStreams),
		maxAge:   o.GatherMaxAge,
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h
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
	mux.Handle("/api/database/live-metrics", get(h.liveMetrics))
	mux.Handle("/api/database/warmup", only(http.MethodPost, h.warmup))
	mux.Handle("/api/", http.HandlerFunc(notFound))
	mux.Handle("/healthz", get(h.healthz))
	mux.Handle("/readyz", get(h.readyz))
	mux.Handle("/status", get(h.statusPage))
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
