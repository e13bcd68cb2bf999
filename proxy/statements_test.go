package proxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestStatementsMeasuredThroughTheProxy: N executions of one statement by proxied clients (two
// sessions, so two server connections; simple queries with different constants, spacing and
// case, and named prepared statements whose text repeats) give one statement histogram of
// count N, and its errors are counted by SQLSTATE.
func TestStatementsMeasuredThroughTheProxy(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	n := 0
	for c := range 2 {
		conn := h.connect(t, ctx, h.superURL())
		for i := range 6 {
			var err error
			switch i % 3 {
			case 0:
				_, err = conn.Exec(ctx, fmt.Sprintf("SELECT %d::int + 1 AS proxied_statement", c*10+i), pgx.QueryExecModeSimpleProtocol)
			case 1:
				_, err = conn.Exec(ctx, fmt.Sprintf("select   %d :: INT+1  AS PROXIED_STATEMENT", i), pgx.QueryExecModeSimpleProtocol)
			default:
				_, err = conn.Exec(ctx, "SELECT $1::int + 1 AS proxied_statement", i) // a named prepared statement
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if _, err := conn.Exec(ctx, "SELECT 1/0 AS proxied_error", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
	}
	fp, _, err := fingerprint.Of("SELECT 1::int + 1 AS proxied_statement")
	if err != nil {
		t.Fatal(err)
	}
	if got := h.metric(t, "pgsidecar_statement_duration_seconds", map[string]string{"fingerprint": fp.String(), "operation": "select"}); int(got) != n {
		t.Errorf("statement histogram count = %v, want %d", got, n)
	}
	bad, _, _ := fingerprint.Of("SELECT 1/0 AS proxied_error")
	if got := h.metric(t, "pgsidecar_statement_errors_total", map[string]string{"fingerprint": bad.String(), "sqlstate": "22012"}); got != 2 {
		t.Errorf("statement errors = %v, want 2", got)
	}
}

// BenchmarkProxyStatements is what statement measurement costs a proxied query: pgbench -S
// (an external client, so that this process's CPU is the proxy's and the pool's alone) through
// the proxy with STATEMENTS_TOP=0 and 50, with the simple protocol (a new constant in every
// statement's text, so every one is fingerprinted), prepared statements (one text, already
// seen) and the simple protocol with a sqlcommenter comment with a traceparent on every
// statement (commented). It reports the proxy's CPU per transaction and transactions per second. Each run lasts
// PGBENCH_SECONDS (default 5) at PGBENCH_RATE transactions per second (default 1500, so that
// both settings run at the same rate: on a loaded machine the CPU per transaction grows as the
// rate drops); compare with benchstat:
//
//	go test -run '^$' -bench ProxyStatements -benchtime 1x -count 6 ./proxy/
func BenchmarkProxyStatements(b *testing.B) {
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		b.Skip("pgbench not installed (scripts/deps.sh installs it)")
	}
	seconds, rate := 5, 1500
	if v, err := strconv.Atoi(os.Getenv("PGBENCH_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	if v, err := strconv.Atoi(os.Getenv("PGBENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := cluster.Exec(ctx, "create database statements_bench"); err != nil && sqlState(err) != "42P04" {
		b.Fatal(err)
	}
	env := append(os.Environ(), "PGPASSWORD="+pgtest.SuperuserPassword, "PGSSLMODE=disable")
	pgb := func(port int, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, pgbench, append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "statements_bench")...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := pgb(cluster.Port(), "-i", "-q", "-s", "1"); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	// -S with a sqlcommenter comment carrying a sampled traceparent, as instrumented
	// applications send every statement.
	script := filepath.Join(b.TempDir(), "commented.sql")
	if err := os.WriteFile(script, []byte("\\set aid random(1, 100000 * :scale)\n"+
		"SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*application='bench',route='%2Faccounts',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/;\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"simple", "prepared", "commented"} {
		for _, top := range []int{0, 50} {
			b.Run(fmt.Sprintf("mode=%s/statements=%d", mode, top), func(b *testing.B) {
				h := newHarness(b, func(pc *pool.Config, _ *Config) {
					pc.DatabaseURL = cluster.URL("statements_bench")
					pc.MaxConns, pc.MinConns = 4, 4
					pc.StatementsTop = top
				})
				var tx, cpu float64
				var elapsed time.Duration
				for range b.N {
					cpu0, start := rusageCPU(), time.Now()
					load := []string{"-S", "-M", mode}
					if mode == "commented" {
						load = []string{"-f", script, "-M", "simple"}
					}
					out, err := pgb(h.port, append(load, "-n", "-c", "4", "-j", "2", "-T", strconv.Itoa(seconds), "-R", strconv.Itoa(rate))...)
					elapsed += time.Since(start)
					cpu += float64(rusageCPU() - cpu0)
					if err != nil {
						b.Fatalf("pgbench: %v\n%s", err, out)
					}
					m := processed.FindStringSubmatch(out)
					if m == nil {
						b.Fatalf("no transaction count in pgbench's output:\n%s", out)
					}
					n, _ := strconv.Atoi(m[1])
					tx += float64(n)
				}
				b.ReportMetric(cpu/tx/1000, "cpu-µs/tx")
				b.ReportMetric(tx/elapsed.Seconds(), "tx/s")
			})
		}
	}
}

// rusageCPU is the CPU time this process (the proxy and its pool) has used.
func rusageCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
