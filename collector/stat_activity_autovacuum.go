package collector

import (
	"context"
)

func init() {
	register("stat_activity_autovacuum", false, "Start time of each running autovacuum worker's transaction, by table",
		func(Options) Collector { return newStatActivityAutovacuum() })
}

// statActivityAutovacuum exports postgres_exporter's
// pg_stat_activity_autovacuum_timestamp_seconds: the table comes from the worker's query text
// ("autovacuum: VACUUM public.t").
type statActivityAutovacuum struct {
	q rowQuery
}

func newStatActivityAutovacuum() *statActivityAutovacuum {
	return &statActivityAutovacuum{q: rowQuery{
		labels: []string{"split_part(query, '.', 2)"},
		cols: []column{gauge("extract(epoch FROM xact_start)",
			desc("pg_stat_activity_autovacuum_timestamp_seconds",
				"Start time of the autovacuum worker's transaction, in seconds since the Unix epoch.", "relname"))},
		from: "FROM pg_stat_activity WHERE query LIKE 'autovacuum:%'",
	}}
}

func (c *statActivityAutovacuum) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
