package collector

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// tableSetup runs sqls in db and waits until the statistics show n_tup_ins rows inserted in
// all its tables together.
func tableSetup(t *testing.T, c *pgx.Conn, inserted int, sqls ...string) {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	for _, sql := range sqls {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Table statistics reach the shared statistics at the end of a transaction, at most about
	// once a second.
	if !waitForCond(20*time.Second, func() bool {
		var n int
		_ = c.QueryRow(ctx, "SELECT pg_stat_force_next_flush()").Scan(new(any))
		if err := c.QueryRow(ctx, "SELECT COALESCE(sum(n_tup_ins), 0)::int FROM pg_stat_user_tables").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == inserted
	}) {
		t.Fatalf("the statistics never showed %d rows inserted", inserted)
	}
}

// exported lists which of the tables named have series of family name in db.
func exported(s scrape, name, db string, tables ...string) map[string]bool {
	out := map[string]bool{}
	for _, tbl := range tables {
		if len(s.values(name, map[string]string{"datname": db, "relname": tbl})) > 0 {
			out[tbl] = true
		}
	}
	return out
}

// TestTableLimit: each database exports its most active tables, plus those past the dead tuple
// alert's threshold however inactive; a table exported keeps its place against one that ranks
// only a little higher, and loses it to one that ranks 25% higher. With the limit off every
// table is exported.
func TestTableLimit(t *testing.T) {
	createDB(t, "table_limit_t")
	c := openSession(t, "table_limit_t", "table-limit-test")
	var sqls []string
	inserted := 0
	for i := 1; i <= 6; i++ { // t1 … t6: scores (rows inserted + live) 20,000 … 120,000
		sqls = append(sqls, fmt.Sprintf("CREATE TABLE t%d (id int)", i),
			fmt.Sprintf("INSERT INTO t%d SELECT generate_series(1, %d)", i, i*10000))
		inserted += i * 10000
	}
	// dead: 12,000 dead tuples of 12,000, past the alert's 10,000 and 20%; autovacuum off so
	// that they stay.
	sqls = append(sqls, "CREATE TABLE dead (id int) WITH (autovacuum_enabled = off)",
		"INSERT INTO dead SELECT generate_series(1, 12000)", "DELETE FROM dead")
	inserted += 12000
	tableSetup(t, c, inserted, sqls...)
	all := []string{"t1", "t2", "t3", "t4", "t5", "t6", "dead"}

	e := newEnv(t, "table_limit_t", func(c *Config) {
		only("stat_user_tables", "statio_user_tables")(c)
		c.Databases = "table_limit_t"
		c.TablesLimit = 3
	})
	e.exp.tableLim.every = 0 // rank at every scrape
	// cached ranks once a minute, as by default.
	cached := newEnv(t, "table_limit_t", func(c *Config) {
		only("stat_user_tables", "statio_user_tables")(c)
		c.Databases = "table_limit_t"
		c.TablesLimit = 3
	})
	check := func(want ...string) {
		t.Helper()
		checkTables(t, e, all, want...)
	}
	check("t6", "t5", "t4", "dead")
	checkTables(t, cached, all, "t6", "t5", "t4", "dead")

	// t3 at 82,000 outranks t4 (80,000), but not by 25%: t4 keeps its place.
	tableSetup(t, c, inserted+11000, "INSERT INTO t3 SELECT generate_series(1, 11000)")
	check("t6", "t5", "t4", "dead")
	check("t6", "t5", "t4", "dead")
	// At 102,000 it does (t4 counts 100,000 with its bonus) and takes t4's place; not yet where
	// the ranking is a minute old.
	tableSetup(t, c, inserted+21000, "INSERT INTO t3 SELECT generate_series(1, 10000)")
	check("t6", "t5", "t3", "dead")
	checkTables(t, cached, all, "t6", "t5", "t4", "dead")
	// A statistics reset makes every score 0: the tables exported keep their places (but dead,
	// no longer past the threshold, now counts against the limit, and t6 comes last by name).
	if _, err := c.Exec(ctxTimeout(t, 10*time.Second), "SELECT pg_stat_reset()"); err != nil {
		t.Fatal(err)
	}
	check("dead", "t3", "t5")

	off := newEnv(t, "table_limit_t", func(c *Config) {
		only("stat_user_tables", "statio_user_tables")(c)
		c.Databases = "table_limit_t"
		c.TablesLimit = 0
		c.MaxSeries = 0
	})
	s := off.scrape(t, 0, 20*time.Second)
	if got := exported(s, "pg_stat_user_tables_n_live_tup", "table_limit_t", all...); len(got) != len(all) {
		t.Errorf("with the limit off, exported %v, want every table", got)
	}
	if got := s.value(t, "pgsidecar_collector_tables_left_out", nil); got != 0 {
		t.Errorf("with the limit off, tables left out = %v", got)
	}
}

// checkTables scrapes e and fails unless exactly the tables want of all (in table_limit_t) are
// exported, by both per-table collectors.
func checkTables(t *testing.T, e *env, all []string, want ...string) {
	t.Helper()
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "stat_user_tables")
	collectorOK(t, s, "statio_user_tables")
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	for _, name := range []string{"pg_stat_user_tables_n_live_tup", "pg_statio_user_tables_heap_blocks_hit"} {
		if got := exported(s, name, "table_limit_t", all...); fmt.Sprint(got) != fmt.Sprint(wantSet) {
			t.Errorf("%s exported for %v, want %v", name, got, wantSet)
		}
	}
	if got := s.value(t, "pgsidecar_collector_tables_left_out", nil); got != float64(len(all)-len(want)) {
		t.Errorf("tables left out = %v, want %d", got, len(all)-len(want))
	}
}

