// Package testutil holds the small helpers several packages' tests share: a log buffer safe for
// concurrent writers, a reader of metric values from a Prometheus gatherer, free addresses and
// the fast-reacting pool the tests run on.
package testutil

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// LogBuffer collects log output written from several goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Count returns how often s occurs in what was written.
func (b *LogBuffer) Count(s string) int { return strings.Count(b.String(), s) }

// MetricValue sums the samples of family name whose labels include want (see Samples).
func MetricValue(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, v := range Samples(mfs, name, want) {
		sum += v
	}
	return sum
}

// Samples returns the values of family name's samples whose labels include want: counter,
// gauge and untyped values, and sample counts of histograms.
func Samples(mfs []*dto.MetricFamily, name string, want map[string]string) []float64 {
	var out []float64
	for _, m := range matching(mfs, name, want) {
		switch {
		case m.Counter != nil:
			out = append(out, m.GetCounter().GetValue())
		case m.Gauge != nil:
			out = append(out, m.GetGauge().GetValue())
		case m.Untyped != nil:
			out = append(out, m.GetUntyped().GetValue())
		case m.Histogram != nil:
			out = append(out, float64(m.GetHistogram().GetSampleCount()))
		}
	}
	return out
}

// matching returns the metrics of family name whose labels include want.
func matching(mfs []*dto.MetricFamily, name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if labelValue(m, k) != v {
					continue metrics
				}
			}
			out = append(out, m)
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// FreeAddr returns a loopback address with a port that was free a moment ago, for a server the
// test starts next.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FastPool returns the configuration of a small pool on url that reacts fast, for tests: four
// connections, two kept open, retries after 10ms backing off to 100ms, short connect and health
// check timeouts, no periodic metrics log line. fromEnv is pool.FromEnv (this package cannot
// import pool, whose own tests use it); tests change what they need in the result.
func FastPool[C any](t testing.TB, fromEnv func(lookup func(string) (string, bool)) (C, error), url, name string) C {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL":            url,
		"DB_POOL_NAME":            name,
		"DB_MAX_CONNECTIONS":      "4",
		"DB_MIN_CONNECTIONS":      "2",
		"DB_RETRY_DELAY":          "10ms",
		"DB_RETRY_MAX_DELAY":      "100ms",
		"DB_CONNECTION_TIMEOUT":   "5s",
		"DB_HEALTH_CHECK_TIMEOUT": "2s",
		"DB_METRICS_LOG_INTERVAL": "0",
	}
	c, err := fromEnv(func(key string) (string, bool) {
		v, ok := env[key]
		return v, ok
	})
	if err != nil {
		t.Fatalf("fast pool config: %v", err)
	}
	return c
}
