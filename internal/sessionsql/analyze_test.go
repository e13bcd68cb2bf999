package sessionsql

import (
	"slices"
	"testing"
)

func TestAnalyzePins(t *testing.T) {
	for _, c := range []struct{ sql, pin string }{
		{"SET ROLE alice", PinRole},
		{"set role 'alice'", PinRole},
		{"SET SESSION ROLE alice", PinRole},
		{"SET role TO alice", PinRole},
		{"SET SESSION AUTHORIZATION alice", PinRole},
		{"select set_config('role', 'alice', false)", PinRole},
		{"SELECT set_config($1, 'x', false)", PinSetConfig},
		{"SELECT set_config(name, 'x', false) FROM t", PinSetConfig},
		{"SELECT set_config('app.' || 'x', 'y', false)", PinSetConfig},
		{"SELECT pg_advisory_lock(1)", PinAdvisoryLock},
		{`SELECT pg_catalog."pg_try_advisory_lock"(1)`, PinAdvisoryLock},
		{"select * from t where pg_advisory_lock_shared(id) is not null", PinAdvisoryLock},
		{"LISTEN chan", PinListen},
		{"CREATE TEMP TABLE x (a int)", PinTempTable},
		{"create global temporary table x (a int)", PinTempTable},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", PinTempTable},
		{"SELECT 1 AS a INTO TEMP x", PinTempTable},
		{"select 1 into temporary table x", PinTempTable},
		{"CREATE TABLE pg_temp.x (a int)", PinTempTable},
		{`CREATE TABLE "pg_temp".x (a int)`, PinTempTable},
		{"CREATE TABLE x AS SELECT 1; CREATE TEMP TABLE y AS SELECT 2", PinTempTable},
		{"EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1", PinTempTable},
		{"PREPARE p AS SELECT 1", PinPrepare},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", PinCursorHold},
		{"LOAD 'auto_explain'", PinLoad},
		{"SELECT dblink_connect('x')", PinSessionFunction},
		{"SELECT setseed(0.5)", PinSessionFunction},
		{"DO $$BEGIN PERFORM set_config('app.t', 'x', false); END$$", PinBlock},
		{"DO $$BEGIN EXECUTE 'SET ROLE x'; END$$", PinBlock},
		{"DO 'BEGIN CREATE TEMP TABLE x (a int); END'", PinBlock},
		{"DO $x$BEGIN PERFORM pg_advisory_lock(1); END$x$", PinBlock},
		{"CALL p(pg_advisory_lock(1))", PinAdvisoryLock},
		{"FROBNICATE everything", PinUnknown},
		{"select 'unterminated", PinUnlexable},
		{`SELECT U&"\0073et_config"('app.x', 'y', false)`, PinUnlexable},
		// A SET hidden behind strings that a crude splitter misreads.
		{`SELECT E'\''; SET ROLE alice`, PinRole},
		{`SELECT $$;'$$; SET ROLE alice`, PinRole},
		{"SELECT 1; /* ; */ SET ROLE alice -- ;", PinRole},
		// Under standard_conforming_strings off, this is one string and a SET ROLE after it.
		{`SELECT 'a\'; SET ROLE alice; SELECT ''`, PinRole},
		{"WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x", PinAdvisoryLock},
	} {
		if e := Analyze(c.sql); e.Pin != c.pin {
			t.Errorf("Analyze(%q).Pin = %q, want %q", c.sql, e.Pin, c.pin)
		}
	}
}

