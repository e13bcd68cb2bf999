package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/mixin"
)

// Objects the PostgreSQL alerts are checked with.
const (
	deadTable    = "e2e_dead"
	inactiveSlot = "e2e_inactive"
	// Rows of deadTable; two thirds of them are deleted.
	deadTableRows = 30000
)

// setUpTablesAndSlot creates, before the sidecar starts, what the table, replication and
// dashboard checks read: a table of which two thirds are dead tuples (autovacuum is off for it,
// so they stay), and a physical replication slot that reserves WAL from its creation on and
// never gets a consumer.
func setUpTablesAndSlot(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, sql := range []string{
		"DROP TABLE IF EXISTS " + deadTable,
		"CREATE TABLE " + deadTable + " (id int PRIMARY KEY, pad text NOT NULL) WITH (autovacuum_enabled = off)",
		fmt.Sprintf("INSERT INTO %s SELECT g, 'x' FROM generate_series(1, %d) g", deadTable, deadTableRows),
		fmt.Sprintf("DELETE FROM %s WHERE id <= %d", deadTable, deadTableRows*2/3),
		"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '" + inactiveSlot + "'",
		"SELECT pg_create_physical_replication_slot('" + inactiveSlot + "', true)",
	} {
		if err := cluster.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cluster.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '"+inactiveSlot+"'")
		_ = cluster.Exec(ctx, "DROP TABLE IF EXISTS "+deadTable)
	})
}

// lowered returns the alert expressions generated with thresholds a test can reach in seconds,
// where the shipped ones need hours or gigabytes: the expression is the generator's, only the
// number differs.
func lowered(t *testing.T, change func(*mixin.Config)) map[string]string {
	t.Helper()
	c := mixin.Default
	change(&c)
	out := map[string]string{}
	for _, a := range c.Rules().Alerts() {
		out[a.Alert] = a.Expr
	}
	return out
}

