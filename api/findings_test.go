package api

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/thresholds"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestFindingsFollowThresholds checks the findings against the shared thresholds table: with the
// default table each finding's threshold is the table's, and with a table whose values all differ
// the thresholds, the verdicts and the messages follow it. A literal threshold in handlers.go, or
// one wired to the wrong finding, fails here.
func TestFindingsFollowThresholds(t *testing.T) {
	reg := prometheus.NewRegistry()
	server := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pg_server_connection_utilization_ratio", Help: "test"})
	server.Set(0.78)
	reg.MustRegister(server)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	snap := &registrySnapshot{at: time.Now(), fams: map[string]*dto.MetricFamily{}}
	for _, mf := range mfs {
		snap.fams[mf.GetName()] = mf
	}
	// Each figure lies between its default threshold and the custom one below.
	s := pool.Stats{UsedConns: 3, MaxConns: 4, Utilisation: 0.75, Health: pool.Health{Status: pool.StatusHealthy}}
	s.Queries.ErrorRate = 0.04
	s.Queries.Average = 600 * time.Millisecond

	type want struct {
		threshold float64
		triggered bool
		message   string
	}
	def := thresholds.Default()
	custom := thresholds.Default()
	custom.ErrorRatio, custom.AvgLatencySeconds, custom.PoolUtilization, custom.ServerConnectionUtilization = 0.03, 0.7, 0.71, 0.77
	for _, tc := range []struct {
		name   string
		limits thresholds.Table
		want   map[string]want
	}{
		{"default", def, map[string]want{
			"errorRate":                   {def.ErrorRatio, false, "(threshold 5%)"},
			"averageLatency":              {def.AvgLatencySeconds * 1000, true, "(threshold 500 ms)"},
			"poolUtilization":             {def.PoolUtilization, false, "(threshold 80%)"},
			"serverConnectionUtilization": {def.ServerConnectionUtilization, false, "(threshold 80%)"},
			"health":                      {0, false, ""},
		}},
		{"custom", custom, map[string]want{
			"errorRate":                   {0.03, true, "(threshold 3%)"},
			"averageLatency":              {700, false, "(threshold 700 ms)"},
			"poolUtilization":             {0.71, true, "(threshold 71%)"},
			"serverConnectionUtilization": {0.77, true, "(threshold 77%)"},
			"health":                      {0, false, ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := findings(tc.limits, s, snap)
			if len(got) != len(tc.want) {
				t.Errorf("%d findings, want %d: %+v", len(got), len(tc.want), got)
			}
			for _, f := range got {
				w, ok := tc.want[f.Check]
				if !ok {
					t.Errorf("unexpected finding %+v", f)
					continue
				}
				if f.Threshold != w.threshold || f.Triggered != w.triggered || !strings.Contains(f.Message, w.message) {
					t.Errorf("finding %+v, want threshold %v, triggered %v, message with %q", f, w.threshold, w.triggered, w.message)
				}
			}
		})
	}
}
