package collector

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestStatementJoinFromActivity: the query id of a statement a session is running is mapped
// from pg_stat_activity's text to that text's fingerprint (the exact join, PostgreSQL 14+),
// and a text cut at track_activity_query_size is not used.
func TestStatementJoinFromActivity(t *testing.T) {
	createDB(t, "join_activity_t")
	ctx := ctxTimeout(t, 30*time.Second)
	runner := openSession(t, "join_activity_t", "join-activity")
	long := openSession(t, "join_activity_t", "join-activity-long")
	sampler := openSession(t, "join_activity_t", "join-sampler")
	const sql = "SELECT pg_sleep(2), -1 AS join_activity_marker"
	// Longer than track_activity_query_size (1024): pg_stat_activity shows it cut.
	longSQL := "SELECT pg_sleep(2), '" + pad(1200) + "' AS join_activity_long"
	done := make(chan error, 2)
	go func() { _, err := runner.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); done <- err }()
	go func() { _, err := long.Exec(ctx, longSQL, pgx.QueryExecModeSimpleProtocol); done <- err }()
	ids := map[string]string{}
	if !pgtest.WaitFor(10*time.Second, func() bool {
		for marker, app := range map[string]string{"join_activity_marker": "join-activity", "join_activity_long": "join-activity-long"} {
			var id string
			if sampler.QueryRow(ctx, "SELECT query_id::text FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query_id IS NOT NULL", app).Scan(&id) == nil {
				ids[marker] = id
			}
		}
		return len(ids) == 2
	}) {
		t.Fatalf("the statements did not show in pg_stat_activity: %v", ids)
	}
	var version int
	if err := sampler.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	j := newStatementJoin(10)
	if err := j.sampleActivity(ctx, &Scrape{Conn: sampler, Version: version}); err != nil {
		t.Fatal(err)
	}
	want, _, err := fingerprint.Of(sql)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := j.byID[joinKey{"join_activity_t", ids["join_activity_marker"]}]; !ok || got != want {
		t.Errorf("query id %s mapped to %s (%v), want %s", ids["join_activity_marker"], got, ok, want)
	}
	if got, ok := j.byID[joinKey{"join_activity_t", ids["join_activity_long"]}]; ok {
		t.Errorf("a text cut at track_activity_query_size was mapped, to %s", got)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func pad(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'x'
	}
	return string(b)
}
