package collector

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("replication_slots", true, "Replication slots: activity, WAL retained and WAL status from pg_replication_slots",
		func(Options) Collector { return newReplicationSlots() })
}

// replicationSlots exports postgres_exporter's replication_slots series. Its two label sets
// are upstream's: slot_name and database for the older series, slot_name and slot_type for the
// slot_* ones.
type replicationSlots struct {
	active, lsnDiff, currentLSN, flushLSN, isActive, safeWAL, walStatus *prometheus.Desc
}

func newReplicationSlots() *replicationSlots {
	const p = "pg_replication_slots_"
	return &replicationSlots{
		active:  gaugeDesc(p+"active", "1 if the slot is in use by a connection, else 0.", "slot_name", "database"),
		lsnDiff: gaugeDesc(p+"pg_wal_lsn_diff", "WAL the slot retains: bytes from its restart_lsn to the current WAL position.", "slot_name", "database"),
		currentLSN: gaugeDesc(p+"slot_current_wal_lsn", "Current WAL position (received WAL on a replica), as a byte offset.",
			"slot_name", "slot_type"),
		flushLSN: gaugeDesc(p+"slot_confirmed_flush_lsn", "Last WAL position the logical slot's consumer confirmed, as a byte offset (active slots only).",
			"slot_name", "slot_type"),
		isActive: gaugeDesc(p+"slot_is_active", "1 if the slot is in use by a connection, else 0.", "slot_name", "slot_type"),
		safeWAL: gaugeDesc(p+"safe_wal_size_bytes", "WAL that can still be written before the slot is in danger of being lost (with max_slot_wal_keep_size).",
			"slot_name", "slot_type"),
		walStatus: gaugeDesc(p+"wal_status", "Availability of the WAL the slot claims; the value is always 1.", "slot_name", "slot_type", "wal_status"),
	}
}

// replicationSlotsQuery is the same on every supported version (13–17: safe_wal_size and
// wal_status exist from 13).
const replicationSlotsQuery = `
SELECT slot_name::text, COALESCE(database::text, ''), COALESCE(slot_type, 'unknown'), active,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, restart_lsn)::float8,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END - '0/0')::float8,
       (COALESCE(confirmed_flush_lsn, '0/0') - '0/0')::float8,
       safe_wal_size::float8, wal_status
FROM pg_replication_slots`

func (c *replicationSlots) Update(ctx context.Context, s *Scrape) error {
	return queryRows(ctx, s.Conn, replicationSlotsQuery, func(r pgx.Rows) error {
		var name, database, typ string
		var active bool
		var lsnDiff, current, flush, safe *float64
		var status *string
		if err := r.Scan(&name, &database, &typ, &active, &lsnDiff, &current, &flush, &safe, &status); err != nil {
			return err
		}
		a := 0.0
		if active {
			a = 1
		}
		s.Gauge(c.active, a, name, database)
		if lsnDiff != nil {
			s.Gauge(c.lsnDiff, *lsnDiff, name, database)
		}
		if current != nil {
			s.Gauge(c.currentLSN, *current, name, typ)
		}
		if active && flush != nil {
			s.Gauge(c.flushLSN, *flush, name, typ)
		}
		s.Gauge(c.isActive, a, name, typ)
		if safe != nil {
			s.Gauge(c.safeWAL, *safe, name, typ)
		}
		if status != nil {
			s.Gauge(c.walStatus, 1, name, typ, *status)
		}
		return nil
	})
}
