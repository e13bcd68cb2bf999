package collector

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	// argument of pg_stat_statements() as a parameter, so the shape of the query tells). The
	// query id join reads the texts of query ids it has not mapped yet, apart (DISTINCT ON).
	var withText, withoutText int
	if err := c.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE query LIKE '%left(s.query%'),
       count(*) FILTER (WHERE query LIKE '%FROM public.pg_stat_statements(%' AND query NOT LIKE '%left(s.query%' AND query NOT LIKE '%DISTINCT ON%')
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
		q := statementsQuery(c.version, 0, "public")
		if !strings.Contains(q, c.read) {
			t.Errorf("%d: query lacks %s:\n%s", c.version, c.read, q)
		}
		if !strings.Contains(q, "total_exec_time") || !strings.Contains(q, "LIMIT $1") {
			t.Errorf("%d: query lacks total_exec_time ordering or limit", c.version)
		}
		if !strings.Contains(q, "FROM public.pg_stat_statements(false) s") || strings.Contains(q, "left(s.query") {
			t.Errorf("%d: query without texts reads them:\n%s", c.version, q)
		}
		if q := statementsQuery(c.version, 40, "public"); !strings.Contains(q, "FROM public.pg_stat_statements(true) s") || !strings.Contains(q, "left(s.query, 8192)") {
			t.Errorf("%d: query with texts of 40 characters:\n%s", c.version, q)
		}
	}
}

// statementsEnv is an exporter with only the statements collector, texts included, on database
// db, where pg_stat_statements is installed (in schema, quoted as given) and reset.
func statementsEnv(t *testing.T, db, schema string) (*env, *pgx.Conn) {
	t.Helper()
	createDB(t, db)
	ctx := ctxTimeout(t, 30*time.Second)
	c := openSession(t, db, "stmt-test")
	for _, q := range []string{"CREATE SCHEMA IF NOT EXISTS " + schema, "CREATE EXTENSION pg_stat_statements SCHEMA " + schema,
		"SELECT " + schema + ".pg_stat_statements_reset()"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e := newEnv(t, db, func(c *Config) {
		c.StatementsLimit = 50
		c.StatementsIncludeQuery = true
		c.StatementsQueryLength = 200
		c.Enabled = map[string]bool{"statements": true, "activity": false, "database": false, "settings": false}
	})
	return e, c
}

// queryTexts is the query label of every pg_stat_statements_query_id series.
func queryTexts(s scrape) []string {
	var out []string
	for _, m := range s.families["pg_stat_statements_query_id"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "query" {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}

// A utility statement keeps its literals in pg_stat_statements, and every statement its
// comments: the exported text is normalised as the slow query log's is, so neither a password
// nor a comment reaches /metrics.
func TestStatementsTextsNormalised(t *testing.T) {
	e, c := statementsEnv(t, "statements_norm", "public")
	ctx := ctxTimeout(t, 30*time.Second)
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS stmt_pw_role") })
	for _, q := range []string{"CREATE ROLE stmt_pw_role", "ALTER ROLE stmt_pw_role PASSWORD 'S3cretHunter2'",
		"SELECT 1 /* password=CommentHunter3 */ AS comment_marker"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "statements"}); got != 1 {
		t.Fatalf("statements success = %v", got)
	}
	for _, secret := range []string{"S3cretHunter2", "CommentHunter3", "password="} {
		if strings.Contains(s.body, secret) {
			t.Errorf("/metrics carries %q", secret)
		}
	}
	texts := strings.Join(queryTexts(s), "\n")
	for _, want := range []string{"ALTER ROLE stmt_pw_role PASSWORD $1", "SELECT $1 AS comment_marker"} {
		if !strings.Contains(texts, want) {
			t.Errorf("no exported text %q among:\n%s", want, texts)
		}
	}
}

// pg_stat_statements installed in a schema outside the collector's search_path is still read.
func TestStatementsOutsideSearchPath(t *testing.T) {
	e, c := statementsEnv(t, "statements_schema", `"mon ext"`)
	if _, err := c.Exec(ctxTimeout(t, 10*time.Second), "SELECT 1 AS schema_marker"); err != nil {
		t.Fatal(err)
	}
	s := e.scrape(t, 0, 20*time.Second)
	if n := len(s.values("pg_stat_statements_calls_total", nil)); n == 0 {
		t.Errorf("no statements exported from an extension in schema \"mon ext\":\n%s", e.log.String())
	}
	if !strings.Contains(strings.Join(queryTexts(s), "\n"), "SELECT $1 AS schema_marker") {
		t.Errorf("texts: %q", queryTexts(s))
	}
	if strings.Contains(e.log.String(), "not installed") {
		t.Errorf("an extension outside search_path reported as not installed:\n%s", e.log.String())
	}
}

// A SQL_ASCII database accepts any bytes, so a statement text in pg_stat_statements need not be
// UTF-8. Read from a UTF-8 database the server cannot convert it and fails the whole call: the
// collector still exports the figures (without texts) and succeeds. Read from the SQL_ASCII
// database itself, the text's bad bytes are replaced and the text is exported.
func TestStatementsInvalidUTF8Text(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	const db = "statements_ascii"
	_ = cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	if err := cluster.Exec(ctx, "CREATE DATABASE "+db+" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	cfg, err := pgx.ParseConfig(cluster.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["client_encoding"] = "SQL_ASCII"
	raw, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close(context.Background())
	e, _ := statementsEnv(t, "statements_utf8", "public") // resets the statistics
	for _, q := range []string{"CREATE EXTENSION IF NOT EXISTS pg_stat_statements", "SELECT 1 AS \"bad\xff\xfe_marker\""} {
		if _, err := raw.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%q: %v", q, err)
		}
	}
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "statements"}); got != 1 {
		t.Errorf("statements success from a UTF-8 database = %v, want 1:\n%s", got, e.log.String())
	}
	if n := len(s.values("pg_stat_statements_calls_total", map[string]string{"datname": db})); n == 0 {
		t.Error("no figures for the SQL_ASCII database's statements")
	}
	if !strings.Contains(e.log.String(), "exports no statement texts") {
		t.Errorf("the skipped texts are not logged:\n%s", e.log.String())
	}

	e = newEnv(t, db, func(c *Config) {
		c.StatementsLimit = 50
		c.StatementsIncludeQuery = true
		c.StatementsQueryLength = 200
		c.Enabled = map[string]bool{"statements": true, "activity": false, "database": false, "settings": false}
	})
	s = e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "statements"}); got != 1 {
		t.Errorf("statements success from the SQL_ASCII database = %v, want 1", got)
	}
	if texts := strings.Join(queryTexts(s), "\n"); !strings.Contains(texts, "bad\uFFFD_marker") {
		t.Errorf("the invalid text is not exported with its bad bytes replaced (one U+FFFD a run):\n%s", texts)
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
