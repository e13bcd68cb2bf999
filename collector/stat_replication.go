package collector

import (
	"context"
)

func init() {
	register("stat_replication", true, "WAL position and each standby's replay lag in bytes, from pg_stat_replication",
		func(Options) Collector { return newStatReplication() })
}

// statReplication exports postgres_exporter's pg_stat_replication_* series: one row per WAL
// sender (standby or WAL receiver such as pg_receivewal), so the label values are bounded by
// max_wal_senders. The slot comes from the replication slot the sender holds, if any.
type statReplication struct {
	q rowQuery
}

func newStatReplication() *statReplication {
	labels := []string{"application_name", "client_addr", "state", "slot_name", "pid"}
	// On a standby (cascading replication) the position is the WAL received, not written.
	pos := "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"
	return &statReplication{q: rowQuery{
		labels: []string{"r.application_name", "r.client_addr", "r.state", "s.slot_name", "r.pid"},
		cols: []column{
			gauge("pg_wal_lsn_diff("+pos+", '0/0')",
				desc("pg_stat_replication_pg_current_wal_lsn_bytes", "WAL position in bytes.", labels...)),
			nullableGauge("pg_wal_lsn_diff("+pos+", r.replay_lsn)",
				desc("pg_stat_replication_pg_wal_lsn_diff", "WAL the standby has not replayed yet, in bytes (no sample while it reports no replay position).", labels...)),
		},
		from: "FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid",
	}}
}

func (c *statReplication) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
