package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/thresholds"
	"github.com/pgsidecar/pgsidecar/pool"
)

const maxWarmupBodyBytes = 4 << 10

func (h *Handler) metrics(w http.ResponseWriter, _ *http.Request) {
	s := h.mgr.Stats()
	writeJSON(w, http.StatusOK, MetricsResponse{
		Timestamp: time.Now().UTC(),
		Status:    s.Health.Status,
		Pool:      poolStats(s),
		Queries: QuerySummary{
			Total:            s.Queries.Count,
			Errors:           s.Queries.Errors,
			ErrorRate:        ratio(s.Queries.ErrorRate),
			AverageLatencyMs: ms(s.Queries.Average),
			P95LatencyMs:     ms(s.Queries.P95),
			SlowQueries:      s.SlowQueries,
			ByOperation:      s.Queries.ByOperation,
		},
		Retries:            s.Retries,
		Acquires:           s.AcquireCount,
		EmptyAcquires:      s.EmptyAcquireCount,
		AcquireWaitSeconds: secs(s.AcquireWait),
		ConnectionsOpened:  s.ConnectionsOpened,
		UptimeSeconds:      secs(s.Uptime),
	})
}

// serving reports whether the pool can take queries: healthy or degraded.
func serving(st pool.Status) bool {
	return st == pool.StatusHealthy || st == pool.StatusDegraded
}

// healthResponse reads only the last health check: probes run often and must stay cheap.
func (h *Handler) healthResponse() HealthResponse {
	st := h.mgr.Health()
	hr := HealthResponse{
		Timestamp:           time.Now().UTC(),
		Status:              st.Status,
		LatencyMs:           ms(st.Latency),
		ConsecutiveFailures: st.ConsecutiveFailures,
		TotalFailures:       st.TotalFailures,
		LastError:           optString(st.LastError),
		UptimeSeconds:       h.uptime(),
	}
	if !st.LastCheck.IsZero() {
		t := st.LastCheck.UTC()
		hr.LastCheck = &t
	}
	return hr
}

func (h *Handler) uptime() float64 { return secs(h.mgr.Stats().Uptime) }

// health answers 200 while the pool serves queries (healthy or degraded) and 503 otherwise
// (unhealthy, or still connecting for the first time).
func (h *Handler) health(w http.ResponseWriter, _ *http.Request) {
	hr := h.healthResponse()
	code := http.StatusOK
	if !serving(hr.Status) {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, hr)
}

// healthz is the liveness probe: the process answers HTTP. It never touches the database, so
// a database outage never gets the sidecar restarted.
func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Status        string  `json:"status"`
		UptimeSeconds float64 `json:"uptimeSeconds"`
	}{"alive", h.uptime()})
}

func (h *Handler) performance(w http.ResponseWriter, _ *http.Request) {
	s := h.mgr.Stats()
	resp := PerformanceResponse{
		Timestamp: time.Now().UTC(),
		Status:    s.Health.Status,
		Queries: QueryCounts{Total: s.Queries.Count, Errors: s.Queries.Errors,
			ErrorRate: ratio(s.Queries.ErrorRate), Slow: s.SlowQueries},
		Latency:          latency(s.Queries),
		ErrorsBySQLState: s.Queries.BySQLState,
		SlowQueries:      h.slowQueries(0),
		Statements:       h.statements(0),
	}
	var snap *registrySnapshot
	if serving(s.Health.Status) {
		snap = h.gather()
	}
	if snap != nil {
		resp.TopStatements = snap.topStatements(10)
	}
	resp.Findings = findings(thresholds.Default(), s, snap)
	writeJSON(w, http.StatusOK, resp)
}

