package mixin

import "testing"

// TestScopeExpr pins the rewrite every rule goes through: the selector on each series (not on
// recorded ones, label names or strings), pg_* series joined with JoinSeries (a range selector
// around the function that reads it), the cluster label renamed in grouping lists only.
func TestScopeExpr(t *testing.T) {
	c := Config{Selector: `job="db"`, ClusterLabel: "k8s_cluster"}
	for _, tc := range []struct{ in, want string }{
		{`pg_up == 0`, `(pg_up{job="db"} and on (job, instance) pgsidecar_build_info{job="db"}) == 0`},
		{`max by (cluster) (pg_x) > 1`, `max by (k8s_cluster) (pg_x{job="db"} and on (job, instance) pgsidecar_build_info{job="db"}) > 1`},
		{`max by (cluster, datname) (rate(pg_y[5m] offset 1d)) > 0`,
			`max by (k8s_cluster, datname) (rate(pg_y{job="db"}[5m] offset 1d) and on (job, instance) last_over_time(pgsidecar_build_info{job="db"}[5m])) > 0`},
		{`max(rate(pg_a[5m]) + rate(pg_b[5m]))`,
			`max((rate(pg_a{job="db"}[5m]) and on (job, instance) last_over_time(pgsidecar_build_info{job="db"}[5m])) + (rate(pg_b{job="db"}[5m]) and on (job, instance) last_over_time(pgsidecar_build_info{job="db"}[5m])))`},
		{`sum without (state) (pgsidecar_pool_connections{state="used"}) / pool:pgsidecar_x:rate5m`,
			`sum without (state) (pgsidecar_pool_connections{state="used", job="db"}) / pool:pgsidecar_x:rate5m`},
		{`histogram_quantile(0.99, sum by (cluster, le) (rate(pgsidecar_h_bucket[30m])))`,
			`histogram_quantile(0.99, sum by (k8s_cluster, le) (rate(pgsidecar_h_bucket{job="db"}[30m])))`},
		{`a / on (cluster) group_left (text) b{x="pg_up"}`, `a{job="db"} / on (k8s_cluster) group_left (text) b{x="pg_up", job="db"}`},
		{`up{job=~".*pgsidecar.*"} == 0`, `up{job=~".*pgsidecar.*", job="db"} == 0`},
		{`time() - 1e3 > bool 5`, `time() - 1e3 > bool 5`},
	} {
		got, err := c.scopeExpr(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}

	// The defaults change nothing but the joins.
	d := Config{ClusterLabel: defaultClusterLabel}
	in := "max by (cluster) (\n  pgsidecar_a{pool=\"x\"}\n)"
	if got, _ := d.scopeExpr(in); got != in {
		t.Errorf("default config rewrote %q to %q", in, got)
	}
	if _, err := d.scopeExpr(`pg_a[5m]`); err == nil {
		t.Error("a pg_* range selector outside a function call: no error")
	}
}
