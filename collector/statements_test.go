package collector

import (
	"strings"
	"testing"
	"time"
)

func TestStatements(t *testing.T) {
	createDB(t, "statements_t")
	e := newEnv(t, "statements_t", func(c *Config) {
		c.StatementsLimit = 3
		c.Enabled = map[string]bool{"statements": true, "activity": false, "database": false, "settings": false}
	})

	// Without the extension: nothing exported, the collector still succeeds, and says so once.
	for range 2 {
		s := e.scrape(t, 0, 20*time.Second)
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "statements"}); got != 1 {
			t.Fatalf("statements success without the extension = %v, want 1", got)
		}
		if n := len(s.values("pg_stat_statements_calls_total", nil)); n != 0 {
			t.Fatalf("%d statement samples without the extension", n)
		}
	}
	if n := strings.Count(e.log.String(), "Statements collector has nothing to read"); n != 1 {
		t.Errorf("missing extension logged %d times, want once:\n%s", n, e.log.String())
	}

	ctx := ctxTimeout(t, 30*time.Second)
	c := openSession(t, "statements_t", "stmt-test")
	if _, err := c.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if _, err := c.Exec(ctx, "SELECT pg_sleep(0.01) AS statements_marker"); err != nil {
			t.Fatal(err)
		}
	}
	var queryID string
	if err := c.QueryRow(ctx, "SELECT queryid::text FROM pg_stat_statements WHERE query LIKE '%statements_marker%' AND query NOT LIKE '%pg_stat_statements%'").Scan(&queryID); err != nil {
		t.Fatal(err)
	}
	s := e.scrape(t, 0, 20*time.Second)
	want := map[string]string{"queryid": queryID, "datname": "statements_t", "user": "postgres"}
	if got := s.value(t, "pg_stat_statements_calls_total", want); got != 7 {
		t.Errorf("calls = %v, want 7", got)
	}
	if got := s.value(t, "pg_stat_statements_seconds_total", want); got < 0.07 {
		t.Errorf("total seconds = %v, want at least 7 × 10 ms", got)
	}
	if got := s.value(t, "pg_stat_statements_rows_total", want); got != 7 {
		t.Errorf("rows = %v, want 7", got)
	}
	for _, name := range []string{"pg_stat_statements_block_read_seconds_total", "pg_stat_statements_block_write_seconds_total"} {
		if len(s.values(name, want)) != 1 {
			t.Errorf("%s missing", name)
		}
	}
	if n := len(s.values("pg_stat_statements_calls_total", nil)); n != 3 {
		t.Errorf("%d statements exported, want the limit of 3", n)
	}
	if _, ok := s.families["pg_stat_statements_query_id"]; ok {
		t.Error("statement texts exported without --collector.statements.include-query")
	}
	// The server saw the collector ask for the statistics without the texts (it records the
	// argument of pg_stat_statements() as a parameter, so the shape of the query tells).
	var withText, withoutText int
	if err := c.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE query LIKE '%left(s.query%'),
       count(*) FILTER (WHERE query LIKE '%FROM pg_stat_statements(%' AND query NOT LIKE '%left(s.query%')
FROM pg_stat_statements`).Scan(&withText, &withoutText); err != nil {
		t.Fatal(err)
	}
	if withText != 0 || withoutText != 1 {
		t.Errorf("the server ran %d collections with statement texts and %d without, want 0 and 1", withText, withoutText)
	}

	// With the texts: one series per exported statement, its text cut to the length.
	e = newEnv(t, "statements_t", func(c *Config) {
		c.StatementsLimit = 3
		c.StatementsIncludeQuery = true
		c.StatementsQueryLength = 20
		c.Enabled = map[string]bool{"statements": true, "activity": false, "database": false, "settings": false}
	})
	s = e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_stat_statements_query_id", map[string]string{"queryid": queryID, "query": "SELECT pg_sleep($1) "}); got != 1 {
		t.Errorf("query_id = %v, want 1", got)
	}
	if mf := s.families["pg_stat_statements_query_id"]; len(mf.GetMetric()) > 3 {
		t.Errorf("%d statement texts exported, want at most the limit of 3", len(mf.GetMetric()))
	}
	for _, m := range s.families["pg_stat_statements_query_id"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "query" && len([]rune(l.GetValue())) > 20 {
				t.Errorf("statement text %q longer than 20 characters", l.GetValue())
			}
		}
	}
}

func TestStatementsQueryByVersion(t *testing.T) {
	for _, c := range []struct {
		version int
		read    string
	}{
		{130000, "sum(s.blk_read_time)"}, {140000, "sum(s.blk_read_time)"}, {150000, "sum(s.blk_read_time)"},
		{160000, "sum(s.blk_read_time)"}, {170000, "sum(s.shared_blk_read_time)"},
	} {
		q := statementsQuery(c.version, 0)
		if !strings.Contains(q, c.read) {
			t.Errorf("%d: query lacks %s:\n%s", c.version, c.read, q)
		}
		if !strings.Contains(q, "total_exec_time") || !strings.Contains(q, "LIMIT $1") {
			t.Errorf("%d: query lacks total_exec_time ordering or limit", c.version)
		}
		if !strings.Contains(q, "FROM pg_stat_statements(false) s") || strings.Contains(q, "left(s.query") {
			t.Errorf("%d: query without texts reads them:\n%s", c.version, q)
		}
		if q := statementsQuery(c.version, 40); !strings.Contains(q, "FROM pg_stat_statements(true) s") || !strings.Contains(q, "left(s.query, 40)") {
			t.Errorf("%d: query with texts of 40 characters:\n%s", c.version, q)
		}
	}
}

// TestStatementsExcluded: --collector.statements.exclude-databases and .exclude-users (postgres_exporter's
// stat_statements.exclude_databases and .exclude_users) leave those statements out.
func TestStatementsExcluded(t *testing.T) {
	createDB(t, "statements_x")
	ctx := ctxTimeout(t, 30*time.Second)
	c := openSession(t, "statements_x", "stmt-x")
	if _, err := c.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Exec(ctx, "SELECT 1 AS excluded_marker"); err != nil {
			t.Fatal(err)
		}
	}
	env := func(db, user string) scrape {
		e := newEnv(t, "statements_x", func(c *Config) {
			c.StatementsLimit = 1000
			c.StatementsExcludeDatabases, c.StatementsExcludeUsers = db, user
			c.Enabled = map[string]bool{"statements": true, "activity": false, "database": false, "settings": false}
		})
		return e.scrape(t, 0, 20*time.Second)
	}
	here, postgres := map[string]string{"datname": "statements_x"}, map[string]string{"user": "postgres"}
	s := env("", "")
	if len(s.values("pg_stat_statements_calls_total", here)) == 0 || len(s.values("pg_stat_statements_calls_total", postgres)) == 0 {
		t.Fatal("no statements of statements_x and of postgres without exclusions")
	}
	if n := len(env("other, statements_x", "").values("pg_stat_statements_calls_total", here)); n != 0 {
		t.Errorf("%d statements of an excluded database", n)
	}
	if n := len(env("", "nobody,postgres").values("pg_stat_statements_calls_total", postgres)); n != 0 {
		t.Errorf("%d statements of an excluded user", n)
	}
}
