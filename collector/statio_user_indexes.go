package collector

import (
	"context"
)

func init() {
	registerPerDatabase("statio_user_indexes", false, "Index block reads and buffer hits from pg_statio_user_indexes, in every database",
		func(Options) Collector { return newStatioUserIndexes() })
}

// statioUserIndexes exports postgres_exporter's statio_user_indexes counters. Upstream reads
// only the database it connects to and has no datname label; here the series carry datname
// like the other per-database collectors, so that the same index name in two databases gives
// two series.
type statioUserIndexes struct {
	q rowQuery
}

func newStatioUserIndexes() *statioUserIndexes {
	l := []string{"datname", "schemaname", "relname", "indexrelname"}
	return &statioUserIndexes{q: rowQuery{
		labels: []string{"current_database()", "schemaname", "relname", "indexrelname"},
		cols: []column{
			counter("idx_blks_read", desc("pg_statio_user_indexes_idx_blks_read_total", "Number of disk blocks read from this index.", l...)),
			counter("idx_blks_hit", desc("pg_statio_user_indexes_idx_blks_hit_total", "Number of buffer hits in this index.", l...)),
		},
		from:     "FROM pg_statio_user_indexes",
		perTable: true, labelNames: l,
	}}
}

func (c *statioUserIndexes) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
