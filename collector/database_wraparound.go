package collector

import (
	"context"
)

func init() {
	register("database_wraparound", false, "Transaction and multixact ID age of every database, towards wraparound",
		func(Options) Collector { return newDatabaseWraparound() })
}

// databaseWraparound exports postgres_exporter's database_wraparound series. Despite the
// _seconds suffix upstream chose, the values are ages in transactions (multixacts), not time;
// the names stay for compatibility with its dashboards and alerts.
type databaseWraparound struct {
	q rowQuery
}

func newDatabaseWraparound() *databaseWraparound {
	return &databaseWraparound{q: rowQuery{
		labels: []string{"datname"},
		cols: []column{
			gauge("age(datfrozenxid)", desc("pg_database_wraparound_age_datfrozenxid_seconds",
				"Age of the oldest transaction ID that has not been frozen, in transactions.", "datname")),
			gauge("mxid_age(datminmxid)", desc("pg_database_wraparound_age_datminmxid_seconds",
				"Age of the oldest multixact ID that has not been replaced with a transaction ID, in multixacts.", "datname")),
		},
		// The same on every supported version (13–17).
		from: "FROM pg_database WHERE datallowconn",
	}}
}

func (c *databaseWraparound) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
