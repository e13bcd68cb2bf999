// Package mixin generates pgsidecar's Prometheus rules and Grafana dashboards from the shared
// thresholds table (internal/thresholds), so that an alert, the line drawn on its panel and the
// API's finding can never disagree.
//
// The generated files are committed (alerts/pgsidecar.rules.yml, dashboards/*.json); run
// `make mixin` after changing anything here or in the thresholds.
package mixin

import (
	"time"

	"github.com/pgsidecar/pgsidecar/internal/thresholds"
)

// Config is what the rules and dashboards are generated from: the shared alert thresholds, and
// the selector, runbook base and durations that only the rules need. alerts/README.md documents
// each field.
type Config struct {
	thresholds.Table

	// SidecarSelector picks the sidecars' scrape targets for the "not scraped" alert.
	SidecarSelector string
	// Selector is label matchers (`job="pgsidecar"`) every series of every rule and dashboard
	// query gets; empty by default. The pg_* series are told apart from postgres_exporter's by a
	// join (see JoinSeries), not by their job.
	Selector string
	// ClusterLabel is the label that groups the sidecars of one database server.
	ClusterLabel string
	// RunbookURL is the base of every runbook_url; the alert name, lower-cased, is the anchor.
	RunbookURL string

	// Durations an expression must hold before its alert fires.
	ForShort, ForMedium, ForLong time.Duration

	// LeaderChangeWindow is how long the alerts keep a server-wide pg_* series' last value
	// when it stops coming (leader.go).
	LeaderChangeWindow time.Duration
}

// Default is the configuration the committed files are generated from.
var Default = Config{
	Table: thresholds.Default(),

	SidecarSelector: `job=~".*pgsidecar.*"`,
	ClusterLabel:    defaultClusterLabel,
	RunbookURL:      "https://github.com/pgsidecar/pgsidecar/blob/main/docs/runbooks.md",

	ForShort:  time.Minute,
	ForMedium: 5 * time.Minute,
	ForLong:   15 * time.Minute,

	LeaderChangeWindow: 2 * time.Minute,
}

// BurnWindow is one multi-window burn rate condition of the SRE workbook: the error ratio over
// both the long and the short window must exceed Factor times the error budget.
type BurnWindow struct {
	Long, Short string
	Factor      float64
	Severity    string
}

// BurnWindows are the workbook's recommended pairs: the first two page, the last two open a
// ticket.
var BurnWindows = []BurnWindow{
	{"1h", "5m", 14.4, "critical"},
	{"6h", "30m", 6, "critical"},
	{"1d", "2h", 3, "warning"},
	{"3d", "6h", 1, "warning"},
}