// TestSeriesBudget: past the budget whole tables are left out, the lowest ranked first; what
// was left out comes back only once the collection fits in 90% of the budget; pg_up and the
// pool's series stay. The tables have 29 series each (stat_user_tables and
// statio_user_tables), the database 2 (pgsidecar_collector_database_*).
func TestSeriesBudget(t *testing.T) {
	createDB(t, "budget_t")
	c := openSession(t, "budget_t", "budget-test")
	var sqls []string
	inserted := 0
	names := make([]string, 10)
	for i := 1; i <= 10; i++ { // b01 (least active) … b10
		names[i-1] = fmt.Sprintf("b%02d", i)
		sqls = append(sqls, fmt.Sprintf("CREATE TABLE b%02d (id int)", i),
			fmt.Sprintf("INSERT INTO b%02d SELECT generate_series(1, %d)", i, i*100))
		inserted += i * 100
	}
	tableSetup(t, c, inserted, sqls...)
	e := newEnv(t, "budget_t", func(c *Config) {
		only("stat_user_tables", "statio_user_tables")(c)
		c.Databases = "budget_t"
		c.TablesLimit = 0
		c.MaxSeries = 250
	})
	step := 0
	check := func(overBudget float64, droppedTotal float64, out ...string) {
		t.Helper()
		step++
		s := e.scrape(t, 0, 20*time.Second)
		got := exported(s, "pg_stat_user_tables_seq_scan", "budget_t", names...)
		for _, n := range names {
			if got[n] == containsStr(out, n) {
				t.Errorf("step %d: table %s exported = %v, want %v", step, n, got[n], !got[n])
			}
		}
		if v := s.value(t, "pgsidecar_collector_series_over_budget", nil); v != overBudget {
			t.Errorf("step %d: series over budget = %v, want %v", step, v, overBudget)
		}
		if v := s.value(t, "pgsidecar_collector_dropped_series_total", map[string]string{"reason": "budget"}); v != droppedTotal {
			t.Errorf("step %d: dropped_series_total{budget} = %v, want %v", step, v, droppedTotal)
		}
		if v := s.value(t, "pg_up", nil); v != 1 {
			t.Errorf("step %d: pg_up = %v", step, v)
		}
		if len(s.values("pgsidecar_pool_max_connections", nil)) == 0 {
			t.Errorf("step %d: the pool's series are missing", step)
		}
	}
	// 292 series: two tables out (234).
	check(58, 58, "b01", "b02")
	drop := func(tbl string) {
		t.Helper()
		if _, err := c.Exec(ctxTimeout(t, 10*time.Second), "DROP TABLE "+tbl); err != nil {
			t.Fatal(err)
		}
	}
	// 263: one table out would fit (234), but that is over 90% of the budget (225): both stay out.
	drop("b10")
	check(58, 116, "b01", "b02", "b10")
	// 234: fits, but over 225; with b01 out 205 is within it, so b02 comes back.
	drop("b09")
	check(29, 145, "b01", "b09", "b10")
	// 205: within 225, everything is back.
	drop("b08")
	check(0, 145, "b08", "b09", "b10")
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestTableNameNotUTF8: in a SQL_ASCII database a table name may be any bytes; its row is left
// out and counted as invalid samples, and the other tables are exported.
func TestTableNameNotUTF8(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	if err := cluster.Exec(ctx, "DROP DATABASE IF EXISTS ascii_t WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE DATABASE ascii_t ENCODING SQL_ASCII TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE IF EXISTS ascii_t WITH (FORCE)") })
	c := openSession(t, "ascii_t", "ascii-test")
	for _, sql := range []string{"CREATE TABLE \"bad\xff\" (id int)", "CREATE TABLE good (id int)"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, "ascii_t", func(c *Config) {
		only("stat_user_tables", "statio_user_tables")(c)
		c.Databases = "ascii_t"
	})
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "stat_user_tables")
	if n := len(s.values("pg_stat_user_tables_seq_scan", map[string]string{"datname": "ascii_t", "relname": "good"})); n != 1 {
		t.Errorf("the good table: %d seq_scan samples, want 1\n%s", n, s.body)
	}
	if n := len(s.values("pg_stat_user_tables_seq_scan", map[string]string{"datname": "ascii_t"})); n != 1 {
		t.Errorf("%d tables' seq_scan exported, want the good one only", n)
	}
	if got := s.value(t, "pgsidecar_collector_dropped_series_total", map[string]string{"reason": "invalid"}); got != 29 {
		t.Errorf("dropped invalid = %v, want the bad table's 29 samples", got)
	}
}

