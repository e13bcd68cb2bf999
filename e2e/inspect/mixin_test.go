package inspect

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/mixin"
)

const root = "../.."

func TestDashboardLint(t *testing.T) {
	dashboards, err := LoadDashboards(root)
	if err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	for name, d := range dashboards {
		t.Run(name, func(t *testing.T) {
			if _, ok := d["__inputs"]; ok {
				t.Error("has __inputs: file provisioning cannot fill them; use the datasource variable")
			}
			uid, _ := d["uid"].(string)
			title, _ := d["title"].(string)
			if uid == "" || title == "" {
				t.Errorf("uid %q and title %q must be set", uid, title)
			}
			if other, dup := uids[uid]; dup {
				t.Errorf("uid %q also used by %s", uid, other)
			}
			uids[uid] = name

			vars := map[string]map[string]any{}
			tmpl, _ := d["templating"].(map[string]any)
			list, _ := tmpl["list"].([]any)
			for _, v := range list {
				vm, _ := v.(map[string]any)
				n, _ := vm["name"].(string)
				vars[n] = vm
			}
			ds := vars["datasource"]
			if ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
				t.Errorf("needs a variable named datasource of type datasource for prometheus, got %v", ds)
			}
			for _, want := range []string{"job", "instance"} {
				if vars[want] == nil {
					t.Errorf("missing variable %s", want)
				}
			}
			checkDatasources(t, d, "")

			for _, p := range Panels(d) {
				title, _ := p["title"].(string)
				if p["type"] == "row" {
					continue
				}
				desc, _ := p["description"].(string)
				if strings.TrimSpace(desc) == "" {
					t.Errorf("panel %q has no description", title)
				}
				fc, _ := p["fieldConfig"].(map[string]any)
				def, _ := fc["defaults"].(map[string]any)
				if u, _ := def["unit"].(string); u == "" {
					t.Errorf("panel %q has no unit", title)
				}
				if ts, _ := p["targets"].([]any); len(ts) == 0 {
					t.Errorf("panel %q has no queries", title)
				}
			}
		})
	}
	for _, q := range DashboardQueries(dashboards) {
		expr := Substitute(q.Expr, "1m")
		e, err := Parse(expr)
		if err != nil {
			t.Errorf("%s / %s: %v\n%s", q.Dashboard, q.Panel, err, expr)
			continue
		}
		checkRanges(t, q, e)
	}
}

// checkDatasources walks the JSON: every datasource reference must be the ${datasource}
// variable (or Grafana's own annotations source), never a hard-coded uid.
func checkDatasources(t *testing.T, v any, path string) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if k == "datasource" {
				switch ref := c.(type) {
				case string:
					if !strings.HasPrefix(ref, "$") {
						t.Errorf("%s: hard-coded datasource %q", path, ref)
					}
				case map[string]any:
					uid, _ := ref["uid"].(string)
					if uid != "${datasource}" && uid != "$datasource" && uid != "-- Grafana --" {
						t.Errorf("%s: datasource uid %q is not the datasource variable", path, uid)
					}
				}
				continue
			}
			checkDatasources(t, c, path+"."+k)
		}
	case []any:
		for i, c := range x {
			checkDatasources(t, c, path+"["+string(rune('0'+i%10))+"]")
		}
	}
}

// checkRanges: rate-like functions use $__rate_interval, or a window of at least 10m that the
// panel means on purpose (burn rate windows, "in the last 10 minutes").
func checkRanges(t *testing.T, q Query, e parser.Expr) {
	t.Helper()
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		ms, ok := n.(*parser.MatrixSelector)
		if !ok {
			return nil
		}
		if ms.Range != time.Minute && ms.Range < 10*time.Minute {
			t.Errorf("%s / %s: range [%s]: use $__rate_interval or a deliberate window of 10m or more", q.Dashboard, q.Panel, ms.Range)
		}
		return nil
	})
	if strings.Contains(q.Expr, "[1m]") {
		t.Errorf("%s / %s: hard-coded [1m]; use $__rate_interval", q.Dashboard, q.Panel)
	}
}