// findings checks the snapshot against the alert thresholds, the same table the Prometheus
// alerts and the dashboards' threshold lines are generated from.
func findings(limits thresholds.Table, s pool.Stats, snap *registrySnapshot) []Finding {
	maxLatency := limits.AvgLatency()
	f := []Finding{
		check("errorRate", ratio(s.Queries.ErrorRate), limits.ErrorRatio, s.Queries.ErrorRate > limits.ErrorRatio,
			fmt.Sprintf("%.2f%% of queries failed (threshold %s)", s.Queries.ErrorRate*100, percent(limits.ErrorRatio)),
			"Look at errorsBySqlState: check constraints and application logic, and the PostgreSQL log."),
		check("averageLatency", ms(s.Queries.Average), ms(maxLatency), s.Queries.Average > maxLatency,
			fmt.Sprintf("average query latency is %.1f ms (threshold %s ms)", float64(s.Queries.Average)/float64(time.Millisecond),
				strconv.FormatFloat(ms(maxLatency), 'f', -1, 64)),
			"Look at the slow queries and top statements: add indexes, check plans with EXPLAIN ANALYZE, cache results."),
		check("poolUtilization", ratio(s.Utilisation), limits.PoolUtilization, s.Utilisation > limits.PoolUtilization,
			fmt.Sprintf("%d of %d pool connections in use (threshold %s)", s.UsedConns, s.MaxConns, percent(limits.PoolUtilization)),
			"Raise DB_MAX_CONNECTIONS if the server allows it, or shorten long-running queries and transactions."),
	}
	failing := !serving(s.Health.Status)
	hc := check("health", float64(s.Health.ConsecutiveFailures), 0, failing,
		fmt.Sprintf("pool is %s", s.Health.Status),
		"Check that PostgreSQL is up and reachable, DATABASE_URL and credentials, and lastError of /api/database/health.")
	if failing {
		hc.Severity = "critical"
	}
	f = append(f, hc)
	if snap != nil {
		if u, ok := snap.value("pg_server_connection_utilization_ratio", nil); ok {
			limit := limits.ServerConnectionUtilization
			f = append(f, check("serverConnectionUtilization", ratio(u), limit, u > limit,
				fmt.Sprintf("%.0f%% of the server's max_connections in use (threshold %s)", u*100, percent(limit)),
				"Lower DB_MAX_CONNECTIONS of the pools sharing this server, or raise max_connections."))
		}
	}
	return f
}

// percent prints a ratio as a percentage the way a person writes it: 0.05 is "5%".
func percent(v float64) string {
	return strconv.FormatFloat(math.Round(v*1e8)/1e6, 'f', -1, 64) + "%"
}

func check(name string, value, threshold float64, triggered bool, msg, advice string) Finding {
	f := Finding{Check: name, Value: value, Threshold: threshold, Triggered: triggered, Severity: "ok", Message: msg}
	if triggered {
		f.Severity = "warning"
		f.Recommendation = advice
	}
	return f
}

// detailedMetrics answers from the collectors' latest figures. While the pool is unhealthy it
// answers 503 without gathering, so a dead server does not make callers wait for collector
// timeouts.
func (h *Handler) detailedMetrics(w http.ResponseWriter, _ *http.Request) {
	st := h.mgr.Health()
	if !serving(st.Status) {
		msg := "database unavailable (pool " + string(st.Status) + ")"
		if st.LastError != "" {
			msg += ": " + st.LastError
		}
		writeError(w, http.StatusServiceUnavailable, msg)
		return
	}
	resp := DetailedMetricsResponse{Timestamp: time.Now().UTC(), CurrentDatabase: h.database()}
	if snap := h.gather(); snap != nil {
		snap.fillDetailed(&resp)
	}
	writeJSON(w, http.StatusOK, resp)
}

// database is the name of the pool's database, from its connection settings.
func (h *Handler) database() string {
	return h.mgr.Database()
}

// warmup opens connections: the body's (or query's) "connections", default the pool minimum
// (at least one).
func (h *Handler) warmup(w http.ResponseWriter, r *http.Request) {
	cfg := h.mgr.Config()
	n := max(int(cfg.MinConns), 1)
	if v := r.URL.Query().Get("connections"); v != "" {
		i, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "connections ("+strconv.Quote(v)+") must be a whole number")
			return
		}
		n = i
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWarmupBodyBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "request body larger than 4 KiB")
		return
	}
	if len(body) > 0 {
		var req struct {
			Connections *int `json:"connections"`
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "body must be JSON like {\"connections\": 5}: "+err.Error())
			return
		}
		// One object and nothing after it: a second value or stray bytes mean the client sent
		// something other than what this endpoint reads.
		if _, err := dec.Token(); err != io.EOF {
			writeError(w, http.StatusBadRequest, "body must be one JSON object like {\"connections\": 5}, with nothing after it")
			return
		}
		if req.Connections != nil {
			n = *req.Connections
		}
	}
	if n < 1 || n > int(cfg.MaxConns) {
		writeError(w, http.StatusBadRequest,
			fmt.Sprintf("connections (%d) must be between 1 and DB_MAX_CONNECTIONS (%d)", n, cfg.MaxConns))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), cfg.ConnectTimeout)
	defer cancel()
	res, err := h.mgr.Warmup(ctx, n)
	resp := WarmupResponse{Requested: res.Requested, Opened: res.Opened, TotalConnections: res.Total,
		DurationMs: ms(res.Duration)}
	if err != nil {
		resp.Requested = n
		resp.Error = err.Error()
		h.log.Warn("Database warm-up failed", "requested", n, "opened", res.Opened, "error", resp.Error)
		writeJSON(w, http.StatusServiceUnavailable, resp)
		return
	}
	h.log.Info("Database warm-up", "requested", n, "opened", res.Opened, "total", res.Total, "duration", res.Duration)
	writeJSON(w, http.StatusOK, resp)
}
