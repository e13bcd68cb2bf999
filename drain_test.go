package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// pgbenchDB creates database name with pgbench's tables (scale 1) and returns pgbench's path;
// the test skips without pgbench.
func pgbenchDB(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		t.Skip("pgbench not installed (scripts/deps.sh installs it)")
	}
	ctx := t.Context()
	_ = cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	must(t, cluster.Exec(ctx, "CREATE DATABASE "+name))
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	if out, err := exec.CommandContext(ctx, bin, "-i", "-q", "-s", "1", cluster.URL(name)).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	return bin
}

// sidecarWithProxy starts the binary on database db with a proxy, and waits until it is ready.
// It returns the web and proxy addresses and the process's output file.
func sidecarWithProxy(t *testing.T, db string, args ...string) (*sidecarProcess, string, string, *os.File) {
	t.Helper()
	clearPoolEnv(t)
	addr, proxyAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	out, err := os.CreateTemp(t.TempDir(), "log")
	must(t, err)
	p := startProcess(t, out, append([]string{"--web.listen-address=" + addr, "--database-url=" + cluster.URL(db),
		"--proxy.listen-address=" + proxyAddr, "--db.metrics-log-interval=0"}, args...)...)
	if !pgtest.WaitFor(20*time.Second, func() bool { c, _ := tryGet("http://" + addr + "/readyz"); return c == 200 }) {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("never ready:\n%s", b)
	}
	return p, addr, proxyAddr, out
}

// tryGet is get without failing the test on a connection error (status 0).
func tryGet(url string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	return answer(c.Get(url))
}

// answer is a response's status and body, or status 0 and the error.
func answer(r *http.Response, err error) (int, string) {
	if err != nil {
		return 0, err.Error()
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	return r.StatusCode, string(b)
}

// TestDrainOnSIGTERM is the rolling deploy: pgbench's TPC-B with 16 clients through the proxy,
// SIGTERM a second into a 4 s run. /readyz must answer 503 at once while /metrics still
// answers, every client must finish its run (no aborted client, no failed transaction), and
// the process must be gone within about a second of the last client leaving, with exit code 0.
func TestDrainOnSIGTERM(t *testing.T) {
	bin := pgbenchDB(t, "drain_bench")
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p, addr, proxyAddr, out := sidecarWithProxy(t, "drain_bench", "--proxy.pool-mode="+mode,
				"--db.max-connections=20", "--shutdown.drain-timeout=20s")
			base := "http://" + addr
			url := fmt.Sprintf("postgres://postgres:%s@%s/drain_bench?sslmode=disable", pgtest.SuperuserPassword, proxyAddr)
			bench := exec.Command(bin, "-c", "16", "-j", "2", "-T", "4", "-n", url)
			var benchOut strings.Builder
			bench.Stdout, bench.Stderr = &benchOut, &benchOut
			must(t, bench.Start())
			benchDone := make(chan error, 1)
			go func() { benchDone <- bench.Wait() }()
			time.Sleep(time.Second)
			must(t, p.cmd.Process.Signal(syscall.SIGTERM))
			if !pgtest.WaitFor(2*time.Second, func() bool { c, _ := tryGet(base + "/readyz"); return c == 503 }) {
				t.Errorf("/readyz is not 503 after SIGTERM")
			}
			if c, body := tryGet(base + "/readyz"); !strings.Contains(body, `"draining": true`) {
				t.Errorf("/readyz = %d %s, want draining", c, body)
			}
			if c, _ := tryGet(base + "/metrics"); c != 200 {
				t.Errorf("/metrics = %d while draining", c)
			}
			var benchErr error
			select {
			case benchErr = <-benchDone:
			case <-time.After(30 * time.Second):
				t.Fatal("pgbench still runs 30s later")
			}
			left := time.Now()
			code := p.exitCode(t, 10*time.Second)
			gone := time.Since(left)
			logs, _ := os.ReadFile(out.Name())
			if benchErr != nil || !strings.Contains(benchOut.String(), "number of failed transactions: 0 ") ||
				strings.Contains(benchOut.String(), "aborted") {
				t.Fatalf("pgbench: %v\n%s\nsidecar:\n%s", benchErr, benchOut.String(), logs)
			}
			if code != 0 {
				t.Fatalf("exit code %d\n%s", code, logs)
			}
			if gone > 1500*time.Millisecond {
				t.Errorf("the process ended %s after pgbench, want within about 1s\n%s", gone, logs)
			}
			if !strings.Contains(string(logs), "Drained") {
				t.Errorf("no drain in the log:\n%s", logs)
			}
			t.Logf("process gone %s after pgbench ended; pgbench:\n%s", gone.Round(time.Millisecond), benchOut.String())
		})
	}
}

// TestDrainTimeout: at --shutdown.drain-timeout a client outside a transaction gets FATAL 57P01
// at once, one inside a transaction may finish it within the grace and is closed at its next
// statement; a client that logs in during the drain is served. Then the process exits 0.
func TestDrainTimeout(t *testing.T) {
	p, _, proxyAddr, out := sidecarWithProxy(t, "", "--proxy.pool-mode=transaction", "--shutdown.drain-timeout=1s")
	url := fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	idle, err := pgx.Connect(ctx, url)
	must(t, err)
	defer idle.Close(context.Background())
	inTx, err := pgx.Connect(ctx, url)
	must(t, err)
	defer inTx.Close(context.Background())
	_, err = inTx.Exec(ctx, "BEGIN")
	must(t, err)
	must(t, p.cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(200 * time.Millisecond)
	late, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("a login during the drain: %v", err)
	}
	var one int
	must(t, late.QueryRow(ctx, "SELECT 1").Scan(&one))
	must(t, late.Close(ctx))

	time.Sleep(1500 * time.Millisecond) // past the drain timeout, within the grace
	if !p.running() {
		t.Fatal("the process ended within the grace with a client in a transaction")
	}
	// The idle client's connection was closed with 57P01: its next query fails.
	if err := idle.QueryRow(ctx, "SELECT 1").Scan(&one); err == nil {
		t.Fatal("the idle client still works after the drain timeout")
	}
	if _, err := inTx.Exec(ctx, "INSERT INTO pg_temp.x SELECT 1"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		// Any statement answered by the server shows the transaction still runs.
		t.Fatalf("statement in the open transaction: %v", err)
	}
	// The transaction failed above; its ROLLBACK ends it, and the next statement is refused.
	_, err = inTx.Exec(ctx, "ROLLBACK")
	must(t, err)
	_, err = inTx.Exec(ctx, "SELECT 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
		t.Fatalf("a statement after the transaction: %v, want 57P01", err)
	}
	if code := p.exitCode(t, 5*time.Second); code != 0 {
		logs, _ := os.ReadFile(out.Name())
		t.Fatalf("exit code %d\n%s", code, logs)
	}
}

// TestSecondSignalStopsAtOnce: during the drain, SIGINT or a second SIGTERM ends the process at
// once although a client is still connected.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			p, _, proxyAddr, _ := sidecarWithProxy(t, "", "--shutdown.drain-timeout=20s")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr))
			must(t, err)
			defer c.Close(context.Background())
			must(t, p.cmd.Process.Signal(syscall.SIGTERM))
			time.Sleep(300 * time.Millisecond)
			if !p.running() {
				t.Fatal("SIGTERM did not wait for the connected client")
			}
			must(t, p.cmd.Process.Signal(sig))
			if code := p.exitCode(t, 5*time.Second); code != 0 {
				t.Fatalf("exit code %d", code)
			}
		})
	}
}
