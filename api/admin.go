package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Admin wires the proxy's maintenance switch: POST /api/proxy/pause, /api/proxy/resume and
// /api/proxy/reconnect. The binary mounts it only with --web.enable-admin.
type Admin struct {
	// Proxy returns the running proxy's switch, or nil when there is none.
	Proxy func() Maintenance
	// Allow returns an error when a request may not use the endpoints (403).
	Allow func(r *http.Request) error
}

// Maintenance is the proxy's maintenance switch as the endpoints use it. The binary adapts the
// proxy to it, so this package does not depend on the proxy's.
type Maintenance interface {
	// Pause queues new transactions and waits up to timeout for those under way. The response's
	// Status and Error are the handler's to set; a non-nil error means the pause failed, and is
	// ErrPauseUnderWay when another pause was already waiting.
	Pause(ctx context.Context, timeout time.Duration) (PauseResponse, error)
	// Resume lets the queued clients go; wasPaused is false when there was no pause.
	Resume() (resp ResumeResponse, wasPaused bool)
	Reconnect() ReconnectResponse
}

// ErrPauseUnderWay is Pause's error when another pause is still waiting.
var ErrPauseUnderWay = errors.New("a pause is already under way")

const (
	// defaultPauseTimeout is how long a pause waits for transactions under way when the request
	// names no timeout.
	defaultPauseTimeout = 30 * time.Second
	// maxPauseTimeout bounds the wait a request can ask for.
	maxPauseTimeout = 10 * time.Minute
)

// PauseResponse is the body of POST /api/proxy/pause.
type PauseResponse struct {
	Status string `json:"status"` // "paused", or "resumed" when the pause failed
	// Error says why the pause failed; absent when it took effect.
	Error         string   `json:"error,omitempty"`
	WaitedSeconds float64  `json:"waitedSeconds"`
	QueuedClients int      `json:"queuedClients"`
	Holders       []Holder `json:"holders,omitempty"` // the clients that held a failed pause up
}

// Holder is a client that held a server connection through a pause's whole timeout.
type Holder struct {
	User   string `json:"user"`
	Client string `json:"client"`
	Pin    string `json:"pin,omitempty"`
}

// ResumeResponse is the body of POST /api/proxy/resume.
type ResumeResponse struct {
	Status          string  `json:"status"` // "resumed", or "not paused"
	PausedSeconds   float64 `json:"pausedSeconds"`
	ReleasedClients int     `json:"releasedClients"`
}

// ReconnectResponse is the body of POST /api/proxy/reconnect.
type ReconnectResponse struct {
	Status string `json:"status"` // "reconnecting"
	// Closed idle server connections at once; Replacing ones in use after their transaction.
	Closed    int `json:"closed"`
	Replacing int `json:"replacing"`
}

// RegisterAdmin mounts the admin endpoints on mux.
func (h *Handler) RegisterAdmin(mux *http.ServeMux, a Admin) {
	mux.Handle("/api/proxy/pause", only(http.MethodPost, a.guard(h.pause)))
	mux.Handle("/api/proxy/resume", only(http.MethodPost, a.guard(h.resume)))
	mux.Handle("/api/proxy/reconnect", only(http.MethodPost, a.guard(h.reconnect)))
}

// adminOff answers the admin paths when RegisterAdmin did not mount them.
func adminOff(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path+" (the admin endpoints are off; start pgsidecar with --web.enable-admin)")
}

// guard answers 403 to a request Allow refuses and 404 without a proxy, else calls f with it.
func (a Admin) guard(f func(http.ResponseWriter, *http.Request, Maintenance)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.Allow(r); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		var p Maintenance
		if a.Proxy != nil {
			p = a.Proxy()
		}
		if p == nil {
			writeError(w, http.StatusNotFound, "the proxy is not running (no --proxy.listen-address)")
			return
		}
		f(w, r, p)
	}
}

// pause pauses the proxy: ?timeout= (a duration such as 30s, at most 10m) bounds the wait for
// the transactions under way. 200 once paused; 409 when the pause failed (the proxy resumed).
func (h *Handler) pause(w http.ResponseWriter, r *http.Request, p Maintenance) {
	timeout := defaultPauseTimeout
	if v := r.URL.Query().Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > maxPauseTimeout {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("timeout %q must be a duration such as 30s, greater than 0 and at most %s", v, maxPauseTimeout))
			return
		}
		timeout = d
	}
	resp, err := p.Pause(r.Context(), timeout)
	resp.Status, resp.Error = "paused", ""
	code := http.StatusOK
	if err != nil {
		code, resp.Status, resp.Error = http.StatusConflict, "resumed", err.Error()
		if errors.Is(err, ErrPauseUnderWay) {
			resp.Status = "pausing"
		}
	}
	writeJSON(w, code, resp)
}

func (h *Handler) resume(w http.ResponseWriter, _ *http.Request, p Maintenance) {
	resp, wasPaused := p.Resume()
	resp.Status = "resumed"
	if !wasPaused {
		resp.Status = "not paused"
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) reconnect(w http.ResponseWriter, _ *http.Request, p Maintenance) {
	resp := p.Reconnect()
	resp.Status = "reconnecting"
	writeJSON(w, http.StatusOK, resp)
}
