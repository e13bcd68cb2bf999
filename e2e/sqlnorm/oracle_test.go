// Package sqlnorm_test checks pgsidecar's SQL normaliser against PostgreSQL's own scanner, which
// pg_query_go links in (a cgo dependency kept out of the main module).
package sqlnorm_test

import (
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// removed reports the spans PostgreSQL's scanner reads as constants or comments: what the
// normaliser must replace or drop.
func removed(sql string) ([][2]int, bool) {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return nil, false
	}
	var spans [][2]int
	for _, tok := range res.Tokens {
		switch tok.Token {
		case pg_query.Token_SCONST, pg_query.Token_USCONST, pg_query.Token_BCONST, pg_query.Token_XCONST,
			pg_query.Token_ICONST, pg_query.Token_FCONST, pg_query.Token_SQL_COMMENT, pg_query.Token_C_COMMENT:
			spans = append(spans, [2]int{int(tok.Start), int(tok.End)})
		}
	}
	return spans, true
}

func ours(sql string) ([][2]int, error) {
	toks, err := sqlnorm.Lex(sql)
	if err != nil {
		return nil, err
	}
	var spans [][2]int
	for _, tok := range toks {
		switch tok.Kind {
		case sqlnorm.String, sqlnorm.Number, sqlnorm.Comment:
			spans = append(spans, [2]int{tok.Start, tok.End})
		}
	}
	return spans, nil
}

// check compares the normaliser's constant and comment spans with PostgreSQL's scanner: where
// the scanner accepts the text, the normaliser must accept it too and find exactly its spans.
// Text the scanner refuses (an unterminated string, trailing junk after a number) is not
// compared; the normaliser's own tests cover its refusals.
func check(t *testing.T, sql string) {
	t.Helper()
	want, ok := removed(sql)
	got, err := ours(sql)
	if !ok {
		return
	}
	if err != nil {
		t.Fatalf("%q: PostgreSQL's scanner accepts it, the normaliser does not: %v", sql, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%q: constant and comment spans\n got %v %s\nwant %v %s", sql, got, show(sql, got), want, show(sql, want))
	}
}

func show(sql string, spans [][2]int) string {
	var parts []string
	for _, s := range spans {
		parts = append(parts, sql[s[0]:s[1]])
	}
	return strings.Join(parts, " | ")
}

var corpus = []string{
	"SELECT 1",
	"SELECT 'a', 'it''s', E'\\'', E'a\\\\', N'x', B'1010', X'1F', U&'\\0041' UESCAPE '!'",
	"ALTER ROLE app PASSWORD $$secret$$",
	"ALTER ROLE app PASSWORD $pw$se$cret$pw$",
	"ALTER ROLE app PASSWORD 'secret' VALID UNTIL '2030-01-01'",
	"SELECT 'a'\n'b', 'c' -- x\n 'd', 'e'   'f'",
	"SELECT 'a' -- c\n -- d\n'b'",
	"SELECT 1.5, .5, 1e10, 1.5e-3, 0x1F, 0o17, 0b101, 1_000_000, 1..2",
	"SELECT /* a /* nested */ comment */ 1 -- trailing",
	"SELECT a+-- comment\n1, b*/* c */2, c/-1",
	"SELECT $1, $2::int, $10",
	"SELECT \"quoted \"\" ident\", U&\"d\\0061t\\+000061\"",
	"SELECT x$y$, $a$ b $a$, $ 1",
	"SELECT interval '1 day', date '2020-01-01', 'x'::text",
	"SELECT E'line\\nbreak' || B'0' || X'ff'",
	"SELECT a[1:2], f(3, 4.0), - 5",
	"CREATE FUNCTION f() RETURNS int AS $body$ SELECT 'x' $body$ LANGUAGE sql",
	"SELECT 'café', 'naïve' -- ünïcode\n",
	"SELECT 1 FROM t WHERE a ~~ 'x%' AND b !~* 'y' AND c @> '{1}'",
	"select e'\\x41', n'a''b', u&'x'",
	"SELECT 'a'\r\n'b'",
	"SELECT 'a'\t\n\t'b'",
	"SELECT 'a'/*c*/\n'b'",
	"SELECT B'10''01'",
	"SELECT 123abc",
	"SELECT 1e, 1e+, 1.e5, 1.",
}

func TestNormaliserAgreesWithPostgreSQLScanner(t *testing.T) {
	for _, sql := range corpus {
		check(t, sql)
	}
}

func FuzzNormaliserAgreesWithPostgreSQLScanner(f *testing.F) {
	for _, sql := range corpus {
		f.Add(sql)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if strings.IndexByte(sql, 0) >= 0 {
			return // the server never sees a NUL in query text
		}
		check(t, sql)
	})
}
