package mixin

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

const root = "../.."

// TestGeneratedFilesUpToDate fails when the committed rules or dashboards differ from what the
// generator writes, i.e. someone edited one side only.
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := Default.Files()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range files {
		got, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what e2e/mixin generates; run `go run ./cmd/mixin -root ..` in e2e/ (or port the edit to e2e/mixin)", path)
		}
	}
}

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

// TestThresholdsDrawn: each alert threshold appears as a threshold step on a dashboard panel.
func TestThresholdsDrawn(t *testing.T) {
	dashboards, err := LoadDashboards(root)
	if err != nil {
		t.Fatal(err)
	}
	steps := map[float64]bool{}
	for _, d := range dashboards {
		for _, p := range Panels(d) {
			fc, _ := p["fieldConfig"].(map[string]any)
			def, _ := fc["defaults"].(map[string]any)
			th, _ := def["thresholds"].(map[string]any)
			ss, _ := th["steps"].([]any)
			for _, s := range ss {
				if v, ok := s.(map[string]any)["value"].(float64); ok {
					steps[v] = true
				}
			}
		}
	}
	c := Default
	for name, v := range map[string]float64{
		"ErrorRatio": c.ErrorRatio, "AvgLatencySeconds": c.AvgLatencySeconds, "PoolUtilization": c.PoolUtilization,
		"ServerConnectionUtilization": c.ServerConnectionUtilization, "LongTransactionSeconds": c.LongTransactionSeconds,
		"IdleInTransactionSeconds": c.IdleInTransactionSeconds, "CacheHitRatio": c.CacheHitRatio,
		"SlowQueriesPer10m": c.SlowQueriesPer10m, "page burn rate": BurnWindows[0].Factor,
	} {
		if !steps[v] {
			t.Errorf("threshold %s = %v is not drawn on any panel", name, v)
		}
	}
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
		if base != Default.RunbookURL || !anchors[anchor] || anchor != strings.ToLower(a.Alert) {
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
