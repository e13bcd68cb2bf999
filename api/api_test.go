package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// volatile lists the fields whose values change from run to run; golden files hold a
// placeholder for them, so that everything else (names, shape, counts) is compared exactly.
var volatile = map[string]string{
	"timestamp": "<time>", "lastCheck": "<time>", "time": "<time>", "collectedAt": "<time>",
	"uptimeSeconds": "<number>", "latencyMs": "<number>", "durationMs": "<number>",
	"averageLatencyMs": "<number>", "p95LatencyMs": "<number>", "acquireWaitSeconds": "<number>",
	"averageMs": "<number>", "p50Ms": "<number>", "p95Ms": "<number>", "p99Ms": "<number>",
	"windowSeconds": "<number>", "queriesPerSecond": "<number>", "acquires": "<number>", "emptyAcquires": "<number>",
	// PostgreSQL-side figures of the collectors.
	"version": "<string>", "shortVersion": "<string>", "sizeBytes": "<number>", "cacheHitRatio": "<number>",
	"blocksHit": "<number>", "blocksRead": "<number>", "commits": "<number>", "rollbacks": "<number>",
	"tempBytes": "<number>", "tempFiles": "<number>", "backends": "<number>", "deadlocks": "<number>",
	"current": "<number>", "utilization": "<number>", "sessionsByState": "<object>", "queryId": "<string>",
	"calls": "<number>", "totalSeconds": "<number>", "meanMs": "<number>", "rows": "<number>",
	"database": "<string>", "user": "<string>",
	// The statements' bucket counts and time in the window.
	"histogram": "<array>", "windowCalls": "<number>",
}

var digits = regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)

// normalise replaces volatile values by placeholders, keeps only the first element of
// topStatements (its length depends on the server's own activity), and masks the numbers of
// the findings' messages.
func normalise(v any, key string) any {
	switch x := v.(type) {
	case map[string]any:
		if ph, ok := volatile[key]; ok && ph == "<object>" {
			return ph
		}
		if c, _ := x["check"].(string); c == "averageLatency" || c == "serverConnectionUtilization" {
			x["value"] = "<number>"
		}
		for k, e := range x {
			x[k] = normalise(e, k)
		}
		return x
	case []any:
		if key == "topStatements" && len(x) > 1 {
			x = x[:1]
		}
		if ph, ok := volatile[key]; ok && ph == "<array>" {
			return ph
		}
		if key == "statements" {
			// Ranked by time, which varies between statements of about the same time.
			slices.SortFunc(x, func(a, b any) int {
				fa, _ := a.(map[string]any)["fingerprint"].(string)
				fb, _ := b.(map[string]any)["fingerprint"].(string)
				return strings.Compare(fa, fb)
			})
		}
		for i, e := range x {
			x[i] = normalise(e, key)
		}
		return x
	case nil:
		if key == "cacheHitRatio" {
			// null for a database without block reads yet; a server restart resets them.
			return "<number>"
		}
		return nil
	default:
		if ph, ok := volatile[key]; ok {
			return ph
		}
		if s, ok := x.(string); ok && key == "message" {
			return digits.ReplaceAllString(s, "N")
		}
		return x
	}
}

// golden compares status and normalised body with testdata/name.json.
func golden(t *testing.T, name string, code int, body []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, body)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]any{"status": code, "body": normalise(v, "")}); err != nil {
		t.Fatal(err)
	}
	got := buf.Bytes()
	path := filepath.Join("testdata", name+".json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./api/ -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (run with -update if the change is intended)\ngot:\n%s\nwant:\n%s", name, path, got, want)
	}
}

