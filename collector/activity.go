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
		count: desc("pg_stat_activity_count", "Client sessions by database, state, user and application.", l...),
		maxTx: desc("pg_stat_activity_max_tx_duration",
			"Age in seconds of the oldest open transaction by database, state, user and application.", l...),
		iitCount: desc("pg_stat_activity_idle_in_transaction_count",
			"Sessions idle inside an open transaction: they hold locks and a connection while doing nothing.", "datname"),
		iitMax: desc("pg_stat_activity_idle_in_transaction_max_seconds",
			"Longest time a session of the database has been idle in transaction.", "datname"),
		lockWaits: desc("pg_stat_activity_waiting_on_locks_count",
			"Sessions waiting for a lock held by another session.", "datname"),
		oldestTx: desc("pg_stat_activity_oldest_xact_seconds",
			"Age of the oldest open transaction of the database; long ones hold back vacuum.", "datname"),
		server: desc("pg_server_connections",
			"Client backends connected to the server, all databases together."),
		utilisation: desc("pg_server_connection_utilization_ratio",
			"Client backends divided by max_connections: how close the server is to refusing connections."),
	}
}

// activityBySession groups sessions as postgres_exporter's pg_stat_activity metrics do.
const activityBySession = `
SELECT coalesce(datname, ''), coalesce(state, ''), coalesce(usename, ''), coalesce(application_name, ''),
       count(*), coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3, 4`

// activityByDatabase gives one row per connectable database, with zeros when it has no sessions.
const activityByDatabase = `
SELECT d.datname,
       count(a.pid) FILTER (WHERE a.state IN ('idle in transaction', 'idle in transaction (aborted)')),
       coalesce(extract(epoch FROM max(now() - a.state_change)
                FILTER (WHERE a.state IN ('idle in transaction', 'idle in transaction (aborted)'))), 0)::float8,
       count(a.pid) FILTER (WHERE a.wait_event_type = 'Lock'),
       coalesce(extract(epoch FROM max(now() - a.xact_start)), 0)::float8,
       current_setting('max_connections')::float8
FROM pg_database d
LEFT JOIN pg_stat_activity a ON a.datid = d.oid AND a.backend_type = 'client backend'
WHERE d.datallowconn
GROUP BY d.datname`

func (c *activity) Update(ctx context.Context, s *Scrape) error {
	var backends float64
	err := queryRows(ctx, s.Conn, activityBySession, func(r pgx.Rows) error {
		var db, state, user, app string
		var n int64
		var maxTx float64
		if err := r.Scan(&db, &state, &user, &app, &n, &maxTx); err != nil {
			return err
		}
		backends += float64(n)
		s.Gauge(c.count, float64(n), db, state, user, app)
		s.Gauge(c.maxTx, maxTx, db, state, user, app)
		return nil
	})
	if err != nil {
		return err
	}
	var maxConns float64
	err = queryRows(ctx, s.Conn, activityByDatabase, func(r pgx.Rows) error {
		var db string
		var iit, waiting int64
		var iitMax, oldest float64
		if err := r.Scan(&db, &iit, &iitMax, &waiting, &oldest, &maxConns); err != nil {
			return err
		}
		s.Gauge(c.iitCount, float64(iit), db)
		s.Gauge(c.iitMax, iitMax, db)
		s.Gauge(c.lockWaits, float64(waiting), db)
		s.Gauge(c.oldestTx, oldest, db)
		return nil
	})
	if err != nil {
		return err
	}
	s.Gauge(c.server, backends)
	if maxConns > 0 {
		s.Gauge(c.utilisation, backends/maxConns)
	}
	return nil
}
