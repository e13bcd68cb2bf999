// Package inspect reads the committed rule file and dashboards the way Prometheus and Grafana
// would: it parses their PromQL, which needs Prometheus itself and so stays out of the main
// module.
package inspect

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/mixin"
)

// Query is one PromQL expression found in a committed dashboard.
type Query struct {
	Dashboard string // file name
	Panel     string // panel title, or "variable NAME"
	Expr      string // as committed, with Grafana variables
}

// LoadDashboards reads every dashboards/*.json under root as generic JSON, so that hand edits
// are checked too, not only what the generator would write.
func LoadDashboards(root string) (map[string]map[string]any, error) {
	files, err := filepath.Glob(filepath.Join(root, "dashboards", "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no dashboards under %s", filepath.Join(root, "dashboards"))
	}
	out := map[string]map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		out[filepath.Base(f)] = d
	}
	return out, nil
}

// Panels returns a dashboard's panels, including those nested in collapsed rows.
func Panels(d map[string]any) []map[string]any {
	var out []map[string]any
	var walk func(list any)
	walk = func(list any) {
		ps, _ := list.([]any)
		for _, p := range ps {
			m, ok := p.(map[string]any)
			if !ok {
				continue
			}
			out = append(out, m)
			walk(m["panels"])
		}
	}
	walk(d["panels"])
	return out
}

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// DashboardQueries lists every PromQL expression of the dashboards: panel targets and the
// series selectors of label_values variables.
func DashboardQueries(dashboards map[string]map[string]any) []Query {
	var out []Query
	names := make([]string, 0, len(dashboards))
	for n := range dashboards {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		d := dashboards[name]
		for _, p := range Panels(d) {
			ts, _ := p["targets"].([]any)
			for _, t := range ts {
				tm, _ := t.(map[string]any)
				if e, ok := tm["expr"].(string); ok {
					title, _ := p["title"].(string)
					out = append(out, Query{Dashboard: name, Panel: title, Expr: e})
				}
			}
		}
		tmpl, _ := d["templating"].(map[string]any)
		vars, _ := tmpl["list"].([]any)
		for _, v := range vars {
			vm, _ := v.(map[string]any)
			if vm["type"] != "query" {
				continue
			}
			qs, _ := vm["query"].(string)
			if m := labelValues.FindStringSubmatch(strings.TrimSpace(qs)); m != nil {
				out = append(out, Query{Dashboard: name, Panel: fmt.Sprintf("variable %v", vm["name"]), Expr: m[1]})
			} else {
				out = append(out, Query{Dashboard: name, Panel: fmt.Sprintf("variable %v", vm["name"]), Expr: qs})
			}
		}
	}
	return out
}

var grafanaVar = regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?`)

// Substitute replaces Grafana's variables the way Grafana would with "All" selected: rate
// intervals by rateInterval, template variables by ".*".
func Substitute(expr, rateInterval string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		name := strings.Trim(v, "${}")
		switch name {
		case "__rate_interval", "__interval", "__range":
			return rateInterval
		case "__range_s", "__interval_s":
			return "60"
		}
		return ".*"
	})
}

var promql = parser.NewParser(parser.Options{})

// Parse parses a PromQL expression.
func Parse(expr string) (parser.Expr, error) { return promql.ParseExpr(expr) }

// MetricNames returns the metric names an expression selects.
func MetricNames(expr string) ([]string, error) {
	e, err := Parse(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == "__name__" && name == "" {
					name = m.Value
				}
			}
			if name != "" {
				seen[name] = true
			}
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// LoadRules reads the committed rule file under root.
func LoadRules(root string) (mixin.RuleFile, error) {
	var f mixin.RuleFile
	b, err := os.ReadFile(filepath.Join(root, mixin.RulesPath))
	if err != nil {
		return f, err
	}
	err = yaml.Unmarshal(b, &f)
	return f, err
}