// TestEndpointsGolden runs a known workload through a real pool and compares every endpoint's
// answer with its golden file.
func TestEndpointsGolden(t *testing.T) {
	if err := cluster.Exec(ctxTimeout(t, 10*time.Second), "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	s := startSidecar(t, testConfig(t), true, nil)
	s.waitHealthy(t)
	// The workload: 5 quick selects, one error (42P01), one slow statement with a password
	// literal (which the API must mask).
	for range 5 {
		if err := s.query(t, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.query(t, "SELECT * FROM no_such_table"); err == nil {
		t.Fatal("query of a missing table succeeded")
	}
	if err := s.query(t, "SELECT pg_sleep(1.05)"); err != nil {
		t.Fatal(err)
	}
	if err := s.query(t, "DO $$BEGIN PERFORM pg_sleep(1.05); END$$ /* ALTER ROLE x PASSWORD 'hunter2' */"); err != nil {
		t.Fatal(err)
	}
	// Every connection back in the pool, so the counts are stable.
	if !pgtest.WaitFor(10*time.Second, func() bool { return s.m.Stats().UsedConns == 0 }) {
		t.Fatal("connections still in use")
	}

	for _, tc := range []struct{ name, path string }{
		{"metrics", "/api/database/metrics"},
		{"detailed-metrics", "/api/database/detailed-metrics"},
		{"health", "/api/database/health"},
		{"performance", "/api/database/performance"},
		{"live-metrics", "/api/database/live-metrics"},
		{"healthz", "/healthz"},
		{"readyz", "/readyz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := s.do(t, http.MethodGet, tc.path, "")
			if ct := hdr.Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if strings.Contains(string(body), "hunter2") {
				t.Errorf("a password literal of a slow statement shows:\n%s", body)
			}
			golden(t, tc.name, code, body)
		})
	}

	// Figures the golden files mask, checked against what really happened.
	var perf PerformanceResponse
	s.getJSON(t, "/api/database/performance", http.StatusOK, &perf)
	if len(perf.SlowQueries) != 2 || perf.SlowQueries[0].Operation != "call" || perf.SlowQueries[1].Operation != "select" {
		t.Fatalf("slow queries, newest first: %+v", perf.SlowQueries)
	}
	if d := perf.SlowQueries[1].DurationMs; d < 1000 {
		t.Errorf("slow query of pg_sleep(1.05) reported as %v ms", d)
	}
	if perf.Latency.P99Ms < perf.Latency.P50Ms || perf.Latency.P99Ms <= 0 {
		t.Errorf("latency percentiles out of order: %+v", perf.Latency)
	}
	if len(perf.TopStatements) == 0 || perf.TopStatements[0].Calls < 1 {
		t.Errorf("no top statements from pg_stat_statements: %+v", perf.TopStatements)
	}
	for i := 1; i < len(perf.TopStatements); i++ {
		if perf.TopStatements[i].TotalSeconds > perf.TopStatements[i-1].TotalSeconds {
			t.Fatalf("top statements not sorted by total time: %+v", perf.TopStatements)
		}
	}
	var det DetailedMetricsResponse
	s.getJSON(t, "/api/database/detailed-metrics", http.StatusOK, &det)
	if det.Database == nil || det.Database.Name != "postgres" || det.Database.Commits == nil || *det.Database.Commits < 1 ||
		det.Database.CacheHitRatio == nil || *det.Database.CacheHitRatio <= 0 || *det.Database.CacheHitRatio > 1 {
		t.Errorf("current database figures: %+v", det.Database)
	}
	if det.SessionsByState["active"] < 1 || det.Connections.Max == nil || *det.Connections.Max != 100 {
		t.Errorf("sessions %v, connections %+v", det.SessionsByState, det.Connections)
	}
	if det.ShortVersion == nil || !strings.HasPrefix(*det.ShortVersion, "15") {
		t.Errorf("server version %v", det.ShortVersion)
	}
}

// TestNoCollectorData: without pg_* metrics the answers keep their shape, with nulls.
func TestNoCollectorData(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, nil)
	s.waitHealthy(t)
	code, _, body := s.do(t, http.MethodGet, "/api/database/detailed-metrics", "")
	golden(t, "detailed-metrics-no-collector", code, body)
	var perf PerformanceResponse
	s.getJSON(t, "/api/database/performance", http.StatusOK, &perf)
	if perf.TopStatements != nil {
		t.Errorf("top statements without pg_stat_statements metrics: %+v", perf.TopStatements)
	}
	if len(perf.Findings) != 4 {
		t.Errorf("findings without collector data: %+v", perf.Findings)
	}
}

// TestDatabaseDown stops the server: probes and endpoints must say so with the right codes,
// the sidecar's own endpoints must keep answering, and everything recovers after a restart.
func TestDatabaseDown(t *testing.T) {
	cluster.RequireControl(t)
	s := startSidecar(t, testConfig(t), true, nil)
	s.waitHealthy(t)
	t.Cleanup(func() { _ = cluster.StartAgain() })
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	// A failed query marks the pool unhealthy at once.
	if err := s.query(t, "SELECT 1"); err == nil {
		t.Fatal("query succeeded with the server stopped")
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { return s.m.Health().Status == pool.StatusUnhealthy }) {
		t.Fatalf("pool not unhealthy: %+v", s.m.Health())
	}

	for _, tc := range []struct {
		path string
		code int
	}{
		{"/healthz", http.StatusOK},
		{"/readyz", http.StatusServiceUnavailable},
		{"/api/database/health", http.StatusServiceUnavailable},
		{"/api/database/detailed-metrics", http.StatusServiceUnavailable},
		{"/api/database/metrics", http.StatusOK},
		{"/api/database/performance", http.StatusOK},
		{"/api/database/live-metrics", http.StatusOK},
		{"/status", http.StatusOK},
	} {
		code, _, body := s.do(t, http.MethodGet, tc.path, "")
		if code != tc.code {
			t.Errorf("GET %s with the database down: %d, want %d\n%s", tc.path, code, tc.code, body)
		}
	}
	var hr HealthResponse
	s.getJSON(t, "/api/database/health", http.StatusServiceUnavailable, &hr)
	if hr.Status != pool.StatusUnhealthy || hr.LastError == nil || *hr.LastError == "" || hr.LastCheck == nil {
		t.Errorf("health with the database down: %+v", hr)
	}
	var e errorBody
	s.getJSON(t, "/api/database/detailed-metrics", http.StatusServiceUnavailable, &e)
	if !strings.Contains(e.Error, "database unavailable") {
		t.Errorf("detailed-metrics error: %q", e.Error)
	}
	var perf PerformanceResponse
	s.getJSON(t, "/api/database/performance", http.StatusOK, &perf)
	if i := slices.IndexFunc(perf.Findings, func(f Finding) bool { return f.Check == "health" }); i < 0 ||
		!perf.Findings[i].Triggered || perf.Findings[i].Severity != "critical" || perf.Findings[i].Recommendation == "" {
		t.Errorf("health finding with the database down: %+v", perf.Findings)
	}
	var live LiveSnapshot
	s.getJSON(t, "/api/database/live-metrics", http.StatusOK, &live)
	if live.Status != pool.StatusUnhealthy || live.LastError == nil {
		t.Errorf("live snapshot with the database down: %+v", live)
	}
	code, _, body := s.do(t, http.MethodPost, "/api/database/warmup", `{"connections": 3}`)
	var wr WarmupResponse
	if code != http.StatusServiceUnavailable || json.Unmarshal(body, &wr) != nil || wr.Error == "" || wr.Requested != 3 {
		t.Errorf("warm-up with the database down: %d %s", code, body)
	}

	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(30*time.Second, func() bool {
		code, _, _ := s.do(t, http.MethodGet, "/readyz", "")
		return code == http.StatusOK
	}) {
		t.Fatalf("/readyz did not recover: %+v", s.m.Health())
	}
	s.getJSON(t, "/api/database/detailed-metrics", http.StatusOK, &DetailedMetricsResponse{})
}

func TestMethodsAndUnknownPaths(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, nil)
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"POST", "/api/database/metrics", 405, "GET, HEAD"},
		{"DELETE", "/api/database/health", 405, "GET, HEAD"},
		{"PUT", "/api/database/performance", 405, "GET, HEAD"},
		{"POST", "/api/database/detailed-metrics", 405, "GET, HEAD"},
		{"POST", "/api/database/live-metrics", 405, "GET, HEAD"},
		{"GET", "/api/database/warmup", 405, "POST"},
		{"PUT", "/api/database/warmup", 405, "POST"},
		{"POST", "/healthz", 405, "GET, HEAD"},
		{"POST", "/readyz", 405, "GET, HEAD"},
		{"POST", "/status", 405, "GET, HEAD"},
		{"GET", "/api/database/nope", 404, ""},
		{"GET", "/api/", 404, ""},
		{"POST", "/api/database", 404, ""},
	} {
		code, hdr, body := s.do(t, tc.method, tc.path, "")
		var e errorBody
		if code != tc.code || hdr.Get("Allow") != tc.allow || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d Allow=%q %s; want %d Allow=%q and a JSON error", tc.method, tc.path, code,
				hdr.Get("Allow"), body, tc.code, tc.allow)
		}
	}
	code, hdr, body := s.do(t, http.MethodHead, "/api/database/metrics", "")
	if code != 200 || len(body) != 0 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
		t.Errorf("HEAD metrics: %d %q %q", code, hdr.Get("Content-Type"), body)
	}
}

