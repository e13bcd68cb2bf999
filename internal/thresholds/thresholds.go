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
	// long window (1h, 6h, 1d, 3d). The proxy wait alert needs this many waits/s over 5m, the
	// statement latency alert this many calls/s of the statement now and one day earlier.
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

	// ProxyClientWaitSeconds is the 99th percentile wait of proxy clients for a server
	// connection above which the proxy alerts (PgBouncer's maxwait). Best a bucket bound of
	// pgsidecar_proxy_client_wait_seconds, where the percentile is exact.
	ProxyClientWaitSeconds float64

	// ReplicationLagSeconds is the replay lag of a replica that alerts.
	ReplicationLagSeconds float64
	// InactiveSlotRetainedBytes is the WAL an inactive replication slot may hold back before
	// it alerts.
	InactiveSlotRetainedBytes float64
	// DeadTupleRatio is the share of dead tuples (dead / (live + dead)) of a table that alerts
	// when it persists: autovacuum is not keeping up.
	DeadTupleRatio float64
	// MinDeadTuples guards the dead tuple alert against small tables.
	MinDeadTuples float64
	// RequestedCheckpointRatio is the share of requested (not timed) checkpoints over an hour
	// above which the server alerts: max_wal_size is too small for the write load.
	RequestedCheckpointRatio float64
	// MinRequestedCheckpoints is how many requested checkpoints an hour the checkpoint alert
	// needs at least, so that a manual CHECKPOINT or a base backup does not alert.
	MinRequestedCheckpoints float64
	// ScrapeErrorRatio is the share of the exporter's scrapes with an error over 30 minutes
	// that alerts.
	ScrapeErrorRatio float64

	// StatementLatencyFactor is how many times its own p99 of the same time one day earlier a
	// statement's p99 must reach to alert.
	StatementLatencyFactor float64
	// StatementLatencyMinSeconds is the p99 a statement must also exceed to alert, so that a
	// 1 ms statement taking 4 ms does not.
	StatementLatencyMinSeconds float64
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

		ProxyClientWaitSeconds: 0.5,

		ReplicationLagSeconds:     60,
		InactiveSlotRetainedBytes: 1 << 30,
		DeadTupleRatio:            0.2,
		MinDeadTuples:             10000,
		RequestedCheckpointRatio:  0.5,
		MinRequestedCheckpoints:   3,
		ScrapeErrorRatio:          0.1,

		StatementLatencyFactor:     3,
		StatementLatencyMinSeconds: 0.1,
	}
}

// AvgLatency is AvgLatencySeconds as a duration, for comparing with measured latencies.
func (t Table) AvgLatency() time.Duration {
	return time.Duration(t.AvgLatencySeconds * float64(time.Second))
}
