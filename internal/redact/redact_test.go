package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestDSN(t *testing.T) {
	cases := map[string]string{
		"postgres://app:s3cr%40t@db:5432/pos":                  "postgres://app:xxxxx@db:5432/pos",
		"postgresql://app@db/pos?password=abc&sslmode=disable": "postgresql://app@db/pos?password=xxxxx&sslmode=disable",
		"host=db user=app password=abc dbname=pos":             "host=db user=app password=xxxxx dbname=pos",
		"host=db password = 'a b\\' c' dbname=pos":             "host=db password=xxxxx dbname=pos",
		"host=db user=app dbname=pos":                          "host=db user=app dbname=pos",
		"host=db mypassword=abc":                               "host=db mypassword=abc",
		"postgres://app:pw@db/pos":                             "postgres://app:xxxxx@db/pos",
		"host=db password='0://00' dbname=pos":                 "host=db password=xxxxx dbname=pos",
		"password=a://b@c host=db":                             "password=xxxxx host=db",
		"postgress://app:pw@db/pos?sslmode=disable":            "postgress://app:xxxxx@db/pos?sslmode=disable",
		` "postgres://app:pw@db/pos?sslmode=disable"`:          "postgres://app:xxxxx@db/pos?sslmode=disable",
		"": "",
	}
	for in, want := range cases {
		if got := DSN(in); got != want {
			t.Errorf("DSN(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScrubRemovesEveryForm(t *testing.T) {
	pw := "p:a@s/s%w rd"
	t.Setenv("PGPASSWORD", "envsecret99")
	dsns := []string{
		"postgres://app:" + "p%3Aa%40s%2Fs%25w%20rd" + "@db/pos",
		"host=db password='" + pw + "'",
	}
	msg := "failed: " + pw + " / p%3Aa%40s%2Fs%25w%20rd / p%3Aa%40s%2Fs%25w+rd / envsecret99"
	got := Scrub(msg, dsns...)
	for _, leak := range []string{pw, "p%3Aa%40s", "envsecret99"} {
		if strings.Contains(got, leak) {
			t.Fatalf("Scrub left %q in %q", leak, got)
		}
	}
	// A password with an unescaped @, which a parser may split there and show the rest as host.
	dsn := "postgres://app:Zq9:p@ss%2Fw%25rd-Leak7@127.0.0.1:1/pos"
	if got := Scrub("lookup ss/w%rd-Leak7@127.0.0.1: no such host", dsn); strings.Contains(got, "Leak7") {
		t.Errorf("Scrub left a piece of the password: %q", got)
	}
	// A URL with quotes or a space around it, as an env file may leave it.
	for _, dsn := range []string{` "postgres://app:s3cretpw@db/pos?sslmode=disable"`, " postgres://app:s3cretpw@db/pos"} {
		if got := Scrub("connecting to "+dsn+" failed", dsn); strings.Contains(got, "s3cretpw") {
			t.Errorf("Scrub left the password of %q: %q", dsn, got)
		}
	}
}

// FuzzRedactDSN checks that a password never survives redaction or scrubbing, in URL and
// key=value form, whatever characters it has.
func FuzzRedactDSN(f *testing.F) {
	for _, s := range []string{"s3cr:t@x/y%z", "pa ss'word", `back\slash`, "ünïcødé-pw", "p=w d"} {
		f.Add(s)
	}
	const (
		urlRedacted = "postgres://app:xxxxx@db:5432/pos?sslmode=disable"
		kvRedacted  = "host=db password=xxxxx dbname=pos"
	)
	f.Fuzz(func(t *testing.T, pw string) {
		if len(pw) < 6 || strings.ContainsAny(pw, "\x00\n\r") {
			return
		}
		u := "postgres://" + url.UserPassword("app", pw).String() + "@db:5432/pos?sslmode=disable"
		kvpw := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw)
		kv := "host=db password='" + kvpw + "' dbname=pos"
		for dsn, want := range map[string]string{u: urlRedacted, kv: kvRedacted} {
			// Exact: a password that looks like the mask or its surroundings ("xxxx d") is told
			// apart from them only this way.
			if out := DSN(dsn); out != want {
				t.Fatalf("DSN(%q) = %q, want %q", dsn, out, want)
			}
			// Scrub works on free text; what remains must not hold the password, unless the
			// password is a piece of what a scrubbed message is made of anyway.
			msg := "connect " + dsn + " failed for " + pw
			skeletons := "connect " + urlRedacted + " failed for xxxxx\nconnect host=db password='xxxxx' dbname=pos failed for xxxxx"
			if out := Scrub(msg, dsn); strings.Contains(out, pw) && !strings.Contains(skeletons, pw) {
				t.Fatalf("Scrub kept the password: %q", out)
			}
		}
	})
}
