package pool

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgtest.Main(m, &cluster, pgtest.Options{CheckLeaks: true}))
}

// testConfig is a small, fast-reacting pool on the test cluster.
func testConfig(t testing.TB) Config {
	t.Helper()
	return testutil.FastPool(t, FromEnv, cluster.URL(""), strings.ReplaceAll(t.Name(), "/", "_"))
}

type harness struct {
	m   *Manager
	reg *prometheus.Registry
	log *testutil.LogBuffer
}

// newManager builds a Manager with its own registry and captured logs, closed at test end.
func newManager(t testing.TB, cfg Config) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), log: &testutil.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := New(cfg, WithLogger(logger), WithRegisterer(h.reg))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.m = m
	t.Cleanup(m.Close)
	return h
}

// waitHealthy waits until the pool has connected.
func (h *harness) waitHealthy(t testing.TB) {
	t.Helper()
	if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().Status == StatusHealthy }) {
		t.Fatalf("pool never became healthy: %+v\nlogs:\n%s", h.m.Health(), h.log.String())
	}
}

// metricValue returns the sum of a metric family's samples whose labels include want.
func (h *harness) metricValue(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	return testutil.MetricValue(t, h.reg, name, want)
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// viaFaultProxy starts a fault proxy in front of the cluster and returns it with a test
// configuration that connects through it. The caller closes the proxy.
func viaFaultProxy(t *testing.T) (*faultproxy.Proxy, Config) {
	t.Helper()
	fp, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DatabaseURL = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", pgtest.SuperuserPassword, fp.Port())
	return fp, cfg
}
