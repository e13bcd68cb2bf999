package collector

import (
	"context"
)

func init() {
	register("postmaster", false, "Start time of the PostgreSQL server",
		func(Options) Collector { return newPostmaster() })
}

// postmaster exports postgres_exporter's pg_postmaster_start_time_seconds.
type postmaster struct {
	q rowQuery
}

func newPostmaster() *postmaster {
	return &postmaster{q: rowQuery{cols: []column{
		gauge("extract(epoch FROM pg_postmaster_start_time())",
			desc("pg_postmaster_start_time_seconds", "Time at which the server started, in seconds since the Unix epoch.")),
	}}}
}

func (c *postmaster) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
