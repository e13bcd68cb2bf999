package proxy

import (
	"bytes"
	"context"
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
	script, err := filepath.Abs("../testdata/proxy/session.sql")
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
func TestNodePostgres(t *testing.T) {
	node := needNode(t)
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 150*time.Second)
	dir := nodeSmokeDir(t, ctx)
	out, err := runTool(t, ctx, []string{"DATABASE_URL=" + h.superURL()}, node, filepath.Join(dir, "smoke.js"))
	if err != nil {
		t.Fatalf("node smoke.js: %v\n%s\nlogs:\n%s", err, out, h.log.String())
	}
	var res struct {
		OK      bool `json:"ok"`
		Queries int  `json:"queries"`
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || !res.OK {
		t.Fatalf("smoke output: %v\n%s", err, out)
	}
	if got := int(h.metric(t, "pgsidecar_query_duration_seconds", nil)); got != res.Queries {
		t.Errorf("histogram count = %d, node-postgres ran %d queries", got, res.Queries)
	}
	if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "22012"}); got != 1 {
		t.Errorf("22012 errors = %v, want 1", got)
	}
}

func needNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed; skipping the node-postgres smoke test (install nodejs and npm)")
	}
	return node
}

// nodeSmokeDir returns examples/node-smoke with its dependencies installed: in place when
// node_modules exists, else in a temporary copy with npm ci.
func nodeSmokeDir(t *testing.T, ctx context.Context) string {
	t.Helper()
	src, err := filepath.Abs("../examples/node-smoke")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "node_modules", "pg")); err == nil {
		return src
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm not installed and examples/node-smoke has no node_modules; skipping")
	}
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "smoke.js"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("npm ci failed (no registry access?); skipping: %v\n%s", err, out)
	}
	return dir
}
