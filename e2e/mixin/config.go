// Package mixin generates pgsidecar's Prometheus rules and Grafana dashboards from one table of
// thresholds, so that an alert and the line drawn on its panel can never disagree.
//
// The generated files are committed (alerts/pgsidecar.rules.yml, dashboards/*.json); run
// `go run ./cmd/mixin -root ..` from the e2e module after changing anything here.
package mixin

import "time"

// Config is the single place where alert thresholds, the SLO objective and selectors live.
// alerts/README.md documents each field.
type Config struct {
	// SidecarSelector picks the sidecars' scrape targets for the "not scraped" alert.
	SidecarSelector string
	// RunbookURL is the base of every runbook_url; the alert name, lower-cased, is the anchor.
	RunbookURL string

	// ErrorRatio is the plain query error ratio alert threshold (seed: 5 %).
	ErrorRatio float64
	// MinQueryRate (queries/s) guards the ratio alerts against a handful of queries: the plain
	// error ratio and latency alerts need this rate over 5m, each burn rate window pair over its
	// long window (1h, 6h, 1d, 3d).
	MinQueryRate float64
	// AvgLatencySeconds is the average query latency threshold (seed: 500 ms).
	AvgLatencySeconds float64
	// PoolUtilization is the used/max connection ratio threshold of one pool (seed: 80 %).
	PoolUtilization float64
	// ServerConnectionUtilization is the threshold for backends / max_connections, and for the
	// summed pool maxima of all sidecars of one server / max_connections.
	ServerConnectionUtilization float64
	// LongTransactionSeconds is the age of the oldest open transaction that alerts.
	LongTransactionSeconds float64
	// IdleInTransactionSeconds is the age of the oldest idle-in-transaction session that alerts.
	IdleInTransactionSeconds float64
	// CacheHitRatio is the buffer cache hit ratio under which the info alert fires.
	CacheHitRatio float64
	// MinBlockRate (blocks/s) guards the cache hit ratio alert on idle databases.
	MinBlockRate float64
	// SlowQueriesPer10m is how many slow queries in 10 minutes alert.
	SlowQueriesPer10m float64
	// ErrorObjective is the query success objective of the error budget (burn rate) alerts.
	ErrorObjective float64

	// Durations an expression must hold before its alert fires.
	ForShort, ForMedium, ForLong time.Duration
}

// Default is the configuration the committed files are generated from.
var Default = Config{
	SidecarSelector: `job=~".*pgsidecar.*"`,
	RunbookURL:      "https://github.com/pgsidecar/pgsidecar/blob/main/docs/runbooks.md",

	ErrorRatio:                  0.05,
	MinQueryRate:                0.1,
	AvgLatencySeconds:           0.5,
	PoolUtilization:             0.8,
	ServerConnectionUtilization: 0.8,
	LongTransactionSeconds:      300,
	IdleInTransactionSeconds:    60,
	CacheHitRatio:               0.9,
	MinBlockRate:                10,
	SlowQueriesPer10m:           10,
	ErrorObjective:              0.999,

	ForShort:  time.Minute,
	ForMedium: 5 * time.Minute,
	ForLong:   15 * time.Minute,
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
