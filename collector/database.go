package collector

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("database", true, "Per-database statistics from pg_stat_database and database sizes",
		func(o Options) Collector { return newDatabase(o.DatabaseSizeInterval) })
}

// dbColumn is one pg_stat_database column and the metric it becomes.
type dbColumn struct {
	column     string
	metric     string
	help       string
	counter    bool
	scale      float64 // multiplies the value (1/1000 turns milliseconds into seconds); 0 means 1
	epoch      bool    // a timestamp, exported as Unix seconds
	minVersion int     // first server_version_num that has the column
}

// databaseColumns follows postgres_exporter's names and types where it has the column (its
// blk_*_time stay in milliseconds, and stats_reset is a counter of Unix seconds, 0 before the
// first reset). Columns it does not export get promtool-clean names in base units.
var databaseColumns = []dbColumn{
	{column: "numbackends", metric: "numbackends", help: "Backends currently connected to this database."},
	{column: "xact_commit", metric: "xact_commit", help: "Transactions in this database that have been committed.", counter: true},
	{column: "xact_rollback", metric: "xact_rollback", help: "Transactions in this database that have been rolled back.", counter: true},
	{column: "blks_read", metric: "blks_read", help: "Disk blocks read in this database.", counter: true},
	{column: "blks_hit", metric: "blks_hit", help: "Times disk blocks were found already in the buffer cache.", counter: true},
	{column: "tup_returned", metric: "tup_returned", help: "Rows returned by queries in this database.", counter: true},
	{column: "tup_fetched", metric: "tup_fetched", help: "Rows fetched by queries in this database.", counter: true},
	{column: "tup_inserted", metric: "tup_inserted", help: "Rows inserted by queries in this database.", counter: true},
	{column: "tup_updated", metric: "tup_updated", help: "Rows updated by queries in this database.", counter: true},
	{column: "tup_deleted", metric: "tup_deleted", help: "Rows deleted by queries in this database.", counter: true},
	{column: "conflicts", metric: "conflicts", help: "Queries canceled due to conflicts with recovery (standbys only).", counter: true},
	{column: "temp_files", metric: "temp_files", help: "Temporary files created by queries in this database.", counter: true},
	{column: "temp_bytes", metric: "temp_bytes", help: "Total bytes written to temporary files by queries in this database.", counter: true},
	{column: "deadlocks", metric: "deadlocks", help: "Deadlocks detected in this database.", counter: true},
	{column: "checksum_failures", metric: "checksum_failures_total", help: "Data page checksum failures detected in this database.", counter: true},
	{column: "checksum_last_failure", metric: "checksum_last_failure_timestamp_seconds", help: "Time of the last data page checksum failure in this database (no sample before the first).", epoch: true},
	{column: "blk_read_time", metric: "blk_read_time", help: "Time spent reading data file blocks by backends in this database, in milliseconds.", counter: true},
	{column: "blk_write_time", metric: "blk_write_time", help: "Time spent writing data file blocks by backends in this database, in milliseconds.", counter: true},
	{column: "stats_reset", metric: "stats_reset", help: "Time at which these statistics were last reset, in Unix seconds (0 if never).", counter: true, epoch: true},
	{column: "session_time", metric: "session_time_seconds_total", help: "Time spent by sessions of this database.", counter: true, scale: 1e-3, minVersion: 140000},
	{column: "active_time", metric: "active_time_seconds_total", help: "Time spent executing SQL statements in this database.", counter: true, scale: 1e-3, minVersion: 140000},
	{column: "idle_in_transaction_time", metric: "idle_in_transaction_time_seconds_total", help: "Time spent idling while in a transaction in this database.", counter: true, scale: 1e-3, minVersion: 140000},
	{column: "sessions", metric: "sessions_total", help: "Sessions established to this database.", counter: true, minVersion: 140000},
	{column: "sessions_abandoned", metric: "sessions_abandoned_total", help: "Sessions terminated because the client connection was lost.", counter: true, minVersion: 140000},
	{column: "sessions_fatal", metric: "sessions_fatal_total", help: "Sessions terminated by fatal errors.", counter: true, minVersion: 140000},
	{column: "sessions_killed", metric: "sessions_killed_total", help: "Sessions terminated by operator intervention.", counter: true, minVersion: 140000},
}

// conflictColumns are the pg_stat_database_conflicts columns postgres_exporter exports, as
// counters named pg_stat_database_conflicts_COLUMN. They only count on standbys.
var conflictColumns = []dbColumn{
	{column: "confl_tablespace", help: "Queries in this database canceled due to dropped tablespaces."},
	{column: "confl_lock", help: "Queries in this database canceled due to lock timeouts."},
	{column: "confl_snapshot", help: "Queries in this database canceled due to old snapshots."},
	{column: "confl_bufferpin", help: "Queries in this database canceled due to pinned buffers."},
	{column: "confl_deadlock", help: "Queries in this database canceled due to deadlocks."},
	{column: "confl_active_logicalslot", help: "Uses of logical replication slots in this database canceled due to old snapshots or too low a wal_level on the primary (PostgreSQL 16 and later).",
		minVersion: 160000},
}

