package collector

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("activity", true, "Sessions from pg_stat_activity: counts by state, idle in transaction, lock waits, connection utilisation",
		func(Options) Collector { return newActivity() })
}

// activity reads pg_stat_activity. Only client backends count: background workers and
// replication senders are not what a pool operator sizes connections for.
type activity struct {
	count, maxTx                          *prometheus.Desc
	iitCount, iitMax, lockWaits, oldestTx *prometheus.Desc
	server, utilisation                   *prometheus.Desc
}

func newActivity() *activity {
	l := []string{"datname", "state", "usename", "application_name"}
	return &activity{
		count: gaugeDesc("pg_stat_activity_count", "Client sessions by database, state, user and application.", l...),
		maxTx: gaugeDesc("pg_stat_activity_max_tx_duration",
			"Age in seconds of the oldest open transaction by database, state, user and application.", l...),
		iitCount: gaugeDesc("pg_stat_activity_idle_in_transaction_sessions",
			"Sessions idle inside an open transaction: they hold locks and a connection while doing nothing.", "datname"),
		iitMax: gaugeDesc("pg_stat_activity_idle_in_transaction_max_seconds",
			"Longest time a session of the database has been idle in transaction.", "datname"),
		lockWaits: gaugeDesc("pg_stat_activity_waiting_on_locks_sessions",
			"Sessions waiting for a lock held by another session.", "datname"),
		oldestTx: gaugeDesc("pg_stat_activity_oldest_xact_seconds",
			"Age of the oldest open transaction of the database; long ones hold back vacuum.", "datname"),
		server: gaugeDesc("pg_server_connections",
			"Client backends connected to the server, all databases together."),
		utilisation: gaugeDesc("pg_server_connection_utilization_ratio",
			"Client backends divided by max_connections: how close the server is to refusing connections."),
	}
}

// activityQuery reads pg_stat_activity once. Session rows are grouped as postgres_exporter's
// pg_stat_activity metrics are, and carry what the per-database figures are summed from; the
// rows from pg_database (db_only) make every connectable database appear, with zeros when it
// has no sessions.
const activityQuery = `
SELECT coalesce(datname, ''), coalesce(state, ''), coalesce(usename, ''), coalesce(application_name, ''),
       count(*),
       coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8,
       count(*) FILTER (WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')),
       coalesce(max(extract(epoch FROM now() - state_change))
                FILTER (WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')), 0)::float8,
       count(*) FILTER (WHERE wait_event_type = 'Lock'),
       false AS db_only,
       current_setting('max_connections')::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3, 4
UNION ALL
SELECT datname, '', '', '', 0, 0, 0, 0, 0, true, 0
FROM pg_database
WHERE datallowconn`

// activityDB sums one database's sessions.
type activityDB struct {
	iit, waiting   float64
	iitMax, oldest float64
}

func (c *activity) Update(ctx context.Context, s *Scrape) error {
	var backends, maxConns float64
	dbs := map[string]*activityDB{}
	var order []string
	get := func(name string) *activityDB {
		d, ok := dbs[name]
		if !ok {
			d = &activityDB{}
			dbs[name] = d
			order = append(order, name)
		}
		return d
	}
	err := queryRows(ctx, s.Conn, activityQuery, func(r pgx.Rows) error {
		var db, state, user, app string
		var n, iit, waiting int64
		var maxTx, iitMax, maxConnsRow float64
		var dbOnly bool
		if err := r.Scan(&db, &state, &user, &app, &n, &maxTx, &iit, &iitMax, &waiting, &dbOnly, &maxConnsRow); err != nil {
			return err
		}
		d := get(db)
		if dbOnly {
			return nil
		}
		maxConns = maxConnsRow
		backends += float64(n)
		s.Gauge(c.count, float64(n), db, state, user, app)
		s.Gauge(c.maxTx, maxTx, db, state, user, app)
		d.iit += float64(iit)
		d.waiting += float64(waiting)
		d.iitMax = max(d.iitMax, iitMax)
		d.oldest = max(d.oldest, maxTx)
		return nil
	})
	if err != nil {
		return err
	}
	for _, name := range order {
		d := dbs[name]
		s.Gauge(c.iitCount, d.iit, name)
		s.Gauge(c.iitMax, d.iitMax, name)
		s.Gauge(c.lockWaits, d.waiting, name)
		s.Gauge(c.oldestTx, d.oldest, name)
	}
	s.Gauge(c.server, backends)
	if maxConns > 0 {
		s.Gauge(c.utilisation, backends/maxConns)
	}
	return nil
}
