package pool

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzz targets need no database; don't start a cluster in every fuzz worker.
		os.Exit(m.Run())
	}
	code := pgtest.Main(m, &cluster, pgtest.Options{})
	if code == 0 {
		// Every Manager must be closed by its test; leftovers are leaks.
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) count(s string) int { return strings.Count(b.String(), s) }

// testConfig is a small, fast-reacting pool on the test cluster.
func testConfig(t testing.TB) Config {
	t.Helper()
	c := DefaultConfig()
	c.DatabaseURL = cluster.URL("")
	c.MaxConns = 4
	c.MinConns = 2
	c.RetryDelay = 10 * time.Millisecond
	c.RetryMaxDelay = 100 * time.Millisecond
	c.ConnectTimeout = 5 * time.Second
	c.HealthCheckTimeout = 2 * time.Second
	c.MetricsLogInterval = 0
	c.Name = strings.ReplaceAll(t.Name(), "/", "_")
	return c
}

type harness struct {
	m   *Manager
	reg *prometheus.Registry
	log *logBuffer
}

// newManager builds a Manager with its own registry and captured logs, closed at test end.
func newManager(t testing.TB, cfg Config) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), log: &logBuffer{}}
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
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