// checkPostgresAlerts drives the PostgreSQL alerts through the real sidecar and
// Prometheus: each expression is quiet first, true once the server is in the state it alerts
// on, and (where the test can undo that state) quiet again.
func checkPostgresAlerts(ctx context.Context, t *testing.T, exprs map[string]string,
	expr func(*testing.T, string) []promSample,
	eventually func(*testing.T, string, string, bool, time.Duration) []promSample) {
	t.Helper()

	t.Run("inactive replication slot retaining WAL", func(t *testing.T) {
		// The shipped threshold is 1 GiB of WAL; 4 MiB is written here, against a threshold of 1 MiB.
		// A dropped slot's series ends, and the alerts keep a server-wide series' last value for
		// LeaderChangeWindow (2m): 10 s here, for the check that the alert clears.
		low := lowered(t, func(c *mixin.Config) {
			c.InactiveSlotRetainedBytes = 1 << 20
			c.LeaderChangeWindow = 10 * time.Second
		})["PgSidecarReplicationSlotInactive"]
		eventually(t, "slot series", `pg_replication_slots_active{job="pgsidecar", slot_name="`+inactiveSlot+`"} == 0`, true, 30*time.Second)
		if r := expr(t, exprs["PgSidecarReplicationSlotInactive"]); len(r) != 0 {
			t.Fatalf("PgSidecarReplicationSlotInactive true with the shipped 1 GiB threshold: %v", r)
		}
		for _, sql := range []string{
			"CREATE TABLE IF NOT EXISTS e2e_wal (id int, pad text)",
			"INSERT INTO e2e_wal SELECT g, repeat('w', 200) FROM generate_series(1, 15000) g",
			"DROP TABLE e2e_wal",
		} {
			if err := cluster.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		got := eventually(t, "slot alert with a 1 MiB threshold", low, true, 30*time.Second)
		if got[0].Metric["slot_name"] != inactiveSlot || got[0].Metric["cluster"] != "e2e" {
			t.Errorf("alert series %v: want slot_name=%s, cluster=e2e", got[0].Metric, inactiveSlot)
		}
		// A consumer that is gone for good: dropping the slot ends the alert.
		if err := cluster.Exec(ctx, "SELECT pg_drop_replication_slot('"+inactiveSlot+"')"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "slot alert clears once the slot is dropped", low, false, 30*time.Second)
	})

	t.Run("dead tuples piling up", func(t *testing.T) {
		// Two thirds of the table are dead and autovacuum is off for it: the shipped thresholds
		// (20 %, 10000 dead tuples) hold.
		got := eventually(t, "dead tuple alert", exprs["PgSidecarDeadTuplesHigh"], true, 30*time.Second)
		if len(got) != 1 || got[0].Metric["relname"] != deadTable || got[0].Metric["datname"] != "postgres" {
			t.Fatalf("dead tuple alert series %v: want only %s in database postgres", got, deadTable)
		}
		if v := fmt.Sprint(got[0].Value[1]); !strings.HasPrefix(v, "0.66") {
			t.Errorf("dead tuple ratio %s, want 2/3", v)
		}
		if err := cluster.Exec(ctx, "VACUUM "+deadTable); err != nil {
			t.Fatal(err)
		}
		eventually(t, "dead tuple alert clears after VACUUM", exprs["PgSidecarDeadTuplesHigh"], false, 30*time.Second)
	})

	t.Run("checkpoints requested more often than timed", func(t *testing.T) {
		if r := expr(t, exprs["PgSidecarCheckpointsRequested"]); len(r) != 0 {
			t.Fatalf("PgSidecarCheckpointsRequested true before any CHECKPOINT: %v", r)
		}
		// Four requested checkpoints, each seen by its own scrape; none is timed
		// (checkpoint_timeout is 5 minutes).
		for range 4 {
			if err := cluster.Exec(ctx, "CHECKPOINT"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(scrapeInterval + scrapeInterval/2)
		}
		got := eventually(t, "checkpoint alert", exprs["PgSidecarCheckpointsRequested"], true, 30*time.Second)
		if got[0].Metric["cluster"] != "e2e" {
			t.Errorf("alert series %v: want cluster=e2e", got[0].Metric)
		}
	})

	// pgsidecar runs against one server here, a primary: the lag is 0 and the alert stays quiet.
	// Making it fire needs a streaming replica whose replay falls behind (promtool covers it,
	// alerts/tests/postgresql.test.yml).
	t.Run("replication lag quiet on a primary", func(t *testing.T) {
		eventually(t, "primary", `pg_replication_is_replica{job="pgsidecar"} == 0`, true, 30*time.Second)
		eventually(t, "lag series", `pg_replication_lag_seconds{job="pgsidecar"} == 0`, true, 30*time.Second)
		if r := expr(t, exprs["PgSidecarReplicationLagHigh"]); len(r) != 0 {
			t.Errorf("PgSidecarReplicationLagHigh true on a primary: %v", r)
		}
	})

	// A collector that fails while the database is up: a session holds an ACCESS EXCLUSIVE lock
	// on a table, as a migration does, and the custom query that reads the table waits for it
	// until the collector sessions' lock_timeout. The errors then make up a growing share of the
	// scrapes Prometheus holds.
	t.Run("exporter scrape errors", func(t *testing.T) {
		eventually(t, "scrape error series", `pg_exporter_last_scrape_error{job="pgsidecar"} == 0`, true, 30*time.Second)
		if r := expr(t, exprs["PgSidecarExporterScrapeErrors"]); len(r) != 0 {
			t.Fatalf("PgSidecarExporterScrapeErrors true before any error: %v", r)
		}
		conn, err := pgx.Connect(ctx, cluster.URL("postgres"))
		if err != nil {
			t.Fatal(pgconnScrub(err))
		}
		defer conn.Close(context.Background())
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE e2e_items IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "scrape errors", `pg_exporter_last_scrape_error{job="pgsidecar"} == 1`, true, 30*time.Second)
		got := eventually(t, "scrape error alert", exprs["PgSidecarExporterScrapeErrors"], true, 90*time.Second)
		if got[0].Metric["instance"] == "" {
			t.Errorf("alert series %v: want the sidecar's instance", got[0].Metric)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, "clean scrapes once the lock is gone", `pg_exporter_last_scrape_error{job="pgsidecar"} == 0`, true, 30*time.Second)
	})
}
