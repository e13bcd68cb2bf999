package collector

import (
	"context"
)

func init() {
	register("roles", true, "Connection limit of every role",
		func(Options) Collector { return newRoles() })
}

// roles exports postgres_exporter's pg_roles_connection_limit (-1: no limit).
type roles struct {
	q rowQuery
}

func newRoles() *roles {
	return &roles{q: rowQuery{
		labels: []string{"rolname"},
		cols: []column{gauge("rolconnlimit",
			desc("pg_roles_connection_limit", "Connection limit set for the role; -1 for none.", "rolname"))},
		from: "FROM pg_roles",
	}}
}

func (c *roles) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