func TestWarmupOpensConnections(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinConns, cfg.MaxConns = 1, 6
	s := startSidecar(t, cfg, false, nil)
	s.waitHealthy(t)
	if !pgtest.WaitFor(10*time.Second, func() bool { return cluster.Sessions(t, cfg.ApplicationName) == 1 }) {
		t.Fatalf("sessions before warm-up: %d, want 1", cluster.Sessions(t, cfg.ApplicationName))
	}

	code, _, body := s.do(t, http.MethodPost, "/api/database/warmup", `{"connections": 5}`, "Content-Type", "application/json")
	var res WarmupResponse
	if code != 200 || json.Unmarshal(body, &res) != nil {
		t.Fatalf("warm-up: %d %s", code, body)
	}
	if res.Requested != 5 || res.Opened != 4 || res.TotalConnections != 5 || res.DurationMs <= 0 || res.Error != "" {
		t.Fatalf("warm-up result %+v, want 4 opened, 5 in total", res)
	}
	if n := cluster.Sessions(t, cfg.ApplicationName); n != 5 {
		t.Fatalf("pg_stat_activity shows %d sessions after warm-up, want 5", n)
	}
	// Without a body: the pool minimum, already open, so nothing new.
	code, _, body = s.do(t, http.MethodPost, "/api/database/warmup", "")
	if code != 200 || json.Unmarshal(body, &res) != nil || res.Requested != 1 || res.Opened != 0 {
		t.Fatalf("warm-up without body: %d %s", code, body)
	}
	code, _, body = s.do(t, http.MethodPost, "/api/database/warmup?connections=6", "")
	if code != 200 || json.Unmarshal(body, &res) != nil || res.Opened != 1 || cluster.Sessions(t, cfg.ApplicationName) != 6 {
		t.Fatalf("warm-up to 6 by query: %d %s", code, body)
	}

	for _, tc := range []struct{ query, body, want string }{
		{"", `{"connections": 7}`, "DB_MAX_CONNECTIONS (6)"},
		{"", `{"connections": 0}`, "between 1 and"},
		{"", `{"connections": "many"}`, "must be JSON"},
		{"", `{"conns": 2}`, "unknown field"},
		{"", `not json`, "must be JSON"},
		{"?connections=abc", "", "whole number"},
		{"", `{"connections": 1}` + strings.Repeat(" ", 5000), "larger than"},
	} {
		code, _, body := s.do(t, http.MethodPost, "/api/database/warmup"+tc.query, tc.body)
		var e errorBody
		if code/100 != 4 || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("warm-up %q %q: %d %s; want a 4xx JSON error with %q", tc.query, tc.body, code, body, tc.want)
		}
	}
}

