package sqlnorm_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// tree is PostgreSQL's parse tree of sql with what a fingerprint leaves out taken away: source
// locations, and the values of constants and parameters (each becomes "?", as they all become
// ? in the fingerprint). Two statements are the same statement when their trees are equal.
func tree(t *testing.T, sql string) any {
	t.Helper()
	js, err := pg_query.ParseToJSON(sql)
	if err != nil {
		t.Fatalf("PostgreSQL's parser refuses %q: %v", sql, err)
	}
	var v any
	if err := json.Unmarshal([]byte(js), &v); err != nil {
		t.Fatal(err)
	}
	return strip(v)
}

func strip(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			if _, ok := x["A_Const"]; ok {
				return "?"
			}
			if _, ok := x["ParamRef"]; ok {
				return "?"
			}
		}
		for k, e := range x {
			if k == "location" || k == "stmt_location" || k == "stmt_len" {
				delete(x, k)
				continue
			}
			x[k] = strip(e)
		}
	case []any:
		for i, e := range x {
			x[i] = strip(e)
		}
	}
	return v
}

// statements is a corpus of distinct statements: PostgreSQL's parser tells each from the others.
var statements = []string{
	"SELECT 1",
	"SELECT 1, 2",
	// Fingerprint version 2: a sign, TRUE, FALSE and NULL are (part of) constants, as in the
	// parser; an IS NULL test is not a constant.
	"SELECT a FROM t WHERE b = -1",
	"SELECT a FROM t WHERE b = 1 AND c = true",
	"SELECT a FROM t WHERE b = 1 AND c = NULL",
	"SELECT a FROM t WHERE b = 1 AND c IS NULL",
	"SELECT a FROM t WHERE b = 1 AND c IS NOT FALSE",
	"SELECT a - 1 FROM t",
	"SELECT a FROM t",
	"SELECT b FROM t",
	"SELECT a, b FROM t",
	"SELECT ab FROM t",
	"SELECT \"A\" FROM t",
	"SELECT a FROM t WHERE id = 1",
	"SELECT a FROM t WHERE id = $1",
	"SELECT a FROM t WHERE id > 1",
	"SELECT a FROM t WHERE id = 1 AND name = 'x'",
	"SELECT a FROM t WHERE id IN (1, 2, 3)",
	"SELECT a FROM t WHERE id IN (1, 2)",
	"SELECT a FROM s.t WHERE id = 1",
	"SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 100.5 GROUP BY c.name",
	"SELECT now() - interval '1 day'",
	"SELECT x::numeric(10, 2) FROM t",
	"SELECT x::text FROM t",
	"INSERT INTO t (a, b) VALUES (1, 'x')",
	"INSERT INTO t (a, b) VALUES (1, 'x') RETURNING id",
	"INSERT INTO t (b, a) VALUES (1, 'x')",
	"UPDATE t SET a = a + 1 WHERE id = 7",
	"UPDATE t SET a = a - 1 WHERE id = 7",
	"DELETE FROM t WHERE created < now() - interval '30 days'",
	"SELECT * FROM t ORDER BY a DESC LIMIT 10",
	"SELECT * FROM t ORDER BY a LIMIT 10",
	"WITH x AS (SELECT a FROM t) SELECT * FROM x",
	"SELECT E'a\\nb', B'1010', X'1F', $$dollar$$, $q$tagged$q$",
	"BEGIN",
	"COMMIT",
	"SELECT pg_sleep(1)",
}

// variants returns sql written differently but meaning the same statement: other constants,
// other spacing, keywords and unquoted names in other case, comments, a trailing semicolon.
func variants(t *testing.T, sql string) []string {
	t.Helper()
	toks, err := sqlnorm.Lex(sql)
	if err != nil {
		t.Fatal(err)
	}
	var constants, spaced, upper, lower strings.Builder
	for i, tok := range toks {
		text := sql[tok.Start:tok.End]
		sep := " "
		if i > 0 && toks[i-1].End == tok.Start {
			sep = ""
		}
		if i == 0 {
			sep = ""
		}
		constants.WriteString(sep)
		switch tok.Kind {
		case sqlnorm.String:
			constants.WriteString("'other'")
		case sqlnorm.Number:
			constants.WriteString("42")
		default:
			constants.WriteString(text)
		}
		// Any spacing between tokens, except inside the :: of a cast, which the lexer reads
		// as two tokens.
		if i > 0 && !(text == ":" && sep == "" && sql[toks[i-1].Start:toks[i-1].End] == ":") {
			spaced.WriteString("\n\t  ")
		}
		spaced.WriteString(text)
		word := tok.Kind == sqlnorm.Other && !strings.Contains(text, "\"") && (text[0]|0x20 >= 'a' && text[0]|0x20 <= 'z' || text[0] == '_')
		upper.WriteString(sep)
		lower.WriteString(sep)
		if word {
			upper.WriteString(strings.ToUpper(text))
			lower.WriteString(strings.ToLower(text))
		} else {
			upper.WriteString(text)
			lower.WriteString(text)
		}
	}
	return []string{constants.String(), spaced.String(), upper.String(), lower.String(),
		"/* app:checkout */ " + sql + " -- trailing comment", sql + ";"}
}

func ourFingerprint(t *testing.T, sql string) fingerprint.Fingerprint {
	t.Helper()
	f, _, err := fingerprint.Of(sql)
	if err != nil {
		t.Fatalf("fingerprint.Of(%q): %v", sql, err)
	}
	return f
}

// TestFingerprintAgainstParser checks fingerprints against PostgreSQL's parser: statements that
// differ only in constants, spacing, keyword case and comments share a fingerprint (and so do
// their parse trees), and statements whose parse trees differ do not share one.
func TestFingerprintAgainstParser(t *testing.T) {
	type entry struct {
		sql  string
		tree any
		fp   fingerprint.Fingerprint
	}
	var all []entry
	for _, sql := range statements {
		base := entry{sql, tree(t, sql), ourFingerprint(t, sql)}
		for _, v := range variants(t, sql) {
			e := entry{v, tree(t, v), ourFingerprint(t, v)}
			if !reflect.DeepEqual(e.tree, base.tree) {
				t.Fatalf("the test's variant %q of %q is another statement to PostgreSQL", v, sql)
			}
			if e.fp != base.fp {
				t.Errorf("same statement, different fingerprints:\n%q %s\n%q %s", sql, base.fp, v, e.fp)
			}
			// pg_query's own fingerprint is coarser (it leaves out aliases and IN list lengths)
			// but never tells apart what ours merges.
			a, _ := pg_query.Fingerprint(sql)
			b, _ := pg_query.Fingerprint(v)
			if a != b {
				t.Errorf("pg_query tells %q and %q apart", sql, v)
			}
			all = append(all, e)
		}
		all = append(all, base)
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			same := reflect.DeepEqual(all[i].tree, all[j].tree)
			if same != (all[i].fp == all[j].fp) {
				t.Errorf("%q (%s) and %q (%s): same parse tree %v, same fingerprint %v",
					all[i].sql, all[i].fp, all[j].sql, all[j].fp, same, all[i].fp == all[j].fp)
			}
		}
	}
	t.Logf("%d statements, %d written differently, %d pairs compared", len(statements), len(all)-len(statements), len(all)*(len(all)-1)/2)
}
