package collector

import (
	"context"
)

func init() {
	registerPerDatabase("statio_user_tables", true, "Table and index block reads and buffer hits from pg_statio_user_tables, in every database",
		func(Options) Collector { return newStatioUserTables() })
}

// statioUserTables exports postgres_exporter's statio_user_tables counters (upstream's names,
// without _total). The columns are the same on every supported version (13–17).
type statioUserTables struct {
	q rowQuery
}

func newStatioUserTables() *statioUserTables {
	l := []string{"datname", "schemaname", "relname"}
	c := func(col, metric, help string) column {
		return counter("COALESCE("+col+", 0)", desc("pg_statio_user_tables_"+metric, help, l...))
	}
	return &statioUserTables{q: rowQuery{
		labels: []string{"current_database()", "schemaname", "relname"},
		cols: []column{
			c("heap_blks_read", "heap_blocks_read", "Number of disk blocks read from this table."),
			c("heap_blks_hit", "heap_blocks_hit", "Number of buffer hits in this table."),
			c("idx_blks_read", "idx_blocks_read", "Number of disk blocks read from all indexes on this table."),
			c("idx_blks_hit", "idx_blocks_hit", "Number of buffer hits in all indexes on this table."),
			c("toast_blks_read", "toast_blocks_read", "Number of disk blocks read from this table's TOAST table (if any)."),
			c("toast_blks_hit", "toast_blocks_hit", "Number of buffer hits in this table's TOAST table (if any)."),
			c("tidx_blks_read", "tidx_blocks_read", "Number of disk blocks read from this table's TOAST table indexes (if any)."),
			c("tidx_blks_hit", "tidx_blocks_hit", "Number of buffer hits in this table's TOAST table indexes (if any)."),
		},
		from:     "FROM pg_statio_user_tables",
		perTable: true, labelNames: l,
	}}
}

func (c *statioUserTables) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
