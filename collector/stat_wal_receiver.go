package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("stat_wal_receiver", false, "State of a replica's WAL receiver from pg_stat_wal_receiver",
		func(Options) Collector { return newStatWalReceiver() })
}

// statWalReceiver exports postgres_exporter's stat_wal_receiver series, with its types
// (positions and times as counters). LSNs are byte offsets modulo 2^52, as upstream, so that
// they stay exact in a float64. On a primary there is no row and nothing is exported.
type statWalReceiver struct {
	q rowQuery
}

func newStatWalReceiver() *statWalReceiver {
	l := []string{"upstream_host", "slot_name", "status"}
	d := func(name, help string) *prometheus.Desc { return desc("pg_stat_wal_receiver_"+name, help, l...) }
	lsn := func(col string) string { return "(" + col + " - '0/0') % (2^52)::bigint" }
	return &statWalReceiver{q: rowQuery{
		labels: []string{`trim(both '''' from substring(conninfo from 'host=([^ ]*)'))`, "slot_name", "status"},
		cols: []column{
			counter(lsn("receive_start_lsn"), d("receive_start_lsn", "First WAL position used when the WAL receiver started, as a byte offset.")),
			// flushed_lsn exists from PostgreSQL 13, so on every supported version.
			counter(lsn("flushed_lsn"), d("flushed_lsn", "Last WAL position received and flushed to disk, as a byte offset.")),
			gauge("receive_start_tli", d("receive_start_tli", "First timeline number used when the WAL receiver started.")),
			gauge("received_tli", d("received_tli", "Timeline number of the last WAL position received and flushed to disk.")),
			counter("extract(epoch FROM last_msg_send_time)", d("last_msg_send_time",
				"Send time of the last message received from the WAL sender, in seconds since the Unix epoch.")),
			counter("extract(epoch FROM last_msg_receipt_time)", d("last_msg_receipt_time",
				"Receipt time of the last message received from the WAL sender, in seconds since the Unix epoch.")),
			counter(lsn("latest_end_lsn"), d("latest_end_lsn", "Last WAL position reported to the WAL sender, as a byte offset.")),
			counter("extract(epoch FROM latest_end_time)", d("latest_end_time",
				"Time of the last WAL position reported to the WAL sender, in seconds since the Unix epoch.")),
			nullableGauge("substring(slot_name from 'repmgr_slot_([0-9]*)')::int",
				d("upstream_node", "Node ID of the upstream node (repmgr slot names only).")),
		},
		from: "FROM pg_stat_wal_receiver WHERE status IS NOT NULL",
	}}
}

func (c *statWalReceiver) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
