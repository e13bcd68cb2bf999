package fingerprint

import (
	"testing"
)

func TestSameStatement(t *testing.T) {
	for _, pair := range [][2]string{
		{"SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 42"},
		{"SELECT * FROM t WHERE id = 1", "select  *\n\tfrom t where id=$1"},
		{"SELECT * FROM Users WHERE name = 'bob'", "select * from users where name = E'al\\'ice'"},
		{"SELECT a,b FROM t", "SELECT a , b FROM t -- comment"},
		{"SELECT 1 /* x */ + 2.5", "select $1+$2"},
		{"INSERT INTO t (a, b) VALUES ($1, $2)", "insert into T (A, B) values (1, 'x')"},
		{"SELECT \"Name\" FROM t", "select \"Name\" from T"},
		{"SELECT $$a$$", "SELECT 'b'"},
		{"SELECT 1;", "SELECT 1 ; ;"},
		// Version 2: as pg_stat_statements folds them.
		{"SELECT * FROM t WHERE x = -5", "SELECT * FROM t WHERE x = $1"},
		{"SELECT * FROM t WHERE x=-5", "SELECT * FROM t WHERE x = 7"},
		{"UPDATE t SET a = true, b = NULL", "UPDATE t SET a = $1, b = $2"},
	} {
		a, ta, err := Of(pair[0])
		if err != nil {
			t.Fatalf("Of(%q): %v", pair[0], err)
		}
		b, tb, err := Of(pair[1])
		if err != nil {
			t.Fatalf("Of(%q): %v", pair[1], err)
		}
		if a != b {
			t.Errorf("different fingerprints for one statement:\n%q (%s, %q)\n%q (%s, %q)", pair[0], a, ta, pair[1], b, tb)
		}
	}
}

func TestDifferentStatements(t *testing.T) {
	for _, pair := range [][2]string{
		{"SELECT * FROM t WHERE id = 1", "SELECT * FROM u WHERE id = 1"},
		{"SELECT a FROM t", "SELECT b FROM t"},
		{"SELECT \"Name\" FROM t", "SELECT \"name\" FROM t"},
		{"SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE x > 1"},
		{"SELECT a, b FROM t", "SELECT ab FROM t"},
		{"SELECT 1", "SELECT 1, 2"},
		{"SELECT * FROM t", "DELETE FROM t"},
		{"SELECT U&\"A\" FROM t", "SELECT U&\"a\" FROM t"},
		{"SELECT a - 1 FROM t", "SELECT -1 FROM t"},
		{"SELECT * FROM t WHERE x IS NULL", "SELECT * FROM t WHERE x = NULL"},
		{"SELECT -1::int", "SELECT $1::int"},
	} {
		a, _, err := Of(pair[0])
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := Of(pair[1])
		if err != nil {
			t.Fatal(err)
		}
		if a == b {
			t.Errorf("%q and %q share fingerprint %s", pair[0], pair[1], a)
		}
	}
}

// TestStable pins fingerprints: they are metric label values that dashboards, alerts and
// baselines keep across restarts and upgrades, so a change here breaks users' history.
func TestStable(t *testing.T) {
	for sql, want := range map[string]string{
		"SELECT 1":                      "02fb7a5a1a5a9a58",
		"select * from t where id = $1": "90356c2a5f55a6f1",
		"UPDATE accounts SET x = x + 1": "96fd8e4b1d71598b",
	} {
		f, _, err := Of(sql)
		if err != nil {
			t.Fatal(err)
		}
		if f.String() != want {
			t.Errorf("Of(%q) = %s, want %s", sql, f, want)
		}
	}
	if got := Unnormalisable("select").String(); got != "cb0ca030471d170a" {
		t.Errorf("Unnormalisable(select) = %s", got)
	}
}

func TestUnnormalisable(t *testing.T) {
	if _, text, err := Of("SELECT 'unterminated"); err == nil || text != "" {
		t.Errorf("Of(unterminated) = %q, %v; want an error and no text", text, err)
	}
	if Unnormalisable("select") == Unnormalisable("insert") {
		t.Error("one fingerprint for every operation")
	}
}

func TestFingerprintIsHex(t *testing.T) {
	if s := Fingerprint(0xab).String(); s != "00000000000000ab" {
		t.Errorf("String() = %q", s)
	}
}

// FuzzSum checks what holds for any text: Sum fails where Of fails, and the normalised text
// that Of shows has the fingerprint of the statement it came from.
func FuzzSum(f *testing.F) {
	for _, s := range []string{"SELECT 1", "select * from T where a = 'x' -- c\n;", "SELECT E'\\'' /* c */", "SELECT 'a'\n'b'", "SELECT $1, 1..2", "SELECT N'x', U&\"A\"", "SELECT 1abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		a, text, errOf := Of(sql)
		b, errSum := Sum(sql)
		if (errOf == nil) != (errSum == nil) {
			t.Fatalf("%q: Of error %v, Sum error %v", sql, errOf, errSum)
		}
		if errOf != nil {
			return
		}
		if a != b {
			t.Fatalf("%q: Of %s, Sum %s", sql, a, b)
		}
		if c, err := Sum(text); err != nil || c != a {
			t.Fatalf("%q has fingerprint %s, its normalised text %q has %s (%v)", sql, a, text, c, err)
		}
	})
}