// TestSeriesBudgetPartialAnswer: a scrape that answers before its collection finishes (its
// deadline came first) keeps to the budget too, leaving out whole tables.
func TestSeriesBudgetPartialAnswer(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_a,pd_b,pd_c"
		c.MaxSeries = 30 // one table's 21 series, not two
	})
	e.exp.beforeDatabase = func(db string) {
		if db == "pd_c" {
			time.Sleep(4 * time.Second)
		}
	}
	var s scrape
	// pd_b's statistics may take a moment to show its table.
	if !waitForCond(15*time.Second, func() bool {
		s = e.scrape(t, 1500*time.Millisecond, 10*time.Second) // answers at 1.2 s, before pd_c
		return s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "stat_user_tables"}) == 0
	}) {
		t.Fatalf("the scrape never answered before its collection finished:\n%s", s.body)
	}
	n := 0
	for name, mf := range s.families {
		if strings.HasPrefix(name, "pg_stat_user_tables_") {
			n += len(mf.GetMetric())
		}
	}
	if n != 21 {
		t.Errorf("%d pg_stat_user_tables_* samples in the partial answer, want one table's 21", n)
	}
	if got := len(s.values("pg_stat_user_tables_seq_scan", map[string]string{"datname": "pd_a"})); got != 1 {
		t.Errorf("pd_a's table: %d samples, want 1", got)
	}
}

// TestSeriesBudgetFollower: a sidecar that stops leading (--collector.scope=auto) collects
// nothing, so it no longer reports series left out, and the budget alert does not go on firing
// for it.
func TestSeriesBudgetFollower(t *testing.T) {
	createDB(t, "budget_follow_t")
	c := openSession(t, "budget_follow_t", "budget-follow-test")
	tableSetup(t, c, 20, "CREATE TABLE a (id int)", "CREATE TABLE b (id int)",
		"INSERT INTO a SELECT generate_series(1, 10)", "INSERT INTO b SELECT generate_series(1, 10)")
	auto := func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "budget_follow_t"
		c.Scope = ScopeAuto
		c.ElectionInterval = 200 * time.Millisecond
		c.MaxSeries = 30 // one table's 21 series, not two
	}
	x, y := newEnv(t, "budget_follow_t", auto), newEnv(t, "budget_follow_t", auto)
	over := func(e *env) (leads bool, dropped float64) {
		s := e.scrape(t, 0, 20*time.Second)
		return s.value(t, "pgsidecar_collector_leader", nil) == 1, s.value(t, "pgsidecar_collector_series_over_budget", nil)
	}
	var leader *env
	if !waitForCond(10*time.Second, func() bool {
		for _, e := range []*env{x, y} {
			if l, d := over(e); l && d > 0 {
				leader = e
				return true
			}
		}
		return false
	}) {
		t.Fatal("no leader over its budget")
	}
	// End the leader's election session until the other sidecar has taken the lock and the
	// leader follows.
	ctx := ctxTimeout(t, 20*time.Second)
	if !waitForCond(15*time.Second, func() bool {
		if l, _ := over(leader); !l {
			return true
		}
		if err := cluster.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
			WHERE locktype = 'advisory' AND granted`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		return false
	}) {
		t.Fatal("the leader never stopped leading")
	}
	if _, d := over(leader); d != 0 {
		t.Errorf("series over budget = %v on the sidecar that no longer leads, want 0", d)
	}
}
