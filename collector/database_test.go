package collector

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestDatabaseStatistics(t *testing.T) {
	createDB(t, "database_t")
	// Without the per-database collectors, whose side connection would count in numbackends.
	e := newEnv(t, "", only("database"))
	ctx := ctxTimeout(t, 30*time.Second)
	before := e.scrape(t, 0, 20*time.Second)
	db := map[string]string{"datname": "database_t"}
	commits0 := before.value(t, "pg_stat_database_xact_commit", db)
	rollbacks0 := before.value(t, "pg_stat_database_xact_rollback", db)

	c := openSession(t, "database_t", "db-test")
	for range 5 {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{"BEGIN", "SELECT 1", "ROLLBACK", "CREATE TABLE big AS SELECT g FROM generate_series(1, 100000) g"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// Statistics reach pg_stat_database when the session reports them; PostgreSQL 15+ does it at
	// once when asked, older versions within seconds. Wait for them.
	_, _ = c.Exec(ctx, "SELECT pg_stat_force_next_flush()")
	_, _ = c.Exec(ctx, "SELECT 1")
	var s scrape
	if !waitScrape(t, e, func(s scrape) bool {
		vs := s.values("pg_stat_database_xact_commit", db)
		return len(vs) == 1 && vs[0] >= commits0+6
	}, &s) {
		t.Fatalf("commits never counted:\n%s", s.body)
	}
	if got := s.value(t, "pg_stat_database_xact_rollback", db); got < rollbacks0+1 {
		t.Errorf("rollbacks = %v, want at least %v", got, rollbacks0+1)
	}
	if got := s.value(t, "pg_stat_database_tup_inserted", db); got < 100000 {
		t.Errorf("tup_inserted = %v, want at least 100000", got)
	}
	if got := s.value(t, "pg_stat_database_numbackends", db); got != 1 {
		t.Errorf("numbackends = %v, want 1", got)
	}
	size := s.value(t, "pg_database_size_bytes", db)
	if size < 3<<20 {
		t.Errorf("database size %v, want at least 3 MiB with a 100000 row table", size)
	}
	// postgres_exporter's types: counters for the cumulative columns, with datid and datname.
	mf := s.families["pg_stat_database_xact_commit"]
	if mf.GetType() != dto.MetricType_COUNTER {
		t.Errorf("xact_commit type %v, want counter", mf.GetType())
	}
	if s.families["pg_stat_database_numbackends"].GetType() != dto.MetricType_GAUGE {
		t.Error("numbackends is not a gauge")
	}
	var datid string
	for _, l := range mf.GetMetric()[0].GetLabel() {
		if l.GetName() == "datid" {
			datid = l.GetValue()
		}
	}
	if datid == "" || strings.Trim(datid, "0123456789") != "" {
		t.Errorf("datid label %q, want the database oid", datid)
	}
	// PostgreSQL 14+ session columns: in seconds, with _total, as the server's milliseconds
	// divided by 1000 (read before and after the scrape, since the server keeps counting).
	var activeBefore, activeAfter float64
	activeMS := "SELECT active_time FROM pg_stat_database WHERE datname = 'database_t'"
	if err := c.QueryRow(ctx, activeMS).Scan(&activeBefore); err != nil {
		t.Fatal(err)
	}
	s = e.scrape(t, 0, 20*time.Second)
	if err := c.QueryRow(ctx, activeMS).Scan(&activeAfter); err != nil {
		t.Fatal(err)
	}
	if got := s.value(t, "pg_stat_database_active_time_seconds_total", db); got < activeBefore/1000*(1-1e-9) || got > activeAfter/1000*(1+1e-9) || got == 0 {
		t.Errorf("active_time_seconds_total = %v, want between %v and %v (the server's milliseconds / 1000)", got, activeBefore/1000, activeAfter/1000)
	}
	for _, name := range []string{"pg_stat_database_session_time_seconds_total", "pg_stat_database_idle_in_transaction_time_seconds_total",
		"pg_stat_database_sessions_total", "pg_stat_database_sessions_abandoned_total", "pg_stat_database_sessions_fatal_total",
		"pg_stat_database_sessions_killed_total", "pg_stat_database_stats_reset",
		"pg_stat_database_conflicts_confl_lock", "pg_stat_database_conflicts_confl_deadlock"} {
		if got := s.values(name, db); len(got) != 1 {
			t.Errorf("%s samples: %v", name, got)
		}
		if s.families[name].GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s type %v, want counter", name, s.families[name].GetType())
		}
	}
	if got := s.value(t, "pg_stat_database_sessions_total", db); got < 1 {
		t.Errorf("sessions_total = %v, want at least the test's session", got)
	}
	// The checksum columns are NULL, so absent, without data checksums (the test cluster's
	// default); stats_reset is 0 or
	// a Unix time in whole seconds (a fresh database has not been reset).
	var checksums string
	if err := c.QueryRow(ctx, "SHOW data_checksums").Scan(&checksums); err != nil {
		t.Fatal(err)
	}
	if got := s.values("pg_stat_database_checksum_failures_total", db); len(got) != map[string]int{"on": 1, "off": 0}[checksums] {
		t.Errorf("checksum_failures_total samples %v with data_checksums %s", got, checksums)
	}
	if got := s.values("pg_stat_database_checksum_last_failure_timestamp_seconds", db); len(got) != 0 {
		t.Errorf("checksum_last_failure samples %v without a failure", got)
	}
	if got := s.value(t, "pg_stat_database_stats_reset", db); got != 0 && (got < 1e9 || got != float64(int64(got))) {
		t.Errorf("stats_reset = %v, want 0 or a Unix time", got)
	}
	for _, old := range []string{"pg_stat_database_session_time", "pg_stat_database_active_time", "pg_stat_database_sessions", "pg_stat_database_checksum_failures"} {
		if _, ok := s.families[old]; ok {
			t.Errorf("%s still exported", old)
		}
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "database"}); got != 1 {
		t.Errorf("database success = %v", got)
	}
}

