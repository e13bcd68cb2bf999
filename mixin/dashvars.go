package mixin

import (
	"fmt"
	"strings"
)

// The dashboards' cluster variable and the configured selector: every query of a dashboard
// selects by both, through dashSel.

// clusterVar is the dashboards' cluster variable, the values of ClusterLabel on metric.
func (c Config) clusterVar(metric string) Variable {
	v := queryVar("cluster", "Cluster", metric, c.Selector)
	src := metric
	if c.Selector != "" {
		src += "{" + c.Selector + "}"
	}
	v.Query = fmt.Sprintf("label_values(%s, %s)", src, c.ClusterLabel)
	v.Definition = v.Query
	return v
}

// dashSel is the selector of a dashboard's queries: the cluster variable, own (the dashboard's
// other variables) and the configured selector. "All" is the regular expression .*, which also
// matches series without the cluster label, so a setup that sets none sees everything.
func (c Config) dashSel(own string) string {
	parts := []string{c.ClusterLabel + `=~"$cluster"`}
	if own != "" {
		parts = append(parts, own)
	}
	if c.Selector != "" {
		parts = append(parts, c.Selector)
	}
	return strings.Join(parts, ", ")
}

// cluster names the cluster label (CL) in a query and its legend.
func (x q) cluster(c Config) q {
	return q{strings.ReplaceAll(x.expr, "CL", c.ClusterLabel), strings.ReplaceAll(x.legend, "CL", c.ClusterLabel)}
}