func TestHealthStartingIsNotReady(t *testing.T) {
	cfg := testConfig(t)
	// A port nobody listens on: the pool never connects.
	cfg.DatabaseURL = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1", pgtest.SuperuserPassword)
	cfg.ConnectTimeout = time.Second
	s := startSidecar(t, cfg, false, nil)
	code, _, body := s.do(t, http.MethodGet, "/readyz", "")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz of a pool that cannot connect: %d %s", code, body)
	}
	if code, _, _ := s.do(t, http.MethodGet, "/healthz", ""); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	var hr HealthResponse
	if !pgtest.WaitFor(10*time.Second, func() bool {
		s.getJSON(t, "/api/database/health", http.StatusServiceUnavailable, &hr)
		return hr.ConsecutiveFailures >= 1
	}) {
		t.Fatalf("no failed check: %+v", hr)
	}
	if hr.LastError == nil || !strings.Contains(*hr.LastError, "127.0.0.1") || hr.LastCheck == nil || hr.Status != pool.StatusUnhealthy {
		t.Errorf("health of a pool that cannot connect: %+v", hr)
	}
}

// TestFindingsTriggered drives the pool past the alert thresholds: a saturated pool with a
// caller waiting is degraded (still ready), and the findings say what crossed which line.
func TestFindingsTriggered(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinConns, cfg.MaxConns = 1, 2
	s := startSidecar(t, cfg, false, nil)
	s.waitHealthy(t)
	if err := s.query(t, "SELECT pg_sleep(0.6)"); err != nil { // the only query: average 600 ms
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	for range 2 {
		c, err := s.m.Pool().Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Release)
	}
	waitCtx, stopWaiting := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		c, err := s.m.Pool().Acquire(waitCtx)
		if err == nil {
			c.Release()
		}
		waited <- err
	}()
	defer func() {
		stopWaiting()
		if err := <-waited; !errors.Is(err, context.Canceled) {
			t.Errorf("waiting acquire ended with %v", err)
		}
	}()
	if !pgtest.WaitFor(10*time.Second, func() bool { return s.m.Stats().PendingAcquires == 1 }) {
		t.Fatalf("no waiting caller: %+v", s.m.Stats())
	}

	var hr HealthResponse
	s.getJSON(t, "/readyz", http.StatusOK, &hr)
	if hr.Status != pool.StatusDegraded {
		t.Errorf("saturated pool: status %s, want degraded", hr.Status)
	}
	var perf PerformanceResponse
	s.getJSON(t, "/api/database/performance", http.StatusOK, &perf)
	want := map[string]bool{"errorRate": false, "averageLatency": true, "poolUtilization": true, "health": false}
	for _, f := range perf.Findings {
		if w, ok := want[f.Check]; !ok || f.Triggered != w || (f.Recommendation != "") != w ||
			(w && f.Severity != "warning") || (!w && f.Severity != "ok") {
			t.Errorf("finding %+v, want triggered=%v", f, w)
		}
		delete(want, f.Check)
	}
	if len(want) > 0 {
		t.Errorf("findings missing: %v", want)
	}
	var live LiveSnapshot
	s.getJSON(t, "/api/database/live-metrics", http.StatusOK, &live)
	if live.Pool.Utilization != 1 || live.Pool.PendingRequests != 1 || live.Pool.UsedConnections != 2 {
		t.Errorf("live pool figures: %+v", live.Pool)
	}
}

