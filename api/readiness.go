package api

import "net/http"

// Readiness is what, besides the pool's health, decides /readyz: the binary's drain at
// shutdown and the proxy's pause.
type Readiness struct {
	// Draining: the process got SIGTERM and waits for its clients to leave; not ready, so that
	// no new traffic is routed to it.
	Draining bool
	// Paused: the proxy holds new transactions for a planned database restart. Ready whatever
	// the pool's health says, so that a planned restart takes no pod out of service.
	Paused bool
}

// WithReadiness makes /readyz ask f too (default: never draining nor paused).
func WithReadiness(f func() Readiness) Option { return func(h *Handler) { h.readiness = f } }

// ReadyResponse is the body of GET /readyz: the pool's health, and whether the process drains
// or the proxy is paused.
type ReadyResponse struct {
	HealthResponse
	Draining bool `json:"draining"`
	Paused   bool `json:"paused"`
}

// readyz is the readiness probe: 503 until the pool has connected, while it is unhealthy (but
// not while the proxy is paused) and from SIGTERM on. It reads the last health check rather
// than querying, so probes add no load.
func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	var rd Readiness
	if h.readiness != nil {
		rd = h.readiness()
	}
	resp := ReadyResponse{HealthResponse: h.healthResponse(), Draining: rd.Draining, Paused: rd.Paused}
	code := http.StatusOK
	if rd.Draining || !rd.Paused && !serving(resp.Status) {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, resp)
}
