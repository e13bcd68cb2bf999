package sqlstate

import (
	"strings"
	"testing"
)

func TestLabel(t *testing.T) {
	for code, want := range map[string]string{
		"23505":  "23505", // unique_violation
		"53300":  "53300",
		"P0001":  "P0001", // raise_exception
		"25P04":  "25P04", // transaction_timeout, PostgreSQL 17
		"P0999":  "P0xxx", // an application's own code in a defined class
		"22P99":  "22xxx",
		"ZZ001":  "other",
		"abc":    "other",
		"":       "other",
		"2350":   "other",
		"235055": "other",
	} {
		if got := Label(code); got != want {
			t.Errorf("Label(%q) = %q, want %q", code, got, want)
		}
	}
}

func TestDefinedHasEveryClassCode(t *testing.T) {
	// Each class PostgreSQL defines has its generic code (class + "000"); a list that lost one
	// would send that class's real errors to "xxx".
	for class := range classes {
		if !Defined(class + "000") {
			t.Errorf("class %s has no %s000", class, class)
		}
	}
	if n := len(strings.Fields(defined)); n < 260 {
		t.Errorf("only %d codes", n)
	}
}

// FuzzLabel checks that whatever code a client raises, the label is one of a bounded set:
// a defined code, a defined class with "xxx", or "other".
func FuzzLabel(f *testing.F) {
	for _, s := range []string{"23505", "P0999", "ZZZZZ", "", "\xff\xff\xff\xff\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, code string) {
		l := Label(code)
		switch {
		case l == "other":
		case Defined(l):
			if l != code {
				t.Fatalf("Label(%q) = %q, another defined code", code, l)
			}
		case len(l) == 5 && strings.HasSuffix(l, "xxx") && classes[l[:2]]:
			if !strings.HasPrefix(code, l[:2]) {
				t.Fatalf("Label(%q) = %q, another class", code, l)
			}
		default:
			t.Fatalf("Label(%q) = %q, outside the bounded set", code, l)
		}
	})
}
