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
	minVersion int // first server_version_num that has the column
}

// databaseColumns follows postgres_exporter's names and types (times stay in milliseconds
// there, so they do here). The session columns exist from PostgreSQL 14.
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
	{column: "checksum_failures", metric: "checksum_failures", help: "Data page checksum failures detected in this database.", counter: true},
	{column: "blk_read_time", metric: "blk_read_time", help: "Time spent reading data file blocks by backends in this database, in milliseconds.", counter: true},
	{column: "blk_write_time", metric: "blk_write_time", help: "Time spent writing data file blocks by backends in this database, in milliseconds.", counter: true},
	{column: "session_time", metric: "session_time", help: "Time spent by sessions of this database, in milliseconds.", counter: true, minVersion: 140000},
	{column: "active_time", metric: "active_time", help: "Time spent executing SQL statements in this database, in milliseconds.", counter: true, minVersion: 140000},
	{column: "idle_in_transaction_time", metric: "idle_in_transaction_time", help: "Time spent idling while in a transaction in this database, in milliseconds.", counter: true, minVersion: 140000},
	{column: "sessions", metric: "sessions", help: "Sessions established to this database.", counter: true, minVersion: 140000},
	{column: "sessions_abandoned", metric: "sessions_abandoned", help: "Sessions terminated because the client connection was lost.", counter: true, minVersion: 140000},
	{column: "sessions_fatal", metric: "sessions_fatal", help: "Sessions terminated by fatal errors.", counter: true, minVersion: 140000},
	{column: "sessions_killed", metric: "sessions_killed", help: "Sessions terminated by operator intervention.", counter: true, minVersion: 140000},
}

type database struct {
	descs []*prometheus.Desc // parallel to databaseColumns
	size  *prometheus.Desc

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
	c := &database{size: desc("pg_database_size_bytes", "Disk space used by the database.", "datname"),
		sizeInterval: sizeInterval}
	for _, col := range databaseColumns {
		c.descs = append(c.descs, desc("pg_stat_database_"+col.metric, col.help, "datid", "datname"))
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

// databaseQuery is the pg_stat_database query for a server version. The row of shared objects
// (no datname) is left out.
func databaseQuery(version int) string {
	var b strings.Builder
	b.WriteString("SELECT s.datid::text, s.datname")
	for _, i := range databaseColumnsFor(version) {
		b.WriteString(", s." + databaseColumns[i].column + "::float8")
	}
	b.WriteString("\nFROM pg_stat_database s WHERE s.datname IS NOT NULL")
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
	cols := databaseColumnsFor(s.Version)
	vals := make([]*float64, len(cols))
	dest := make([]any, 0, len(cols)+3)
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
			if col.counter {
				s.Counter(c.descs[i], v, datid, datname)
			} else {
				s.Gauge(c.descs[i], v, datid, datname)
			}
		}
		return nil
	})
}
