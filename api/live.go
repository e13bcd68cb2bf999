package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// eventWriteTimeout bounds the write of one stream event, so a client that stops reading
// cannot hold a stream open forever.
const eventWriteTimeout = 10 * time.Second

// window turns the cumulative query histogram into figures over the last few seconds. It keeps
// a reading about every tenth of its span and compares the newest with the oldest kept.
type window struct {
	span time.Duration

	mu      sync.Mutex
	samples []sample
}

type sample struct {
	at time.Time
	h  pool.QueryHistogram
}

func newWindow(span time.Duration) *window { return &window{span: span} }

// recent returns the figures between the oldest kept reading (or the pool's start) and cur.
func (w *window) recent(now, started time.Time, cur pool.QueryHistogram) RecentQueries {
	w.mu.Lock()
	base := sample{at: started, h: pool.QueryHistogram{Cumulative: make([]uint64, len(cur.Cumulative))}}
	// Drop readings older than needed: keep the newest one at least span old as the base.
	cut := 0
	for i, s := range w.samples {
		if now.Sub(s.at) >= w.span {
			cut = i
		}
	}
	w.samples = w.samples[cut:]
	if len(w.samples) > 0 {
		base = w.samples[0]
	}
	if n := len(w.samples); n == 0 || now.Sub(w.samples[n-1].at) >= w.span/10 {
		w.samples = append(w.samples, sample{at: now, h: cur})
	}
	w.mu.Unlock()

	r := RecentQueries{WindowSeconds: secs(now.Sub(base.at))}
	if cur.Count < base.h.Count {
		return r
	}
	r.Queries = cur.Count - base.h.Count
	r.Errors = cur.Errors - min(base.h.Errors, cur.Errors)
	if r.WindowSeconds > 0 {
		r.QueriesPerSecond = round3(float64(r.Queries) / now.Sub(base.at).Seconds())
	}
	if r.Queries == 0 {
		return r
	}
	r.ErrorRate = ratio(float64(r.Errors) / float64(r.Queries))
	delta := cur.Sub(base.h)
	q := func(p float64) float64 { return round3(delta.Quantile(p) * 1000) }
	r.AverageMs = round3((cur.SumSeconds - base.h.SumSeconds) * 1000 / float64(r.Queries))
	r.P50Ms, r.P95Ms, r.P99Ms = q(0.50), q(0.95), q(0.99)
	return r
}

// live builds one snapshot from in-memory figures only: it never waits on the database, so the
// status page stays current while the database is down.
func (h *Handler) live() LiveSnapshot {
	now := time.Now()
	s := h.mgr.Stats()
	hist := h.mgr.QueryHistogram()
	return LiveSnapshot{
		Timestamp:     now.UTC(),
		Status:        s.Health.Status,
		LastError:     optString(s.Health.LastError),
		UptimeSeconds: secs(s.Uptime),
		Pool:          poolStats(s),
		Queries: QueryCounts{Total: s.Queries.Count, Errors: s.Queries.Errors,
			ErrorRate: ratio(s.Queries.ErrorRate), Slow: s.SlowQueries},
		Latency:           latency(s.Queries),
		Recent:            h.window.recent(now, now.Add(-s.Uptime), hist),
		RecentSlowQueries: h.slowQueries(5),
		Statements:        h.statements(10),
	}
}

func wantsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if strings.Contains(v, "text/event-stream") {
			return true
		}
	}
	return false
}

// liveMetrics answers one snapshot, or with Accept: text/event-stream a stream of them.
func (h *Handler) liveMetrics(w http.ResponseWriter, r *http.Request) {
	if !wantsEventStream(r) || r.Method == http.MethodHead {
		writeJSON(w, http.StatusOK, h.live())
		return
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	select {
	case h.streams <- struct{}{}:
		defer func() { <-h.streams }()
	default:
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many live-metrics streams (limit %d)", cap(h.streams)))
		return
	}
	h.stream(w, r)
}

// stream writes a snapshot every interval until the client leaves, a write fails or Close.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no") // tell reverse proxies not to buffer the stream
	w.WriteHeader(http.StatusOK)
	// Browsers reconnect by themselves; ask them to wait 2 s between attempts.
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	// The connection may serve further requests after the stream: clear the event deadline.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for id := 1; ; id++ {
		data, err := json.Marshal(h.live())
		if err != nil {
			return
		}
		if err := rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		if _, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", id, data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
	}
}