// drawnThreshold is an alert threshold and the quantity it bounds. The panels showing that
// quantity are those whose queries select every one of metrics and whose unit is unit; each of
// them must draw the threshold.
type drawnThreshold struct {
	name    string
	value   float64
	unit    string
	metrics []string
}

func drawnThresholds(c mixin.Config) []drawnThreshold {
	errs := []string{"pgsidecar_query_errors_total", "pgsidecar_query_duration_seconds_count"}
	out := []drawnThreshold{
		{"PoolUtilization", c.PoolUtilization, "percentunit", []string{"pgsidecar_pool_connections", "pgsidecar_pool_max_connections"}},
		{"ErrorRatio", c.ErrorRatio, "percentunit", errs},
		{"AvgLatencySeconds", c.AvgLatencySeconds, "s", []string{"pgsidecar_query_duration_seconds_sum", "pgsidecar_query_duration_seconds_count"}},
		{"SlowQueriesPer10m", c.SlowQueriesPer10m, "short", []string{"pgsidecar_slow_queries_total"}},
		{"ServerConnectionUtilization (backends)", c.ServerConnectionUtilization, "percentunit", []string{"pg_server_connection_utilization_ratio"}},
		{"ServerConnectionUtilization (ceilings)", c.ServerConnectionUtilization, "percentunit", []string{"pgsidecar_connection_ceiling", "pgsidecar_server_connections_allowed"}},
		{"LongTransactionSeconds", c.LongTransactionSeconds, "s", []string{"pg_stat_activity_oldest_xact_seconds"}},
		{"IdleInTransactionSeconds", c.IdleInTransactionSeconds, "s", []string{"pg_stat_activity_idle_in_transaction_max_seconds"}},
		{"CacheHitRatio", c.CacheHitRatio, "percentunit", []string{"pg_stat_database_blks_hit", "pg_stat_database_blks_read"}},
		{"ProxyClientWaitSeconds", c.ProxyClientWaitSeconds, "s", []string{"pgsidecar_proxy_client_wait_seconds_bucket"}},
		{"ReplicationLagSeconds", c.ReplicationLagSeconds, "s", []string{"pg_replication_lag_seconds"}},
		{"InactiveSlotRetainedBytes", c.InactiveSlotRetainedBytes, "bytes", []string{"pg_replication_slots_pg_wal_lsn_diff"}},
		{"DeadTupleRatio", c.DeadTupleRatio, "percentunit", []string{"pg_stat_user_tables_n_dead_tup", "pg_stat_user_tables_n_live_tup"}},
		{"RequestedCheckpointRatio", c.RequestedCheckpointRatio, "percentunit", []string{"pg_stat_bgwriter_checkpoints_req_total", "pg_stat_bgwriter_checkpoints_timed_total"}},
		{"ScrapeErrorRatio", c.ScrapeErrorRatio, "percentunit", []string{"pg_exporter_last_scrape_error"}},
		// Fixed by design: any deadlock alerts (drawn at 1); health and pg_up alert at 0 (red under 1).
		{"any deadlock", 1, "short", []string{"pg_stat_database_deadlocks"}},
		{"health check up", 1, "none", []string{"pgsidecar_health_check_up"}},
		{"pg_up", 1, "none", []string{"pg_up"}},
	}
	for _, w := range mixin.BurnWindows {
		if w.Severity == "critical" {
			out = append(out, drawnThreshold{"page burn rate " + w.Long + "/" + w.Short, w.Factor, "short", errs})
		}
	}
	return out
}

