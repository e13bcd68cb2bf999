package collector

import (
	"context"
)

func init() {
	register("replication", true, "Whether the server is a replica and how far its replay lags behind",
		func(Options) Collector { return newReplication() })
}

// replication follows postgres_exporter's replication collector: on a primary both ages read 0
// and is_replica 0.
type replication struct {
	q rowQuery
}

func newReplication() *replication {
	return &replication{q: rowQuery{
		cols: []column{
			gauge(`CASE WHEN NOT pg_is_in_recovery() THEN 0
       WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
       ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp())) END`,
				desc("pg_replication_lag_seconds",
					"Seconds since the last replayed transaction on a replica; 0 when replay has caught up with what was received, and on a primary.")),
			gauge("CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END",
				desc("pg_replication_is_replica", "1 if the server is a replica (in recovery), else 0.")),
			gauge("greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))",
				desc("pg_replication_last_replay_seconds", "Age of the last replayed transaction in seconds; 0 when nothing was replayed.")),
		},
	}}
}

func (c *replication) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
