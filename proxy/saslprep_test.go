package proxy

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// TestSASLprepAgreesWithPostgreSQL gives PostgreSQL and the proxy the same plaintext passwords
// (PostgreSQL in CREATE ROLE, the proxy in a users file) and logs in to both with psql, whose libpq
// SASLprep's the password too, with the password as written and with other spellings of it. Every
// spelling must get the same answer from both.
func TestSASLprepAgreesWithPostgreSQL(t *testing.T) {
	psql := findPsql(t)
	ctx := ctxTimeout(t, 120*time.Second)
	u, err := url.Parse(cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	direct := target{host: u.Hostname(), port: u.Port()}
	if direct.port == "" {
		direct.port = "5432"
	}
	if psqlLogin(t, ctx, psql, direct, "postgres", "not-the-password") {
		t.Skip("the server accepts a wrong password over TCP; nothing to compare")
	}

	cases := []struct {
		name, password string
		// other spellings, each with whether PostgreSQL accepts it for this password
		others map[string]bool
	}{
		{"ascii", "plain-ascii-pw", map[string]bool{"plain-ascii-PW": false}},
		{"no-break space", "pass\u00a0word", map[string]bool{"pass word": true, "pass\u2000word": true, "password": false}},
		{"ideographic space and soft hyphen", "ide\u3000o\u00adgraph", map[string]bool{"ide ograph": true}},
		{"ligatures", "\ufb01sh-\ufb02ow", map[string]bool{"fish-flow": true}},
		{"fullwidth", "\uff30\uff21\uff33\uff33\uff11\uff12\uff13", map[string]bool{"PASS123": true}},
		{"prohibited ascii control", "\ufb01sh\u0007", map[string]bool{"fish\u0007": false}},
		{"prohibited private use", "\ufb01\ue000", map[string]bool{"fi\ue000": false}},
		{"unassigned in unicode 3.2", "\ufb01\U0001f600", map[string]bool{"fi\U0001f600": false}},
		{"added in unicode 4.0", "p\u00e4ss\u1d2c", map[string]bool{"p\u00e4ssA": false}},
		{"only unicode 4.0 letters", "\u1d2c\u1d2e", map[string]bool{"AB": false}},
		{"bidi violation", "\u05d0\u00a0a\u05d0", map[string]bool{"\u05d0 a\u05d0": false}},
		{"bidi checked before normalizing", "\u05d0\u00a0\u2122\u05d0", map[string]bool{"\u05d0 TM\u05d0": true}},
		{"braille with hebrew", "\u05d0\u2801\u00a0\u05d0", map[string]bool{"\u05d0\u2801 \u05d0": true}},
	}
	role := func(i int) string { return fmt.Sprintf("proxy_saslprep_%d", i) }
	var file strings.Builder
	for i, tc := range cases {
		if err := cluster.Exec(ctx, "drop role if exists "+role(i)); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Exec(ctx, fmt.Sprintf("create role %s login password %s", role(i), sqlLiteral(tc.password))); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop role if exists "+role(i)) })
		stored, err := queryString(ctx, fmt.Sprintf("select rolpassword from pg_authid where rolname = '%s'", role(i)))
		if err != nil || !strings.HasPrefix(stored, "SCRAM-SHA-256$") {
			t.Fatalf("%s: stored secret %q, %v; want a SCRAM-SHA-256 verifier", tc.name, stored, err)
		}
		fmt.Fprintf(&file, "\"%s\" \"%s\"\n", role(i), strings.ReplaceAll(tc.password, `"`, `""`))
	}
	usersFile := filepath.Join(t.TempDir(), "users.txt")
	if err := os.WriteFile(usersFile, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadUsers(usersFile)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range cases {
		if users[role(i)] != tc.password {
			t.Fatalf("%s: users file gives %+q, want %+q", tc.name, users[role(i)], tc.password)
		}
	}
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.Auth = AuthSCRAM; c.Users = users })
	proxied := target{host: "127.0.0.1", port: fmt.Sprint(h.port)}

	for i, tc := range cases {
		spellings := map[string]bool{tc.password: true}
		for s, ok := range tc.others {
			spellings[s] = ok
		}
		for s, want := range spellings {
			viaServer := psqlLogin(t, ctx, psql, direct, role(i), s)
			viaProxy := psqlLogin(t, ctx, psql, proxied, role(i), s)
			if viaServer != viaProxy {
				t.Errorf("%s: password %+q as %+q: PostgreSQL accepted=%v, proxy accepted=%v",
					tc.name, tc.password, s, viaServer, viaProxy)
			}
			if viaServer != want {
				t.Errorf("%s: password %+q as %+q: PostgreSQL accepted=%v, test expects %v",
					tc.name, tc.password, s, viaServer, want)
			}
		}
	}
	h.waitIdle(t)
}

type target struct{ host, port string }

// psqlLogin runs `select 1` with psql as user with the password in PGPASSWORD and reports whether
// the login was accepted; any failure other than a refused password fails the test.
func psqlLogin(t *testing.T, ctx context.Context, psql string, to target, user, password string) bool {
	t.Helper()
	conninfo := fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=10", to.host, to.port, user)
	cmd := exec.CommandContext(ctx, psql, "-X", "-w", "-A", "-t", "-d", conninfo, "-c", "select 1")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PGPASSWORD="+password, "PGPASSFILE="+os.DevNull, "PGAPPNAME=saslprep_test")
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil && strings.TrimSpace(string(out)) == "1":
		return true
	case err != nil && strings.Contains(string(out), "password authentication failed"):
		return false
	}
	t.Fatalf("psql %s as %s: %v\n%s", conninfo, user, err, out)
	return false
}

// findPsql looks for psql on PATH, then where Debian installs PostgreSQL.
func findPsql(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(m) > 0 {
		return m[len(m)-1]
	}
	t.Skip("psql not found on PATH or under /usr/lib/postgresql/*/bin")
	return ""
}

// sqlLiteral quotes s as a standard SQL string literal.
func sqlLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
