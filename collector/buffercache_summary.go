package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("buffercache_summary", false, "Shared buffer usage from pg_buffercache_summary() (PostgreSQL 16 and later, extension pg_buffercache)",
		func(Options) Collector { return newBuffercacheSummary() })
}

// buffercacheSummary exports postgres_exporter's buffercache_summary series. The function
// exists from PostgreSQL 16; before that the collector exports nothing.
type buffercacheSummary struct {
	q rowQuery
}

func newBuffercacheSummary() *buffercacheSummary {
	d := func(name, help string) *prometheus.Desc {
		return since(160000, desc("pg_buffercache_summary_"+name, help))
	}
	return &buffercacheSummary{q: rowQuery{
		cols: []column{
			gauge("buffers_used", d("buffers_used", "Number of used shared buffers.")),
			gauge("buffers_unused", d("buffers_unused", "Number of unused shared buffers.")),
			gauge("buffers_dirty", d("buffers_dirty", "Number of dirty shared buffers.")),
			gauge("buffers_pinned", d("buffers_pinned", "Number of pinned shared buffers.")),
			gauge("usagecount_avg", d("usagecount_avg", "Average usage count of used shared buffers.")),
		},
		from: "FROM pg_buffercache_summary()",
	}}
}

// query is the query for a server version, "" before PostgreSQL 16.
func (c *buffercacheSummary) query(version int) string {
	if version < 160000 {
		return ""
	}
	return c.q.sql()
}

func (c *buffercacheSummary) Update(ctx context.Context, s *Scrape) error {
	if c.query(s.Version) == "" {
		return nil
	}
	return c.q.run(ctx, s)
}
