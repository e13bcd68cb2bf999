package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgtest.Main(m, &cluster, pgtest.Options{CheckLeaks: true}))
}

// sidecar is the API served over real HTTP on a real pool.
type sidecar struct {
	m   *pool.Manager
	reg *prometheus.Registry
	h   *Handler
	srv *httptest.Server
	mux atomic.Pointer[http.ServeMux] // what srv serves; tests may swap in a new Handler
}

func testConfig(t testing.TB) pool.Config {
	t.Helper()
	c := testutil.FastPool(t, pool.FromEnv, cluster.URL(""), "api")
	c.HealthCheckInterval = time.Hour  // no background pings to disturb the counts
	c.SlowQueryThreshold = time.Second // also the health check latency that counts as degraded
	c.ApplicationName = "api-test-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	return c
}

// startSidecar builds a pool, registers the pg_* collectors when withCollector is set,
// and serves the API with DefaultConfig changed by tweak (may be nil); everything is closed at
// test end.
func startSidecar(t testing.TB, cfg pool.Config, withCollector bool, tweak func(*Config)) *sidecar {
	t.Helper()
	s := &sidecar{reg: prometheus.NewRegistry()}
	logger := slog.New(slog.DiscardHandler)
	m, err := pool.New(cfg, pool.WithLogger(logger), pool.WithRegisterer(s.reg))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	s.m = m
	t.Cleanup(m.Close)
	if withCollector {
		cc := collector.DefaultConfig()
		cc.QueriesFile = ""
		cc.Enabled = map[string]bool{"statements": true}
		// Every sidecar of these tests collects: under the default scope, one started while
		// another of the same test still runs would leave the collecting to that one.
		cc.Scope = collector.ScopeAll
		e, err := collector.New(m, cc, collector.WithLogger(logger))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		s.reg.MustRegister(e)
	}
	ac := DefaultConfig()
	if tweak != nil {
		tweak(&ac)
	}
	s.h, err = New(m, ac, WithLogger(logger), WithGatherer(s.reg))
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	mux := http.NewServeMux()
	s.h.Register(mux)
	s.mux.Store(mux)
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mux.Load().ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		s.h.Close()
		s.srv.Close()
	})
	return s
}

func (s *sidecar) waitHealthy(t testing.TB) {
	t.Helper()
	if !pgtest.WaitFor(30*time.Second, func() bool { return s.m.Health().Status == pool.StatusHealthy }) {
		t.Fatalf("pool never became healthy: %+v", s.m.Health())
	}
}

// do sends a request and returns the status, headers and body.
func (s *sidecar) do(t testing.TB, method, path, body string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	if strings.Contains(string(b), pgtest.SuperuserPassword) {
		t.Fatalf("%s %s: the body shows the database password:\n%s", method, path, b)
	}
	return resp.StatusCode, resp.Header, b
}

// getJSON GETs path, checks the status and decodes the body into v.
func (s *sidecar) getJSON(t testing.TB, path string, wantCode int, v any) {
	t.Helper()
	code, hdr, b := s.do(t, http.MethodGet, path, "")
	if code != wantCode {
		t.Fatalf("GET %s: status %d, want %d; body:\n%s", path, code, wantCode, b)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("GET %s: Content-Type %q, want JSON", path, ct)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// query runs SQL through the pool (measured like application traffic).
func (s *sidecar) query(t testing.TB, sql string) error {
	t.Helper()
	_, err := s.m.Pool().Exec(ctxTimeout(t, 30*time.Second), sql)
	return err
}
