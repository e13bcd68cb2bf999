package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// secretPW has every character that URL and DSN handling tends to get wrong.
const secretPW = "p:a@s/s%w0rd-S3cr3t"

// secretForms are the shapes the password could leak in.
var secretForms = []string{secretPW, url.QueryEscape(secretPW), url.PathEscape(secretPW),
	strings.TrimPrefix(url.UserPassword("", secretPW).String(), ":"), "S3cr3t"}

// TestPasswordNeverLeaks runs the sidecar with a password given as URL, as key=value DSN and as
// PGPASSWORD; drives every endpoint, the proxy (with a failed authentication), a failed server
// connection and a bad queries.yaml reload; and looks for the password everywhere it could
// appear: logs, metrics, API responses and errors.
func TestPasswordNeverLeaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS leaky; CREATE ROLE leaky LOGIN SUPERUSER PASSWORD '%s'", secretPW)); err != nil {
		t.Fatal(err)
	}
	port := cluster.Port()
	esc := url.UserPassword("leaky", secretPW).String()
	kvPW := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(secretPW)
	variants := []struct {
		name, dsn, pgpassword string
		up                    bool
	}{
		{"url", fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", esc, port), "", true},
		{"keyvalue", fmt.Sprintf("host=127.0.0.1 port=%d user=leaky password='%s' dbname=postgres sslmode=disable", port, kvPW), "", true},
		{"pgpassword", fmt.Sprintf("postgres://leaky@127.0.0.1:%d/postgres?sslmode=disable", port), secretPW, true},
		{"unreachable", fmt.Sprintf("postgres://%s@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1", esc), "", false},
		{"bad-url", "postgres://leaky:" + secretPW + "@127.0.0.1:notaport/postgres", "", false},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			clearPoolEnv(t)
			if v.pgpassword != "" {
				t.Setenv("PGPASSWORD", v.pgpassword)
			}
			var seen strings.Builder // every byte the sidecar showed anyone
			if v.name == "bad-url" {
				var out, errOut testutil.LogBuffer
				code := run(ctx, []string{"--database-url=" + v.dsn}, &out, &errOut)
				if code == 0 {
					t.Fatal("a bad URL was accepted")
				}
				seen.WriteString(out.String() + errOut.String())
				assertNoSecret(t, "startup error", seen.String())
				return
			}
			dir := t.TempDir()
			queries := filepath.Join(dir, "queries.yaml")
			must(t, os.WriteFile(queries, []byte("pg_one:\n  query: SELECT 1 AS value\n  metrics:\n    - value:\n        usage: GAUGE\n        description: one\n"), 0o600))
			proxyAddr := testutil.FreeAddr(t)
			addr, logs, stop := startSidecar(t, "--database-url="+v.dsn, "--queries.file="+queries,
				"--proxy.listen-address="+proxyAddr, "--db.connection-timeout=1s", "--db.slow-query-threshold=1ms")
			if v.up {
				if !pgtest.WaitFor(30*time.Second, func() bool {
					code, _ := get(t, "http://"+addr+"/readyz")
					return code == 200
				}) {
					t.Fatalf("sidecar never ready:\n%s", logs.String())
				}
				// Proxy: a good login and query, then a wrong password.
				good, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", esc, proxyAddr))
				if err != nil {
					t.Fatalf("proxy login: %v", err)
				}
				_, err = good.Exec(ctx, "SELECT pg_sleep(0.01)")
				must(t, err)
				_, _ = good.Exec(ctx, "SELECT * FROM no_such_table")
				good.Close(ctx)
				_, err = pgx.Connect(ctx, fmt.Sprintf("postgres://leaky:wrong@%s/postgres?sslmode=disable", proxyAddr))
				if err == nil {
					t.Fatal("proxy accepted a wrong password")
				}
				seen.WriteString(err.Error())
			}
			// A bad reload keeps the old set and reports the failure.
			must(t, os.WriteFile(queries, []byte("pg_one: [unclosed\n"), 0o600))
			seen.WriteString(post(t, "http://"+addr+"/-/reload"))
			for _, path := range []string{"/", "/metrics", "/healthz", "/readyz", "/status", "/api/database/metrics",
				"/api/database/detailed-metrics", "/api/database/health", "/api/database/performance",
				"/api/database/live-metrics", "/api/database/nope"} {
				_, body := get(t, "http://"+addr+path)
				seen.WriteString(body)
			}
			seen.WriteString(post(t, "http://"+addr+"/api/database/warmup"))
			if c := stop(); c != 0 {
				t.Fatalf("exit code %d", c)
			}
			seen.WriteString(logs.String())
			assertNoSecret(t, v.name, seen.String())
			if !v.up && !strings.Contains(logs.String(), "Database connection failed") {
				t.Fatalf("no failed connection in the logs:\n%s", logs.String())
			}
		})
	}
}

func post(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second}
	r, err := c.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

func assertNoSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, form := range secretForms {
		if i := strings.Index(text, form); i >= 0 {
			lo, hi := max(i-120, 0), min(i+len(form)+40, len(text))
			t.Fatalf("%s: the password (as %q) appears in output: ...%s...", what, form, text[lo:hi])
		}
	}
}
