package inspect

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonnet "github.com/google/go-jsonnet"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/mixin"
)

// evalMixin evaluates mixin/mixin.libsonnet with go-jsonnet, with a _config override (jsonnet
// object text, or ""), and returns its rule groups (recording, then alerting) and dashboards as
// plain JSON values.
func evalMixin(t *testing.T, config string) (groups []any, dashboards map[string]any) {
	t.Helper()
	vm := jsonnet.MakeVM()
	vm.Importer(&jsonnet.FileImporter{JPaths: []string{filepath.Join(root, "mixin")}})
	if config == "" {
		config = "{}"
	}
	out, err := vm.EvaluateAnonymousSnippet("test.jsonnet", `
local m = (import 'mixin.libsonnet') + { _config+:: `+config+` };
{ groups: m.prometheusRules.groups + m.prometheusAlerts.groups, dashboards: m.grafanaDashboards }`)
	if err != nil {
		t.Fatalf("jsonnet: %v", err)
	}
	var v struct {
		Groups     []any          `json:"groups"`
		Dashboards map[string]any `json:"dashboards"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	return v.Groups, v.Dashboards
}

// plain turns a value into what JSON makes of it, so values read from YAML, JSON and jsonnet
// compare equal when they say the same.
func plain(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// goMixin is what the Go mixin generates for c, as plain JSON values.
func goMixin(t *testing.T, c mixin.Config) (groups []any, dashboards map[string]any) {
	t.Helper()
	var f any
	y, err := yaml.Marshal(c.Rules())
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(y, &f); err != nil {
		t.Fatal(err)
	}
	groups = plain(t, f).(map[string]any)["groups"].([]any)
	dashboards = map[string]any{}
	for _, d := range c.Dashboards() {
		dashboards[d.UID+".json"] = plain(t, d)
	}
	return groups, dashboards
}

func sameGroups(t *testing.T, what string, got, want []any) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d rule groups, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			g, _ := json.MarshalIndent(got[i], "", " ")
			w, _ := json.MarshalIndent(want[i], "", " ")
			t.Errorf("%s: rule group %d differs:\n got %s\nwant %s", what, i, g, w)
		}
	}
}

func sameDashboards(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d dashboards, want %d", what, len(got), len(want))
	}
	for name, w := range want {
		if !reflect.DeepEqual(got[name], w) {
			t.Errorf("%s: dashboard %s differs", what, name)
		}
	}
}

// TestMixinLibsonnetEqualsGeneratedFiles: the jsonnet mixin under its default _config evaluates
// to exactly the committed rule file and dashboards.
func TestMixinLibsonnetEqualsGeneratedFiles(t *testing.T) {
	groups, dashboards := evalMixin(t, "")

	b, err := os.ReadFile(filepath.Join(root, mixin.RulesPath))
	if err != nil {
		t.Fatal(err)
	}
	var f any
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	sameGroups(t, mixin.RulesPath, groups, plain(t, f).(map[string]any)["groups"].([]any))

	files, err := filepath.Glob(filepath.Join(root, "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	want := map[string]any{}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var d any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		want[filepath.Base(p)] = d
	}
	sameDashboards(t, "dashboards/", dashboards, want)
}

// joinSeries says whether e is the series only pgsidecar exports, alone or over a range
// (last_over_time, the join of a function of a range).
func joinSeries(e parser.Expr) bool {
	if c, ok := e.(*parser.Call); ok && c.Func.Name == "last_over_time" && len(c.Args) == 1 {
		if m, ok := c.Args[0].(*parser.MatrixSelector); ok {
			e = m.VectorSelector
		}
	}
	vs, ok := e.(*parser.VectorSelector)
	return ok && vs.Name == mixin.JoinSeries
}

// TestMixinLibsonnetConfig sets every _config field and checks the jsonnet mixin against the Go
// mixin with the same settings, and that the settings reach every rule and dashboard query: the
// selector on every series, the cluster label in place of "cluster", every pg_* series joined
// with the series only pgsidecar exports.
func TestMixinLibsonnetConfig(t *testing.T) {
	c := mixin.Default
	c.Selector = `job="db", env!="dev"`
	c.ClusterLabel = "k8s_cluster"
	c.SidecarSelector = `job="sidecars"`
	groups, dashboards := evalMixin(t, `{ selector: 'job="db", env!="dev"', clusterLabel: 'k8s_cluster', sidecarSelector: 'job="sidecars"' }`)
	wantGroups, wantDashboards := goMixin(t, c)
	sameGroups(t, "_config", groups, wantGroups)
	sameDashboards(t, "_config", dashboards, wantDashboards)

	rules := 0
	for _, g := range c.Rules().Groups {
		for _, r := range g.Rules {
			rules++
			name := r.Alert + r.Record
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, r.Expr)
			}
			checkScoped(t, name, expr)
			for k, v := range r.Annotations {
				if strings.Contains(v, "$labels.cluster ") || strings.Contains(v, "$labels.cluster}") {
					t.Errorf("%s: annotation %s names $labels.cluster, not the configured label", name, k)
				}
			}
		}
	}
	if rules < 20 {
		t.Fatalf("only %d rules", rules)
	}

	for _, d := range c.Dashboards() {
		for _, v := range d.Templating.List {
			if v.Name == "cluster" && v.Query != `label_values(pgsidecar_pool_max_connections{job="db", env!="dev"}, k8s_cluster)` &&
				v.Query != `label_values(pg_up{job="db", env!="dev"}, k8s_cluster)` {
				t.Errorf("%s: cluster variable %q", d.UID, v.Query)
			}
		}
	}
	for _, q := range DashboardQueries(map[string]map[string]any{"pool": plain(t, c.Dashboards()[0]).(map[string]any), "pg": plain(t, c.Dashboards()[1]).(map[string]any)}) {
		if q.Panel == "variable cluster" {
			continue // checked above
		}
		if !strings.Contains(q.Expr, `k8s_cluster=~"$cluster"`) || !strings.Contains(q.Expr, `job="db", env!="dev"`) {
			t.Errorf("%s / %s: a query without the cluster variable or the selector: %s", q.Dashboard, q.Panel, q.Expr)
		}
	}
}

// checkScoped fails when a series selector of expr lacks the configured selector, a grouping
// names the "cluster" label, or a pg_* series is not on the left of an
// `and on (job, instance) pgsidecar_build_info`.
func checkScoped(t *testing.T, rule string, expr parser.Expr) {
	t.Helper()
	joined := map[*parser.VectorSelector]bool{}
	var all []*parser.VectorSelector
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch x := n.(type) {
		case *parser.VectorSelector:
			all = append(all, x)
		case *parser.AggregateExpr:
			for _, l := range x.Grouping {
				if l == "cluster" {
					t.Errorf("%s: groups by cluster, not the configured label", rule)
				}
			}
		case *parser.BinaryExpr:
			if x.VectorMatching != nil {
				for _, l := range x.VectorMatching.MatchingLabels {
					if l == "cluster" {
						t.Errorf("%s: matches on cluster, not the configured label", rule)
					}
				}
			}
			if x.Op == parser.LAND && joinSeries(x.RHS) && x.VectorMatching != nil &&
				x.VectorMatching.On && reflect.DeepEqual(x.VectorMatching.MatchingLabels, []string{"job", "instance"}) {
				parser.Inspect(x.LHS, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok {
						joined[vs] = true
					}
					return nil
				})
			}
		}
		return nil
	})
	for _, vs := range all {
		if strings.Contains(vs.Name, ":") {
			continue // a recorded series, made from selected ones
		}
		has := map[string]bool{}
		for _, m := range vs.LabelMatchers {
			has[m.String()] = true
		}
		if !has[`job="db"`] || !has[`env!="dev"`] {
			t.Errorf("%s: series %s lacks the selector", rule, vs)
		}
		if strings.HasPrefix(vs.Name, "pg_") && !joined[vs] {
			t.Errorf("%s: series %s is not joined with %s", rule, vs, mixin.JoinSeries)
		}
	}
}
