// Package thresholds holds the alert thresholds shared by the API's findings
// (/api/database/performance) and the Prometheus rules and Grafana dashboards that mixin
// generates, so that changing one value changes the alert, the line drawn on its panel and the
// finding together.
//
// It imports nothing of pgsidecar's, so that api (a feature package) and mixin (the generator)
// can both depend on it without depending on each other.
package thresholds

import "time"

// Table is one set of alert thresholds. alerts/README.md documents each field and the alerts
// that use it.
type Table struct {
	// ErrorRatio is the query error ratio (errors / queries) above which a pool alerts.
	ErrorRatio float64
	// MinQueryRate (queries/s) guards the ratio alerts against a handful of queries: the plain
	// error ratio and latency alerts need this rate over 5m, each burn rate window pair over its
	// long window (1h, 6h, 1d, 3d).
	MinQueryRate float64
	// AvgLatencySeconds is the mean query duration above which a pool alerts.
	AvgLatencySeconds float64
	// PoolUtilization is the used/max connection ratio of one pool above which it alerts.
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
}

// Default returns the thresholds pgsidecar ships: the API reports against them and the
// committed rules and dashboards are generated from them.
func Default() Table {
	return Table{
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
	}
}

// AvgLatency is AvgLatencySeconds as a duration, for comparing with measured latencies.
func (t Table) AvgLatency() time.Duration {
	return time.Duration(t.AvgLatencySeconds * float64(time.Second))
}
