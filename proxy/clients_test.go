package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian: postgresql-client / postgresql-contrib); skipping", name)
	}
	return p
}

func runTool(t *testing.T, ctx context.Context, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

var pidRE = regexp.MustCompile(`PID \d+`)

// TestPsqlScript runs the same psql script directly against PostgreSQL and through the proxy
// and compares the output: COPY both ways, notices, notifications, errors, transactions.
func TestPsqlScript(t *testing.T) {
	psql := needTool(t, "psql")
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	script, err := filepath.Abs("testdata/session.sql")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable", "PGTZ=UTC",
		"PGAPPNAME=psql-test", "LC_ALL=C"}
	run := func(port int) string {
		out, err := runTool(t, ctx, env, psql, "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres",
			"-d", "postgres", "-f", script)
		if err != nil {
			t.Fatalf("psql on port %d: %v\n%s", port, err, out)
		}
		return pidRE.ReplaceAllString(out, "PID n")
	}
	direct := run(cluster.Port())
	proxied := run(h.port)
	for _, want := range []string{"hello from plpgsql", `Asynchronous notification "ch" with payload "payload"`,
		"division by zero", "duplicate key", "still here", "02.01.2024", "1000000", "4,d", "done"} {
		if !strings.Contains(direct, want) {
			t.Fatalf("direct output lacks %q; the script is broken:\n%s", want, direct)
		}
	}
	if direct != proxied {
		t.Errorf("psql output differs through the proxy\n--- direct\n%s\n--- proxy\n%s", direct, proxied)
	}
	// The unix socket speaks the same protocol.
	out, err := runTool(t, ctx, env, psql, "-X", "-At", "-h", h.sock, "-p", fmt.Sprint(h.port), "-U", "postgres",
		"-d", "postgres", "-c", "select 'via socket'")
	if err != nil || strings.TrimSpace(out) != "via socket" {
		t.Fatalf("psql over the unix socket: %v\n%s", err, out)
	}
	// A wrong password is rejected with the server's wording.
	bad := append(env[1:], "PGPASSWORD=wrong")
	out, err = runTool(t, ctx, bad, psql, "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres",
		"-d", "postgres", "-c", "select 1")
	if err == nil || !strings.Contains(out, `password authentication failed for user "postgres"`) {
		t.Fatalf("wrong password: %v\n%s", err, out)
	}
}

// TestPgbench runs pgbench's select-only and TPC-B scripts through the proxy with each query
// protocol and requires zero failed transactions.
func TestPgbench(t *testing.T) {
	pgbench := needTool(t, "pgbench")
	ctx := ctxTimeout(t, 150*time.Second)
	if err := cluster.Exec(ctx, "create database proxy_bench"); err != nil && sqlState(err) != "42P04" {
		t.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10"}
	if out, err := runTool(t, ctx, env, pgbench, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", fmt.Sprint(cluster.Port()),
		"-U", "postgres", "proxy_bench"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.DatabaseURL = cluster.URL("proxy_bench") })
	const clients, perClient = 4, 50
	for _, mode := range []string{"-S", "-N", ""} {
		for _, proto := range []string{"simple", "extended", "prepared"} {
			name := strings.TrimPrefix(mode+"_"+proto, "_")
			t.Run(name, func(t *testing.T) {
				before := h.metric(t, "pgsidecar_query_duration_seconds", nil)
				args := []string{"-n", "-M", proto, "-c", fmt.Sprint(clients), "-j", "2", "-t", fmt.Sprint(perClient),
					"-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres", "proxy_bench"}
				if mode != "" {
					args = append([]string{mode}, args...)
				}
				out, err := runTool(t, ctx, env, pgbench, args...)
				if err != nil {
					t.Fatalf("pgbench %v: %v\n%s", args, err, out)
				}
				total := clients * perClient
				if !strings.Contains(out, fmt.Sprintf("number of transactions actually processed: %d/%d", total, total)) ||
					!strings.Contains(out, "number of failed transactions: 0 ") {
					t.Fatalf("pgbench did not finish every transaction:\n%s", out)
				}
				perTx := map[string]int{"-S": 1, "-N": 5, "": 7}[mode]
				if got := int(h.metric(t, "pgsidecar_query_duration_seconds", nil) - before); got < total*perTx {
					t.Errorf("histogram grew by %d, want at least %d (transactions x statements)", got, total*perTx)
				}
			})
		}
	}
	if got := h.metric(t, "pgsidecar_query_errors_total", nil); got != 0 {
		t.Errorf("query errors = %v, want 0", got)
	}
	h.waitIdle(t)
}

