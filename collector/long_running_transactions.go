package collector

import (
	"context"
)

func init() {
	register("long_running_transactions", false, "Number and age of open transactions from pg_stat_activity",
		func(Options) Collector { return newLongRunningTransactions() })
}

// longRunningTransactions exports postgres_exporter's long_running_transactions series: every
// open transaction of a non-idle session other than autovacuum and the collector's own.
type longRunningTransactions struct {
	q rowQuery
}

func newLongRunningTransactions() *longRunningTransactions {
	return &longRunningTransactions{q: rowQuery{
		cols: []column{
			gauge("count(*)", desc("pg_long_running_transactions", "Current number of open transactions.")),
			gauge("max(extract(epoch FROM clock_timestamp() - xact_start))",
				desc("pg_long_running_transactions_oldest_timestamp_seconds", "Age of the oldest open transaction in seconds; 0 when there is none.")),
		},
		// The same on every supported version (13–17).
		from: `FROM pg_stat_activity
WHERE state IS DISTINCT FROM 'idle' AND query NOT LIKE 'autovacuum:%'
  AND xact_start IS NOT NULL AND pid <> pg_backend_pid()`,
	}}
}

func (c *longRunningTransactions) Update(ctx context.Context, s *Scrape) error {
	return c.q.run(ctx, s)
}