// conflictColumnsFor lists the conflict columns the server version has.
func conflictColumnsFor(version int) []int {
	var idx []int
	for i, col := range conflictColumns {
		if version >= col.minVersion {
			idx = append(idx, i)
		}
	}
	return idx
}

type database struct {
	descs     []*prometheus.Desc // parallel to databaseColumns
	conflicts []*prometheus.Desc // parallel to conflictColumns
	size      *prometheus.Desc

	// Sizes are read at most once per sizeInterval: pg_database_size walks every file of a
	// database, which costs more than all other statistics together, while sizes change slowly.
	sizeInterval time.Duration
	mu           sync.Mutex
	sizes        []dbSize
	sizesAt      time.Time
}

type dbSize struct {
	datname string
	bytes   float64
}

func newDatabase(sizeInterval time.Duration) *database {
	c := &database{size: gaugeDesc("pg_database_size_bytes", "Disk space used by the database.", "datname"),
		sizeInterval: sizeInterval}
	for _, col := range databaseColumns {
		d := gaugeDesc
		if col.counter {
			d = counterDesc
		}
		c.descs = append(c.descs, since(col.minVersion, d("pg_stat_database_"+col.metric, col.help, "datid", "datname")))
	}
	for _, col := range conflictColumns {
		c.conflicts = append(c.conflicts, since(col.minVersion, counterDesc("pg_stat_database_conflicts_"+col.column, col.help, "datid", "datname")))
	}
	return c
}

// databaseColumnsFor lists the columns the server version has.
func databaseColumnsFor(version int) []int {
	var idx []int
	for i, col := range databaseColumns {
		if version >= col.minVersion {
			idx = append(idx, i)
		}
	}
	return idx
}

// databaseQuery is the pg_stat_database query for a server version, joined with
// pg_stat_database_conflicts. The row of shared objects (no datname) is left out.
func databaseQuery(version int) string {
	var b strings.Builder
	b.WriteString("SELECT s.datid::text, s.datname")
	for _, i := range databaseColumnsFor(version) {
		col := databaseColumns[i]
		switch {
		case col.column == "stats_reset":
			b.WriteString(", coalesce(floor(extract(epoch FROM s.stats_reset)), 0)::float8")
		case col.epoch:
			b.WriteString(", extract(epoch FROM s." + col.column + ")::float8")
		default:
			b.WriteString(", s." + col.column + "::float8")
		}
	}
	for _, i := range conflictColumnsFor(version) {
		b.WriteString(", c." + conflictColumns[i].column + "::float8")
	}
	b.WriteString("\nFROM pg_stat_database s LEFT JOIN pg_stat_database_conflicts c ON c.datid = s.datid\nWHERE s.datname IS NOT NULL")
	return b.String()
}

// databaseSizes needs CONNECT privilege on a database to measure it.
const databaseSizes = `
SELECT datname, pg_database_size(oid)::float8
FROM pg_database
WHERE has_database_privilege(oid, 'CONNECT')`

func (c *database) Update(ctx context.Context, s *Scrape) error {
	if err := c.updateStats(ctx, s); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sizes == nil || time.Since(c.sizesAt) >= c.sizeInterval {
		var sizes []dbSize
		err := queryRows(ctx, s.Conn, databaseSizes, func(r pgx.Rows) error {
			var d dbSize
			if err := r.Scan(&d.datname, &d.bytes); err != nil {
				return err
			}
			sizes = append(sizes, d)
			return nil
		})
		if err != nil {
			return err
		}
		c.sizes, c.sizesAt = sizes, time.Now()
	}
	for _, d := range c.sizes {
		s.Gauge(c.size, d.bytes, d.datname)
	}
	return nil
}

func (c *database) updateStats(ctx context.Context, s *Scrape) error {
	cols, confls := databaseColumnsFor(s.Version), conflictColumnsFor(s.Version)
	vals := make([]*float64, len(cols)+len(confls))
	dest := make([]any, 0, len(vals)+2)
	var datid, datname string
	dest = append(dest, &datid, &datname)
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	return queryRows(ctx, s.Conn, databaseQuery(s.Version), func(r pgx.Rows) error {
		if err := r.Scan(dest...); err != nil {
			return err
		}
		for j, i := range cols {
			if vals[j] == nil {
				continue
			}
			col := databaseColumns[i]
			v := *vals[j]
			if col.scale != 0 {
				v *= col.scale
			}
			if col.counter {
				s.Counter(c.descs[i], v, datid, datname)
			} else {
				s.Gauge(c.descs[i], v, datid, datname)
			}
		}
		for j, v := range vals[len(cols):] {
			if v != nil {
				s.Counter(c.conflicts[confls[j]], *v, datid, datname)
			}
		}
		return nil
	})
}
