package collector

import (
	"context"
)

func init() {
	register("wal", true, "Number and total size of the WAL segments in pg_wal",
		func(Options) Collector { return newWAL() })
}

// wal exports postgres_exporter's wal series from pg_ls_waldir (superuser or pg_monitor).
type wal struct {
	q rowQuery
}

func newWAL() *wal {
	return &wal{q: rowQuery{
		cols: []column{
			gauge("count(*)", desc("pg_wal_segments", "Number of WAL segments.")),
			nullableGauge("sum(size)", desc("pg_wal_size_bytes", "Total size of WAL segments.")),
		},
		// The same on every supported version (13–17).
		from: "FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'",
	}}
}

func (c *wal) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