// checkThresholdsDrawn: every alert threshold is drawn on each panel that shows its quantity
// (and on at least one), and every threshold a panel draws is one of its quantity's.
func checkThresholdsDrawn(t *testing.T, c mixin.Config, dashboards map[string]map[string]any) {
	t.Helper()
	type panel struct {
		where   string
		unit    string
		metrics map[string]bool
		steps   []float64
	}
	var panels []panel
	for name, d := range dashboards {
		for _, p := range Panels(d) {
			if p["type"] == "row" {
				continue
			}
			title, _ := p["title"].(string)
			fc, _ := p["fieldConfig"].(map[string]any)
			def, _ := fc["defaults"].(map[string]any)
			th, _ := def["thresholds"].(map[string]any)
			ss, _ := th["steps"].([]any)
			x := panel{where: name + " / " + title, metrics: map[string]bool{}}
			x.unit, _ = def["unit"].(string)
			for _, s := range ss {
				if v, ok := s.(map[string]any)["value"].(float64); ok {
					x.steps = append(x.steps, v)
				}
			}
			ts, _ := p["targets"].([]any)
			for _, tg := range ts {
				e, _ := tg.(map[string]any)["expr"].(string)
				ms, err := MetricNames(Substitute(e, "1m"))
				if err != nil {
					t.Fatalf("%s: %v", x.where, err)
				}
				for _, m := range ms {
					x.metrics[m] = true
				}
			}
			panels = append(panels, x)
		}
	}
	sort.Slice(panels, func(i, j int) bool { return panels[i].where < panels[j].where })
	shows := func(p panel, d drawnThreshold) bool {
		if p.unit != d.unit {
			return false
		}
		for _, m := range d.metrics {
			if !p.metrics[m] {
				return false
			}
		}
		return true
	}
	ths := drawnThresholds(c)
	for _, d := range ths {
		n := 0
		for _, p := range panels {
			if !shows(p, d) {
				continue
			}
			n++
			if !slices.Contains(p.steps, d.value) {
				t.Errorf("%s shows %v (%s) but does not draw threshold %s = %v (draws %v)", p.where, d.metrics, d.unit, d.name, d.value, p.steps)
			}
		}
		if n == 0 {
			t.Errorf("no panel shows %v in unit %s to draw threshold %s = %v on", d.metrics, d.unit, d.name, d.value)
		}
	}
	for _, p := range panels {
		for _, v := range p.steps {
			ok := false
			for _, d := range ths {
				ok = ok || (d.value == v && shows(p, d))
			}
			if !ok {
				t.Errorf("%s draws %v, which is no threshold of the quantity it shows (%s of %v)", p.where, v, p.unit, slices.Sorted(maps.Keys(p.metrics)))
			}
		}
	}
}

// TestThresholdsDrawn checks the committed dashboards against the thresholds of mixin.Default,
// and the dashboards generated from a configuration whose thresholds all differ, so that two
// equal defaults (80 % pool and server utilisation) cannot hide a threshold wired to the wrong
// panel.
func TestThresholdsDrawn(t *testing.T) {
	t.Run("committed", func(t *testing.T) {
		dashboards, err := LoadDashboards(root)
		if err != nil {
			t.Fatal(err)
		}
		checkThresholdsDrawn(t, mixin.Default, dashboards)
	})
	t.Run("distinct thresholds", func(t *testing.T) {
		c := mixin.Default
		c.ErrorRatio, c.AvgLatencySeconds, c.PoolUtilization, c.ServerConnectionUtilization = 0.03, 0.7, 0.71, 0.77
		c.LongTransactionSeconds, c.IdleInTransactionSeconds, c.CacheHitRatio, c.SlowQueriesPer10m = 321, 43, 0.93, 17
		c.ProxyClientWaitSeconds, c.ReplicationLagSeconds, c.InactiveSlotRetainedBytes = 0.35, 47, 3<<20
		c.DeadTupleRatio, c.RequestedCheckpointRatio, c.ScrapeErrorRatio = 0.23, 0.61, 0.13
		seen := map[float64]string{}
		for _, d := range drawnThresholds(c) {
			if other, dup := seen[d.value]; dup && d.value != 1 && !strings.HasPrefix(d.name, "ServerConnectionUtilization") {
				t.Fatalf("thresholds %s and %s are both %v: pick distinct values", d.name, other, d.value)
			}
			seen[d.value] = d.name
		}
		dashboards := map[string]map[string]any{}
		for _, d := range c.Dashboards() {
			b, err := mixin.DashboardJSON(d)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			dashboards[filepath.Base(mixin.DashboardPath(d))] = m
		}
		checkThresholdsDrawn(t, c, dashboards)
	})
}