// TestGatherReuse: within GatherMaxAge, detailed-metrics answers from the same collection
// instead of running the collectors again.
func TestGatherReuse(t *testing.T) {
	for _, tc := range []struct {
		maxAge time.Duration
		same   bool
	}{{time.Hour, true}, {time.Nanosecond, false}} {
		s := startSidecar(t, testConfig(t), true, func(c *Config) { c.GatherMaxAge = tc.maxAge })
		s.waitHealthy(t)
		var a, b DetailedMetricsResponse
		s.getJSON(t, "/api/database/detailed-metrics", http.StatusOK, &a)
		s.getJSON(t, "/api/database/detailed-metrics", http.StatusOK, &b)
		if a.CollectedAt == nil || b.CollectedAt == nil || a.CollectedAt.Equal(*b.CollectedAt) != tc.same {
			t.Errorf("max age %s: collected at %v and %v, want same=%v", tc.maxAge, a.CollectedAt, b.CollectedAt, tc.same)
		}
		n, ok := s.h.gather().value("pgsidecar_collections_total", nil)
		if want := map[bool]float64{true: 1, false: 3}[tc.same]; !ok || n != want {
			t.Errorf("max age %s: %v collections, want %v", tc.maxAge, n, want)
		}
	}
}

// TestWarmupDefaultWithoutMinimum: with DB_MIN_CONNECTIONS=0 a bare warm-up still opens one.
func TestWarmupDefaultWithoutMinimum(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinConns = 0
	s := startSidecar(t, cfg, false, nil)
	s.waitHealthy(t)
	code, _, body := s.do(t, http.MethodPost, "/api/database/warmup", "")
	var res WarmupResponse
	if code != 200 || json.Unmarshal(body, &res) != nil || res.Requested != 1 || res.TotalConnections < 1 {
		t.Fatalf("warm-up without a minimum: %d %s", code, body)
	}
}