func TestAnalyzeHarmless(t *testing.T) {
	for _, sql := range []string{
		"", "  ", "-- nothing", "/* nothing */", ";", ";;",
		"SELECT 1", "select * from users where id = $1", "INSERT INTO t VALUES (1) RETURNING id",
		"insert into temp values (1)", "UPDATE t SET a = 1", "DELETE FROM t", "MERGE INTO t USING s ON true WHEN MATCHED THEN DO NOTHING",
		"WITH x AS (SELECT 1) SELECT * FROM x", "VALUES (1)", "TABLE t", "COPY t FROM STDIN", "EXPLAIN SELECT 1", "SHOW work_mem",
		"BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION", "COMMIT", "END", "ROLLBACK", "ABORT",
		"SAVEPOINT a", "RELEASE SAVEPOINT a", "ROLLBACK TO SAVEPOINT a",
		"SET LOCAL work_mem = '1MB'", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET CONSTRAINTS ALL DEFERRED",
		"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "DECLARE c CURSOR FOR SELECT 1", "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
		"FETCH 10 FROM c", "CLOSE c", "NOTIFY chan, 'x'", "UNLISTEN *",
		"CREATE TABLE t (a int)", "CREATE INDEX CONCURRENTLY i ON t (a)", "ALTER TABLE t ADD COLUMN b int", "DROP TABLE t",
		"CREATE UNLOGGED TABLE t (temp int)", "select temp from readings", `select "temp" into x from t`,
		"VACUUM ANALYZE t", "ANALYZE t", "TRUNCATE t", "GRANT SELECT ON t TO bob", "COMMENT ON TABLE t IS 'x'",
		"SELECT pg_advisory_xact_lock(1)", "SELECT pg_try_advisory_xact_lock(1)", "SELECT pg_advisory_unlock_all()",
		"SELECT nextval('s')", "SELECT now()", "(SELECT 1) UNION (SELECT 2)", "DISCARD PLANS", "DISCARD TEMP",
		"PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'", "EXECUTE p(1)",
		"CREATE FUNCTION f() RETURNS int AS $$ select set_config('x.y', 'z', false)::int $$ LANGUAGE sql",
		"DO $$BEGIN INSERT INTO t VALUES (1); END$$",
		"SELECT 1 /* controller='users',action='show' */",
	} {
		if e := Analyze(sql); !e.Harmless() {
			t.Errorf("Analyze(%q) = %+v, want harmless", sql, e)
		}
	}
}

func TestAnalyzeSettings(t *testing.T) {
	for _, c := range []struct {
		sql            string
		custom, resets []string
	}{
		{"SET client_min_messages TO warning", nil, nil},
		{"SET search_path = a, b", nil, nil},
		{"SET SESSION statement_timeout = '5s'", nil, nil},
		{"set time zone 'UTC'", nil, nil},
		{"SET TIME ZONE LOCAL", nil, []string{"timezone"}},
		{"SET NAMES 'UTF8'", nil, nil},
		{"SET SCHEMA 'a'", nil, nil},
		{"SET XML OPTION DOCUMENT", nil, nil},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", nil, nil},
		{"SET app.tenant = 'acme'", []string{"app.tenant"}, nil},
		{`SET "App"."Tenant" TO 'acme'`, []string{"app.tenant"}, nil},
		{"SET work_mem TO DEFAULT", nil, []string{"work_mem"}},
		{"SET ROLE NONE", nil, nil},
		{"RESET work_mem", nil, []string{"work_mem"}},
		{"RESET ALL", nil, []string{"*"}},
		{"RESET ROLE", nil, []string{"role"}},
		{"RESET app.tenant", []string{"app.tenant"}, []string{"app.tenant"}},
		{"SELECT set_config('app.tenant', 'acme', false)", []string{"app.tenant"}, nil},
		{"SELECT pg_catalog.set_config('TimeZone', $1, false)", nil, nil},
		{`SELECT "set_config"('App.Tenant'::text, $1::text, false)`, []string{"app.tenant"}, nil},
		{"WITH x AS (SELECT set_config('app.t', 'x', false)) SELECT * FROM x", []string{"app.t"}, nil},
		{"SELECT * FROM t WHERE id = 1; SET work_mem = '1MB'", nil, nil},
	} {
		e := Analyze(c.sql)
		if e.Pin != "" || !e.Settings || !slices.Equal(e.Custom, c.custom) || !slices.Equal(e.Resets, c.resets) {
			t.Errorf("Analyze(%q) = %+v, want settings, custom %q, resets %q", c.sql, e, c.custom, c.resets)
		}
	}
}

func TestAnalyzeDiscardAndDeallocate(t *testing.T) {
	e := Analyze("DISCARD ALL")
	if !e.Discard || !slices.Equal(e.Resets, []string{"*"}) {
		t.Errorf("DISCARD ALL: %+v", e)
	}
	for sql, want := range map[string][]string{
		"DEALLOCATE p": {"p"}, `DEALLOCATE PREPARE "P"`: {"P"}, "deallocate all": {"*"}, "DEALLOCATE P": {"p"},
	} {
		if e := Analyze(sql); !slices.Equal(e.Dealloc, want) || e.Pin != "" {
			t.Errorf("Analyze(%q) = %+v, want dealloc %q", sql, e, want)
		}
	}
}

