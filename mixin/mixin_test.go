package mixin

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/thresholds"
)

// TestGeneratedFilesUpToDate fails when the committed rules or dashboards differ from what the
// generator writes, i.e. someone edited one side only.
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := Default.Files()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range files {
		got, err := os.ReadFile(filepath.Join("..", path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what mixin/ generates; run `make mixin` (or port the edit to mixin/)", path)
		}
	}
}

// TestDefaultIsTheSharedTable: the rules and dashboards are generated from the same thresholds
// the API reports against.
func TestDefaultIsTheSharedTable(t *testing.T) {
	if Default.Table != thresholds.Default() {
		t.Errorf("mixin.Default.Table = %+v, want thresholds.Default() %+v", Default.Table, thresholds.Default())
	}
}

// TestAlertsFollowThresholds generates the rules from a table whose thresholds all differ from
// the defaults and from each other: each alert's expression must compare against its own
// threshold, so a literal in rules.go, or a threshold wired to the wrong alert, fails here.
func TestAlertsFollowThresholds(t *testing.T) {
	c := Default
	c.Table = thresholds.Table{
		ErrorRatio:                  0.03,
		MinQueryRate:                0.25,
		AvgLatencySeconds:           0.7,
		PoolUtilization:             0.71,
		ServerConnectionUtilization: 0.77,
		LongTransactionSeconds:      321,
		IdleInTransactionSeconds:    43,
		CacheHitRatio:               0.93,
		MinBlockRate:                12,
		SlowQueriesPer10m:           17,
		ErrorObjective:              0.995,

		ProxyClientWaitSeconds: 0.35,

		ReplicationLagSeconds:     47,
		InactiveSlotRetainedBytes: 3 << 20,
		DeadTupleRatio:            0.23,
		MinDeadTuples:             777,
		RequestedCheckpointRatio:  0.61,
		MinRequestedCheckpoints:   4,
		ScrapeErrorRatio:          0.13,

		StatementLatencyFactor:     2.5,
		StatementLatencyMinSeconds: 0.07,
	}
	exprs := map[string]string{}
	for _, a := range c.Rules().Alerts() {
		exprs[a.Alert] = a.Expr
	}
	for _, tc := range []struct {
		alert string
		want  []string
	}{
		{"PgSidecarQueryErrorRateHigh", []string{"> 0.03\n", "> 0.25"}},
		{"PgSidecarQueryLatencyHigh", []string{"> 0.7\n", "> 0.25"}},
		{"PgSidecarPoolUtilizationHigh", []string{"> 0.71"}},
		{"PgSidecarSlowQueries", []string{"> 17"}},
		{"PgSidecarServerConnectionsOvercommitted", []string{"> 0.77"}},
		{"PgSidecarServerConnectionUtilizationHigh", []string{"> 0.77"}},
		{"PgSidecarLongRunningTransaction", []string{"> 321"}},
		{"PgSidecarIdleInTransaction", []string{"> 43"}},
		{"PgSidecarCacheHitRatioLow", []string{"< 0.93\n", "> 12"}},
		{"PgSidecarProxyClientWaitHigh", []string{"[5m])) > 0.35\n", "_count[5m]) > 0.25"}},
		{"PgSidecarStatementLatencyRegression", []string{"2.5 * histogram_quantile", ") > 0.07\n", "[30m])) > 0.25", "offset 1d)) > 0.25"}},
		{"PgSidecarReplicationLagHigh", []string{"> 47"}},
		{"PgSidecarReplicationSlotInactive", []string{"> 3145728\n"}},
		{"PgSidecarDeadTuplesHigh", []string{"> 0.23\n", "> 777"}},
		{"PgSidecarCheckpointsRequested", []string{"> 0.61\n", ">= 4"}},
		{"PgSidecarExporterScrapeErrors", []string{"> 0.13\n"}},
		{"PgSidecarQueryErrorBudgetBurnFast", []string{"(14.4 * 0.005)", "(6 * 0.005)", "rate1h > 0.25", "rate6h > 0.25"}},
		{"PgSidecarQueryErrorBudgetBurnSlow", []string{"(3 * 0.005)", "(1 * 0.005)", "rate1d > 0.25", "rate3d > 0.25"}},
	} {
		expr, ok := exprs[tc.alert]
		if !ok {
			t.Errorf("no alert %s", tc.alert)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(expr, w) {
				t.Errorf("%s does not compare against its threshold %q:\n%s", tc.alert, w, expr)
			}
		}
	}
}
