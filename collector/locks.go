package collector

import (
	"context"
)

func init() {
	register("locks", true, "Locks held or awaited, by database and mode, from pg_locks",
		func(Options) Collector { return newLocks() })
}

// locks exports postgres_exporter's pg_locks_count: one series per database and lock mode,
// 0 when no lock of that mode is held.
type locks struct {
	q rowQuery
}

func newLocks() *locks {
	return &locks{q: rowQuery{
		labels: []string{"d.datname", "m.mode"},
		cols: []column{gauge("COALESCE(l.count, 0)",
			desc("pg_locks_count", "Number of locks held or awaited in this database and mode.", "datname", "mode"))},
		// The same on every supported version (13–17).
		from: `FROM (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), ('shareupdateexclusivelock'),
             ('sharelock'), ('sharerowexclusivelock'), ('exclusivelock'), ('accessexclusivelock'),
             ('sireadlock')) AS m(mode)
CROSS JOIN pg_database d
LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count
           FROM pg_locks WHERE database IS NOT NULL
           GROUP BY database, lower(mode)) l ON l.mode = m.mode AND l.database = d.oid`,
	}}
}

func (c *locks) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