// TestNodePostgres runs the node-postgres smoke script of examples/node-smoke through the proxy.
// It runs in both pool modes: in transaction mode its named statements are the proxy's to map.
func TestNodePostgres(t *testing.T) {
	node := needNode(t)
	ctx := ctxTimeout(t, 150*time.Second)
	dir := nodeExample(t, ctx, "node-smoke")
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) { nodePostgresSmoke(t, ctx, node, dir, mode) })
	}
}

func nodePostgresSmoke(t *testing.T, ctx context.Context, node, dir string, mode PoolMode) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = mode })
	out, err := runTool(t, ctx, []string{"DATABASE_URL=" + h.superURL()}, node, filepath.Join(dir, "smoke.js"))
	if err != nil {
		t.Fatalf("node smoke.js: %v\n%s\nlogs:\n%s", err, out, h.log.String())
	}
	var res struct {
		OK      bool `json:"ok"`
		Queries int  `json:"queries"`
	}
	smokeResult(t, out, &res)
	if !res.OK {
		t.Fatalf("smoke output:\n%s", out)
	}
	if got := int(h.metric(t, "pgsidecar_query_duration_seconds", nil)); got != res.Queries {
		t.Errorf("histogram count = %d, node-postgres ran %d queries", got, res.Queries)
	}
	if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "22012"}); got != 1 {
		t.Errorf("22012 errors = %v, want 1", got)
	}
	if mode == PoolTransaction {
		// The named statement went through the proxy's statement map.
		if got := h.metric(t, "pgsidecar_proxy_prepared_statement_misses_total", nil) + h.metric(t, "pgsidecar_proxy_prepared_statement_hits_total", nil); got == 0 {
			t.Error("no prepared statement lookups in transaction mode")
		}
	}
}

// TestPrisma runs the Prisma ORM smoke script of examples/prisma-smoke through the proxy: Prisma 7
// without Rust engines (query compiler in WebAssembly, node-postgres via @prisma/adapter-pg), so
// everything it needs comes from the npm registry.
// It runs in both pool modes.
func TestPrisma(t *testing.T) {
	node := needNode(t)
	npm := needNpm(t)
	ctx := ctxTimeout(t, 300*time.Second)
	dir := nodeExample(t, ctx, "prisma-smoke")
	start := time.Now()
	if out, err := runTool(t, ctx, nil, npm, "--prefix", dir, "run", "--silent", "generate"); err != nil {
		t.Fatalf("prisma generate: %v\n%s", err, out)
	}
	t.Logf("prisma generate took %v", time.Since(start).Round(time.Millisecond))
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) { prismaSmoke(t, ctx, node, dir, mode) })
	}
}

