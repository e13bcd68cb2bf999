// Package statuspage opens the /status page in a real headless Chromium: served by the api
// package on a real pool, and by the pgsidecar binary. It lives in the e2e module so that the
// browser driver (chromedp) stays out of pgsidecar's own go.mod.
package statuspage

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/api"
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
	h   *api.Handler
	srv *httptest.Server
	mux atomic.Pointer[http.ServeMux] // what srv serves; tests may swap in a new Handler
}

func testConfig(t testing.TB) pool.Config {
	t.Helper()
	c := testutil.FastPool(t, pool.FromEnv, cluster.URL(""), "api")
	c.HealthCheckInterval = time.Hour  // no background pings to disturb the counts
	c.SlowQueryThreshold = time.Second // also the health check latency that counts as degraded
	c.ApplicationName = "statuspage-test-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	return c
}

// startSidecar builds a pool and serves the API on it; everything is closed at test end.
func startSidecar(t testing.TB, cfg pool.Config, apiCfg api.Config) *sidecar {
	t.Helper()
	s := &sidecar{reg: prometheus.NewRegistry()}
	logger := slog.New(slog.DiscardHandler)
	m, err := pool.New(cfg, pool.WithLogger(logger), pool.WithRegisterer(s.reg))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	s.m = m
	t.Cleanup(m.Close)
	s.h, err = api.New(m, apiCfg, api.WithGatherer(s.reg), api.WithLogger(logger))
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

// query runs SQL through the pool (measured like application traffic).
func (s *sidecar) query(t testing.TB, sql string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.m.Pool().Exec(ctx, sql)
	return err
}
