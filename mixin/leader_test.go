package mixin

import "testing"

func TestBridgeExprReadsServerWideSeriesOverTheWindow(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`max by (cluster) (pg_replication_lag_seconds) > 60`,
			`max by (cluster) (last_over_time(pg_replication_lag_seconds[2m])) > 60`},
		{`max(pg_stat_user_tables_n_dead_tup{datname="shop", relname=~"pg_.*"}) > 1`,
			`max(last_over_time(pg_stat_user_tables_n_dead_tup{datname="shop", relname=~"pg_.*"}[2m])) > 1`},
		// Range selectors span the gap already; every sidecar exports pg_up and its own.
		{`increase(pg_stat_database_deadlocks [10m]) > 0`, `increase(pg_stat_database_deadlocks [10m]) > 0`},
		{`pg_scrape_collector_success == 0 unless on (job, instance) (pg_up == 0)`,
			`pg_scrape_collector_success == 0 unless on (job, instance) (pg_up == 0)`},
		{`avg_over_time(pg_exporter_last_scrape_error[30m]) > 0.1`, `avg_over_time(pg_exporter_last_scrape_error[30m]) > 0.1`},
		{`pgsidecar_connection_ceiling > 0`, `pgsidecar_connection_ceiling > 0`},
		{`label_replace(up, "x", "pg_up_fake", "", "")`, `label_replace(up, "x", "pg_up_fake", "", "")`},
	} {
		if got := bridgeExpr(tc.in, "2m"); got != tc.want {
			t.Errorf("bridgeExpr(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}