func prismaSmoke(t *testing.T, ctx context.Context, node, dir string, mode PoolMode) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = mode })
	type counts struct{ queries, unique, commit, rollback, failed, abandoned int }
	measured := func() counts {
		m := func(name string, labels map[string]string) int { return int(h.metric(t, name, labels)) }
		tx := func(outcome string) int {
			return m("pgsidecar_proxy_transactions_total", map[string]string{"outcome": outcome})
		}
		return counts{m("pgsidecar_query_duration_seconds", nil),
			m("pgsidecar_query_errors_total", map[string]string{"sqlstate": "23505"}),
			tx("commit"), tx("rollback"), tx("error"), tx("abandoned")}
	}
	before := measured()
	start := time.Now()
	out, err := runTool(t, ctx, []string{"DATABASE_URL=" + h.superURL()}, node, filepath.Join(dir, "smoke.js"))
	if err != nil {
		t.Fatalf("node smoke.js: %v\n%s\nlogs:\n%s", err, out, h.log.String())
	}
	t.Logf("smoke.js took %v", time.Since(start).Round(time.Millisecond))
	var res struct {
		OK       bool `json:"ok"`
		Queries  int  `json:"queries"` // statements node-postgres sent, BEGIN/COMMIT/ROLLBACK included
		Begin    int  `json:"begin"`
		Commit   int  `json:"commit"`
		Rollback int  `json:"rollback"`
		Logged   int  `json:"logged"` // statements in Prisma's query log
	}
	smokeResult(t, out, &res)
	if !res.OK || res.Commit != 1 || res.Rollback != 2 || res.Begin != 3 || res.Logged < 10 {
		t.Fatalf("unexpected smoke result %+v:\n%s", res, out)
	}
	h.waitIdle(t)
	after := measured()
	got := counts{after.queries - before.queries, after.unique - before.unique, after.commit - before.commit,
		after.rollback - before.rollback, after.failed - before.failed, after.abandoned - before.abandoned}
	t.Logf("prisma sent %d statements (%d in its query log); the proxy measured %d", res.Queries, res.Logged, got.queries)
	if got.queries < res.Queries {
		t.Errorf("histogram count grew by %d, Prisma sent %d statements", got.queries, res.Queries)
	}
	if got.unique != 2 {
		t.Errorf("23505 errors grew by %d, want 2 (the two P2002s)", got.unique)
	}
	// One sale commits, one rolls back after the callback threw, one fails with P2002 (then
	// Prisma's ROLLBACK ends a failed transaction: outcome error).
	if got.commit != 1 || got.rollback != 1 || got.failed != 1 || got.abandoned != 0 {
		t.Errorf("transactions grew by commit=%d rollback=%d error=%d abandoned=%d, want 1, 1, 1, 0",
			got.commit, got.rollback, got.failed, got.abandoned)
	}
}

// smokeResult decodes the JSON summary a smoke script prints as its last line.
func smokeResult(t *testing.T, out string, res any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), res); err != nil {
		t.Fatalf("smoke output: %v\n%s", err, out)
	}
}

// npmOffline matches npm's errors for a registry it cannot reach.
var npmOffline = regexp.MustCompile(`\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH)\b|npm (ERR!|error) network`)

func needNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed; skipping the Node.js client test (install nodejs and npm)")
	}
	return node
}

func needNpm(t *testing.T) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm not installed; skipping the Node.js client test (install nodejs and npm)")
	}
	return npm
}

// nodeExample returns examples/<name> with its npm dependencies installed: in place when
// node_modules exists, else in a temporary copy (without node_modules and generated code) with
// npm ci. Dependencies' install scripts do not run: the examples need none, and Prisma's would try
// to download its Rust schema engine.
func nodeExample(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	src, err := filepath.Abs(filepath.Join("..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "node_modules", ".package-lock.json")); err == nil {
		return src
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skipf("npm not installed and examples/%s has no node_modules; skipping", name)
	}
	dir := t.TempDir()
	err = filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "node_modules" || d.Name() == "generated" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dir, rel), 0o755)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		if npmOffline.Match(out) {
			t.Skipf("npm ci cannot reach the registry; skipping: %v\n%s", err, out)
		}
		t.Fatalf("npm ci in a copy of examples/%s: %v\n%s", name, err, out)
	}
	t.Logf("npm ci in a copy of examples/%s took %v", name, time.Since(start).Round(time.Millisecond))
	return dir
}

