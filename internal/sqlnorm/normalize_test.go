package sqlnorm

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"SELECT 1", "SELECT $1"},
		{"select * from t where id = 42 and name = 'bob'", "select * from t where id = $1 and name = $2"},
		{"SELECT $1, $2 FROM t WHERE x = 'a'", "SELECT $1, $2 FROM t WHERE x = $3"},
		{"ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app PASSWORD $$hunter2$$", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app PASSWORD $pw$hun$ter2$pw$", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app PASSWORD E'hun\\'ter2'", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app PASSWORD U&'hun\\0074er2'", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app PASSWORD 'hun'\n  'ter2'", "ALTER ROLE app PASSWORD $1"},
		{"ALTER ROLE app ENCRYPTED PASSWORD N'hunter2'", "ALTER ROLE app ENCRYPTED PASSWORD N $1"},
		{"CREATE USER u WITH PASSWORD 'x' VALID UNTIL '2030-01-01'", "CREATE USER u WITH PASSWORD $1 VALID UNTIL $2"},
		{"SELECT dblink_connect('host=db password=hunter2')", "SELECT dblink_connect($1)"},
		{"SELECT 1 /* password hunter2 */ -- and hunter2\n", "SELECT $1"},
		{"SELECT /* a /* nested hunter2 */ still */ 1", "SELECT $1"},
		{"SELECT a-1, -2.5e-3, .5, 0x1F, 1_000", "SELECT a-$1, $2, $3, $4, $5"},
		// As pg_stat_statements: a sign is part of its number, TRUE, FALSE and NULL are
		// constants but in IS [NOT] tests, and a cast binds before the sign.
		{"SELECT -5, x = -5, x=-5, (- 1), a - 1, a-1, f(-1), -1::int", "SELECT $1, x = $2, x=$3, ($4), a - $5, a-$6, f($7), -$8::int"},
		{"SELECT CASE WHEN x THEN -1 ELSE - 2 END, x BETWEEN -1 AND -2", "SELECT CASE WHEN x THEN $1 ELSE $2 END, x BETWEEN $3 AND $4"},
		{"SELECT true, FALSE, null WHERE x IS NULL AND y IS NOT TRUE AND z = NULL", "SELECT $1, $2, $3 WHERE x IS NULL AND y IS NOT TRUE AND z = $4"},
		{`SELECT "true", "null" FROM t WHERE b IS /* c */ NOT /* c */ false`, `SELECT "true", "null" FROM t WHERE b IS NOT false`},
		{"SELECT B'1010', X'ff', 'it''s'", "SELECT $1, $2, $3"},
		{"SELECT   a,\n\tb  FROM t", "SELECT a, b FROM t"},
		{"SELECT \"pass'word\" FROM t", "SELECT \"pass'word\" FROM t"},
		{"SELECT a[1:2] FROM generate_series(1, 3) a", "SELECT a[$1:$2] FROM generate_series($3, $4) a"},
		{"SELECT interval '1 day', x::numeric(10, 2)", "SELECT interval $1, x::numeric($2, $3)"},
		{"SELECT 'a\\b'", "SELECT $1"}, // the same ending with either rule for backslashes
	} {
		got, err := Normalize(tc.in)
		if err != nil {
			t.Errorf("Normalize(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Normalize(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestNormalizeRefusesWhatItCannotLex(t *testing.T) {
	for _, in := range []string{
		"ALTER ROLE app PASSWORD 'hunter2",
		"ALTER ROLE app PASSWORD $$hunter2",
		"ALTER ROLE app PASSWORD $pw$hunter2$$",
		"SELECT 1 /* hunter2",
		"SELECT /* /* hunter2 */",
		"SELECT \"hunter2",
		"ALTER ROLE app PASSWORD E'hunter2\\'",
		// Ends differently when a backslash escapes (standard_conforming_strings off).
		"ALTER ROLE app PASSWORD 'a\\' || 'hunter2'",
	} {
		got, err := Normalize(in)
		if !errors.Is(err, ErrLex) {
			t.Errorf("Normalize(%q) = %q, %v; want an ErrLex error", in, got, err)
		}
		if got != "" || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Normalize(%q) shows text: %q, %v", in, got, err)
		}
	}
}

// FuzzNormalize checks what holds for any text: no panic, and normalised text has nothing left
// to normalise, so no constant or comment survived.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"SELECT 1", "ALTER ROLE a PASSWORD $x$p$x$", "SELECT E'\\'' -- c\n", "SELECT 'a'\n'b'", "SELECT 1..2, $1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		out, err := Normalize(sql)
		if err != nil {
			if out != "" {
				t.Fatalf("refused %q but returned %q", sql, out)
			}
			return
		}
		again, err := Normalize(out)
		if err != nil {
			t.Fatalf("Normalize(%q) = %q, which does not lex: %v", sql, out, err)
		}
		if again != out {
			t.Fatalf("Normalize(%q) = %q still has constants or comments: normalised again it is %q", sql, out, again)
		}
	})
}

// TestNormalizePrefixAtEveryCut: a long statement cut at every byte can be shown, and no cut
// shows a constant or a comment, whatever token it falls in, nor half a character.
func TestNormalizePrefixAtEveryCut(t *testing.T) {
	var b strings.Builder
	b.WriteString(`/* hunter2 */ SELECT "public"."Usér"."id"`)
	for i := range 20 {
		fmt.Fprintf(&b, `, "public"."Usér"."column_%d"`, i)
	}
	b.WriteString(` FROM "public"."Usér" WHERE ("public"."Usér"."email" = 'hunter2@example.com'` +
		` AND "note" = E'hun\'ter2' AND "body" <> $tag$hunter2$tag$ AND "n" = -4242 -- hunter2` + "\n" +
		`AND "x" = U&'hunter2' /* hunter2 /* nested */ */) LIMIT $1 OFFSET $2`)
	sql := b.String()
	whole, err := Normalize(sql)
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k <= len(sql); k++ {
		got, err := NormalizePrefix(sql[:k])
		if err != nil {
			t.Fatalf("cut at %d (%q): %v", k, sql[max(0, k-20):k], err)
		}
		if strings.Contains(got, "hunter") || strings.Contains(got, "4242") || strings.Contains(got, "424") {
			t.Fatalf("cut at %d shows a constant or comment: %q", k, got)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("cut at %d is not valid UTF-8: %q", k, got)
		}
	}
	if got, _ := NormalizePrefix(sql); got != whole {
		t.Errorf("NormalizePrefix of the whole text = %q, want %q", got, whole)
	}
}

func TestNormalizePrefixRefusesABackslashThatDecides(t *testing.T) {
	// Cut or not, where the string ends depends on standard_conforming_strings.
	for _, in := range []string{"ALTER ROLE app PASSWORD 'a\\' || 'hunter2'", "ALTER ROLE app PASSWORD 'a\\' || 'hun"} {
		if got, err := NormalizePrefix(in); !errors.Is(err, ErrLex) {
			t.Errorf("NormalizePrefix(%q) = %q, %v; want an ErrLex error", in, got, err)
		}
	}
}