var camel = regexp.MustCompile(`^PgSidecar[A-Z][A-Za-z0-9]+$`)

func TestRuleConventions(t *testing.T) {
	f, err := LoadRules(root)
	if err != nil {
		t.Fatal(err)
	}
	runbooks, err := os.ReadFile(filepath.Join(root, "docs", "runbooks.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(runbooks), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors[strings.ToLower(strings.TrimSpace(h))] = true
		}
	}
	alerts := f.Alerts()
	if len(alerts) < 15 {
		t.Fatalf("only %d alerts", len(alerts))
	}
	seen := map[string]bool{}
	for _, a := range alerts {
		if !camel.MatchString(a.Alert) {
			t.Errorf("%s: not CamelCase with the PgSidecar prefix", a.Alert)
		}
		if seen[a.Alert] {
			t.Errorf("%s: defined twice", a.Alert)
		}
		seen[a.Alert] = true
		if !slices.Contains([]string{"critical", "warning", "info"}, a.Labels["severity"]) {
			t.Errorf("%s: severity %q", a.Alert, a.Labels["severity"])
		}
		s := a.Annotations["summary"]
		if s == "" || strings.Contains(s, "{{") || !strings.HasSuffix(s, ".") {
			t.Errorf("%s: summary %q must be a plain sentence", a.Alert, s)
		}
		if d := a.Annotations["description"]; !strings.Contains(d, "{{") {
			t.Errorf("%s: description %q should say which series (templated)", a.Alert, d)
		}
		u := a.Annotations["runbook_url"]
		base, anchor, _ := strings.Cut(u, "#")
		if base != mixin.Default.RunbookURL || !anchors[anchor] || anchor != strings.ToLower(a.Alert) {
			t.Errorf("%s: runbook_url %q has no matching '## %s' section in docs/runbooks.md", a.Alert, u, a.Alert)
		}
		if _, err := Parse(a.Expr); err != nil {
			t.Errorf("%s: %v", a.Alert, err)
		}
	}
}

// promtoolTests is the part of promtool's test file format this check reads.
type promtoolTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestEveryAlertHasFiringAndQuietTests: promtool passing means little if an alert has no test
// in which it fires and one in which it stays quiet.
func TestEveryAlertHasFiringAndQuietTests(t *testing.T) {
	f, err := LoadRules(root)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "alerts", "tests", "*.test.yml"))
	if len(files) == 0 {
		t.Fatal("no promtool tests under alerts/tests")
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var pt promtoolTests
		if err := yaml.Unmarshal(b, &pt); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, g := range pt.Tests {
			for _, a := range g.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
	}
	for _, a := range f.Alerts() {
		if !fires[a.Alert] {
			t.Errorf("%s: no promtool test where it fires", a.Alert)
		}
		if !quiet[a.Alert] {
			t.Errorf("%s: no promtool test where it stays quiet", a.Alert)
		}
	}
}

func TestMetricNames(t *testing.T) {
	got, err := MetricNames(`sum(rate(a_total{x="1"}[5m])) / on() b + {__name__="c"} + rate(a_total[1m])`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a_total", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("MetricNames = %v, want %v", got, want)
	}
	if s := Substitute(`rate(x{job=~"$job",i=~"${instance}"}[$__rate_interval])`, "2m"); s != `rate(x{job=~".*",i=~".*"}[2m])` {
		t.Errorf("Substitute = %s", s)
	}
}