// TestPsqlTLSRequire: libpq against a proxy with --proxy.tls-mode=require. prefer and allow
// end up on TLS (allow after the plaintext refusal), disable fails with the hostssl-only error.
func TestPsqlTLSRequire(t *testing.T) {
	psql := needTool(t, "psql")
	cert := selfSigned(t)
	h := newHarness(t, func(_ *pool.Config, c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		c.TLSMode = TLSRequire
	})
	ctx := ctxTimeout(t, 60*time.Second)
	for sslmode, want := range map[string]string{
		"prefer":  "ssl=t",
		"allow":   "ssl=t",
		"require": "ssl=t",
		"disable": `no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "postgres", no encryption`,
	} {
		env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=" + sslmode, "LC_ALL=C"}
		// ssl_is_used() is the server's view; the proxy's TLS is the client's, which \conninfo shows.
		out, err := runTool(t, ctx, env, psql, "-X", "-At", "-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres",
			"-d", "postgres", "-c", `\conninfo`)
		got := "ssl=f"
		if strings.Contains(out, "SSL connection") {
			got = "ssl=t"
		}
		if err != nil {
			got = out
		}
		if !strings.Contains(got, want) {
			t.Errorf("psql sslmode=%s: %v %s, want %s", sslmode, err, out, want)
		}
	}
}

// TestPgbenchTransactionMode runs pgbench with 64 clients over a pool of 4 in transaction mode,
// with the select-only and TPC-B scripts and each query protocol (-M prepared being what
// PgBouncer 1.18 refuses): every transaction succeeds and the proxy never holds more than 4
// server sessions.
func TestPgbenchTransactionMode(t *testing.T) {
	pgbench := needTool(t, "pgbench")
	ctx := ctxTimeout(t, 240*time.Second)
	if err := cluster.Exec(ctx, "create database proxy_bench_tx"); err != nil && sqlState(err) != "42P04" {
		t.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30"}
	if out, err := runTool(t, ctx, env, pgbench, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", fmt.Sprint(cluster.Port()),
		"-U", "postgres", "proxy_bench_tx"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	h := newTxHarness(t, 4, func(pc *pool.Config, _ *Config) {
		pc.DatabaseURL = cluster.URL("proxy_bench_tx")
		pc.ConnectTimeout = 30 * time.Second
	})
	const clients, perClient = 64, 8
	stop := serverSessions(t)
	for _, mode := range []string{"-S", ""} {
		for _, proto := range []string{"simple", "extended", "prepared"} {
			name := strings.TrimPrefix(mode+"_"+proto, "_")
			t.Run(name, func(t *testing.T) {
				args := []string{"-n", "-M", proto, "-c", fmt.Sprint(clients), "-j", "2", "-t", fmt.Sprint(perClient),
					"-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres", "proxy_bench_tx"}
				if mode != "" {
					args = append([]string{mode}, args...)
				}
				out, err := runTool(t, ctx, env, pgbench, args...)
				if err != nil {
					t.Fatalf("pgbench %v: %v\n%s\nlogs:\n%s", args, err, out, lastLines(h.log.String(), 40))
				}
				total := clients * perClient
				if !strings.Contains(out, fmt.Sprintf("number of transactions actually processed: %d/%d", total, total)) ||
					!strings.Contains(out, "number of failed transactions: 0 ") {
					t.Fatalf("pgbench did not finish every transaction:\n%s", out)
				}
			})
		}
	}
	if peak := stop(); peak > 4 {
		t.Errorf("%d server sessions at once, want at most 4 (the pool)", peak)
	} else {
		t.Logf("at most %d server sessions for %d clients", peak, clients)
	}
	if got := h.metric(t, "pgsidecar_query_errors_total", nil); got != 0 {
		t.Errorf("query errors = %v, want 0", got)
	}
	if got := h.metric(t, "pgsidecar_proxy_prepared_statement_hits_total", nil); got == 0 {
		t.Errorf("no prepared statement hits: -M prepared did not reuse statements across clients")
	}
	h.waitIdle(t)
}
