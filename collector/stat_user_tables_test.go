package collector

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestStatUserTables(t *testing.T) {
	createDB(t, "user_tables_t")
	c := openSession(t, "user_tables_t", "user-tables-test")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{
		"CREATE TABLE t (id int PRIMARY KEY, v text)",
		"INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g",
		"DELETE FROM t WHERE id <= 100",
		"ANALYZE t",
		"SELECT count(*) FROM t",
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, "user_tables_t", func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "user_tables_t"
	})
	tbl := map[string]string{"datname": "user_tables_t", "schemaname": "public", "relname": "t"}
	var s scrape
	// Table statistics reach the shared statistics at the end of each transaction, but only
	// every second or so.
	if !waitScrape(t, e, func(s scrape) bool {
		vs := s.values("pg_stat_user_tables_n_dead_tup", tbl)
		return len(vs) == 1 && vs[0] == 100
	}, &s) {
		t.Fatalf("dead tuples never reached 100:\n%s", s.body)
	}
	collectorOK(t, s, "stat_user_tables")
	l := []string{"datname", "schemaname", "relname"}
	for name, typ := range map[string]dto.MetricType{
		"seq_scan": dto.MetricType_COUNTER, "seq_tup_read": dto.MetricType_COUNTER, "idx_scan": dto.MetricType_COUNTER,
		"idx_tup_fetch": dto.MetricType_COUNTER, "n_tup_ins": dto.MetricType_COUNTER, "n_tup_upd": dto.MetricType_COUNTER,
		"n_tup_del": dto.MetricType_COUNTER, "n_tup_hot_upd": dto.MetricType_COUNTER, "n_live_tup": dto.MetricType_GAUGE,
		"n_dead_tup": dto.MetricType_GAUGE, "n_mod_since_analyze": dto.MetricType_GAUGE, "last_vacuum": dto.MetricType_GAUGE,
		"last_autovacuum": dto.MetricType_GAUGE, "last_analyze": dto.MetricType_GAUGE, "last_autoanalyze": dto.MetricType_GAUGE,
		"vacuum_count": dto.MetricType_COUNTER, "autovacuum_count": dto.MetricType_COUNTER, "analyze_count": dto.MetricType_COUNTER,
		"autoanalyze_count": dto.MetricType_COUNTER, "index_size_bytes": dto.MetricType_GAUGE, "table_size_bytes": dto.MetricType_GAUGE,
	} {
		checkFamily(t, s, "pg_stat_user_tables_"+name, typ, l...)
	}
	if got := s.value(t, "pg_stat_user_tables_n_tup_ins", tbl); got != 1000 {
		t.Errorf("n_tup_ins = %v, want 1000", got)
	}
	if got := s.value(t, "pg_stat_user_tables_n_tup_del", tbl); got != 100 {
		t.Errorf("n_tup_del = %v, want 100", got)
	}
	if got := s.value(t, "pg_stat_user_tables_analyze_count", tbl); got != 1 {
		t.Errorf("analyze_count = %v, want 1", got)
	}
	now := float64(time.Now().Unix())
	if got := s.value(t, "pg_stat_user_tables_last_analyze", tbl); got < now-600 || got > now+1 {
		t.Errorf("last_analyze = %v, want about %v", got, now)
	}
	if got := s.value(t, "pg_stat_user_tables_last_vacuum", tbl); got != 0 {
		t.Errorf("last_vacuum = %v for a table never vacuumed, want 0", got)
	}
	if got := s.value(t, "pg_stat_user_tables_table_size_bytes", tbl); got < 8192 {
		t.Errorf("table_size_bytes = %v", got)
	}
	if got := s.value(t, "pg_stat_user_tables_index_size_bytes", tbl); got < 8192 {
		t.Errorf("index_size_bytes = %v", got)
	}
}

// TestLockedTableLosesOnlyItsOwnSeries: a table under ACCESS EXCLUSIVE (VACUUM FULL, a
// migration) loses its size series for as long; its other statistics, the other tables' sizes and
// the other collectors are not held up. A query that needs the lock anyway (a custom query
// reading the table) fails at the collector sessions' lock_timeout, on its own.
func TestLockedTableLosesOnlyItsOwnSeries(t *testing.T) {
	createDB(t, "locked_t")
	c := openSession(t, "locked_t", "locker")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{"CREATE TABLE busy (id int PRIMARY KEY)", "CREATE TABLE calm (id int PRIMARY KEY)",
		"BEGIN", "LOCK TABLE busy IN ACCESS EXCLUSIVE MODE"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	path := writeQueries(t, `
pg_busy:
  query: SELECT count(*) AS n FROM busy
  metrics:
    - n:
        usage: GAUGE
`)
	e := newEnv(t, "locked_t", func(c *Config) {
		c.Timeout = 4 * time.Second
		c.QueriesFile = path
		only("stat_user_tables", "activity", "database")(c)
		c.Databases = "locked_t"
	})
	start := time.Now()
	s := e.scrape(t, 0, 10*time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the scrape took %v against a 4 s deadline: the lock held it up", d)
	}
	for _, name := range []string{"stat_user_tables", "activity", "database"} {
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != 1 {
			t.Errorf("%s success = %v, want 1", name, got)
		}
	}
	busy := map[string]string{"datname": "locked_t", "schemaname": "public", "relname": "busy"}
	calm := map[string]string{"datname": "locked_t", "schemaname": "public", "relname": "calm"}
	for _, name := range []string{"pg_stat_user_tables_table_size_bytes", "pg_stat_user_tables_index_size_bytes"} {
		if n := len(s.values(name, busy)); n != 0 {
			t.Errorf("%s of the locked table exported", name)
		}
		if n := len(s.values(name, calm)); n != 1 {
			t.Errorf("%s of the unlocked table: %d samples, want 1", name, n)
		}
	}
	if n := len(s.values("pg_stat_user_tables_seq_scan", busy)); n != 1 {
		t.Errorf("the locked table's statistics: %d seq_scan samples, want 1", n)
	}
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_busy"}); got != 1 {
		t.Errorf("errors{pg_busy} = %v, want 1", got)
	}
	if !strings.Contains(e.log.String(), "lock timeout") {
		t.Errorf("the custom query did not fail at lock_timeout:\n%s", e.log.String())
	}
}