func TestCertainlyHarmless(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42;": true,
		"  select 1": true, "BEGIN;": true, "UPDATE t SET a = 1": false, "select 1; set role x": false,
		"select pg_advisory_lock(1)": false, "select 1 offset 2": false, "SET work_mem = 1": false,
		"/* c */ select 1": false, "select_x": false, `select E'\''`: false, "select temp from t": false,
	} {
		if got := certainlyHarmless([]byte(sql)); got != want {
			t.Errorf("certainlyHarmless(%q) = %v, want %v", sql, got, want)
		}
		if want && !Analyze(sql).Harmless() {
			t.Errorf("%q cleared but not harmless", sql)
		}
	}
}

func TestCacheKeyLeavesOutTrailingComment(t *testing.T) {
	var c Cache
	for _, sql := range []string{
		"SET work_mem = '1MB' /*traceparent='00-1'*/",
		"SET work_mem = '1MB' /*traceparent='00-2'*/",
	} {
		if e := c.Analyze([]byte(sql)); !e.Settings || e.Pin != "" {
			t.Errorf("%q: %+v", sql, e)
		}
	}
	if len(c.effects) != 1 {
		t.Errorf("cache holds %d texts, want 1", len(c.effects))
	}
	// Text after the comment is not a comment: it is read.
	for _, sql := range []string{
		"SELECT 1 /* a */; SET ROLE x; SELECT 2 */",
		"SELECT '/*'; SET ROLE x --*/",
		"SET ROLE x /*/",
	} {
		if e := c.Analyze([]byte(sql)); e.Pin == "" {
			t.Errorf("%q: not pinned: %+v", sql, e)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	var c Cache
	for i := range maxCacheEntries + 10 {
		c.Analyze([]byte("SET " + string(rune('a'+i%26)) + string(rune('0'+i%10)) + "_" + itoa(i)))
	}
	if len(c.effects) > maxCacheEntries {
		t.Errorf("cache holds %d texts, bound %d", len(c.effects), maxCacheEntries)
	}
}

func itoa(i int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
		if i == 0 {
			return string(b)
		}
	}
}

// FuzzAnalyze: never panics; what the quick scan clears Analyze finds harmless (or cannot lex,
// which the server refuses); the cache agrees with Analyze; a trailing comment changes nothing;
// a text that pins still pins with harmless statements around it.
func FuzzAnalyze(f *testing.F) {
	for _, s := range []string{"SET ROLE x", "select set_config('a.b', 'c', false)", "DO $$BEGIN END$$",
		`SELECT E'\''; SET x = 1`, "CREATE TEMP TABLE x()", "select 1 /* c */", "RESET ALL; DISCARD ALL"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		e := Analyze(sql)
		if certainlyHarmless([]byte(sql)) && !e.Harmless() && e.Pin != PinUnlexable {
			t.Fatalf("the quick scan clears %q, which Analyze reads as %+v", sql, e)
		}
		var c Cache
		if got := c.Analyze([]byte(sql)); got.Pin != e.Pin && e.Pin != "" && got.Pin == "" &&
			(e.Pin != PinUnlexable || !certainlyHarmless([]byte(sql))) {
			t.Fatalf("cache reads %q as unpinned; Analyze pins (%s)", sql, e.Pin)
		}
		if e.Pin != "" {
			if w := Analyze("SELECT 1;\n" + sql + "\n;SELECT 2"); w.Pin == "" {
				t.Fatalf("%q pins (%s) alone but not between harmless statements", sql, e.Pin)
			}
		}
	})
}

// BenchmarkCacheHit is what a repeated text costs the proxy per message.
func BenchmarkCacheHit(b *testing.B) {
	var c Cache
	sql := []byte(`SELECT "public"."users"."id", "public"."users"."email" FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/`)
	c.Analyze(sql)
	b.ReportAllocs()
	for b.Loop() {
		c.Analyze(sql)
	}
}

// BenchmarkAnalyze is the cost of a text seen for the first time.
func BenchmarkAnalyze(b *testing.B) {
	sql := `SELECT "public"."users"."id", "public"."users"."email" FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3`
	b.ReportAllocs()
	for b.Loop() {
		Analyze(sql)
	}
}