// waitScrape scrapes until cond holds (at most 15 s), leaving the last scrape in *out.
func waitScrape(t *testing.T, e *env, cond func(scrape) bool, out *scrape) bool {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		*out = e.scrape(t, 0, 20*time.Second)
		if cond(*out) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDatabaseQueryByVersion checks the column choice for each supported major version; only
// one of them runs here, so the others are checked as text.
func TestDatabaseQueryByVersion(t *testing.T) {
	for _, c := range []struct {
		version     int
		sessionCols bool
	}{
		{130012, false}, {140009, true}, {150004, true}, {160001, true}, {170002, true},
	} {
		q := databaseQuery(c.version)
		for _, col := range []string{"s.xact_commit", "s.blk_read_time", "s.deadlocks", "s.checksum_failures", "s.stats_reset", "c.confl_lock"} {
			if !strings.Contains(q, col) {
				t.Errorf("%d: query lacks %s", c.version, col)
			}
		}
		for _, col := range []string{"s.session_time", "s.active_time", "s.sessions_killed"} {
			if strings.Contains(q, col) != c.sessionCols {
				t.Errorf("%d: %s present = %v, want %v", c.version, col, !c.sessionCols, c.sessionCols)
			}
		}
		// PostgreSQL 16 added confl_active_logicalslot, which postgres_exporter exports there.
		if got, want := strings.Contains(q, "c.confl_active_logicalslot"), c.version >= 160000; got != want {
			t.Errorf("%d: confl_active_logicalslot present = %v, want %v", c.version, got, want)
		}
	}
}

func TestDatabaseSizesAreReused(t *testing.T) {
	createDB(t, "dbsize_t")
	e := newEnv(t, "", func(c *Config) {
		c.DatabaseSizeInterval = time.Hour
		c.Enabled = map[string]bool{"activity": false, "settings": false}
	})
	db := map[string]string{"datname": "dbsize_t"}
	before := e.scrape(t, 0, 20*time.Second).value(t, "pg_database_size_bytes", db)
	c := openSession(t, "dbsize_t", "size-test")
	if _, err := c.Exec(ctxTimeout(t, 30*time.Second), "CREATE TABLE big AS SELECT g FROM generate_series(1, 100000) g"); err != nil {
		t.Fatal(err)
	}
	if got := e.scrape(t, 0, 20*time.Second).value(t, "pg_database_size_bytes", db); got != before {
		t.Errorf("size measured again within the interval: %v, then %v", before, got)
	}
	fresh := newEnv(t, "", func(c *Config) { c.Enabled = map[string]bool{"activity": false, "settings": false} })
	if got := fresh.scrape(t, 0, 20*time.Second).value(t, "pg_database_size_bytes", db); got <= before {
		t.Errorf("size without reuse = %v, want more than %v after a 100000 row table", got, before)
	}
}
