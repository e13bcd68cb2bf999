package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// adminPost sends an empty POST and returns the status and body (status 0 on a connection error).
func adminPost(url string) (int, string) {
	c := &http.Client{Timeout: 30 * time.Second}
	return answer(c.Post(url, "", nil))
}

// TestPauseRestartResume is the planned database restart: pgbench's TPC-B with 16 clients
// through the proxy in transaction mode; POST /api/proxy/pause, a fast restart of PostgreSQL,
// POST /api/proxy/resume. No client may be aborted and no transaction fail, and /readyz must
// stay 200 (reporting the pause) while the database is down.
func TestPauseRestartResume(t *testing.T) {
	cluster.RequireControl(t)
	bin := pgbenchDB(t, "pause_bench")
	p, addr, proxyAddr, out := sidecarWithProxy(t, "pause_bench", "--proxy.pool-mode=transaction",
		"--db.max-connections=8", "--web.enable-admin")
	base := "http://" + addr
	url := fmt.Sprintf("postgres://postgres:%s@%s/pause_bench?sslmode=disable", pgtest.SuperuserPassword, proxyAddr)
	bench := exec.Command(bin, "-c", "16", "-j", "2", "-T", "8", "-n", url)
	var benchOut strings.Builder
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	must(t, bench.Start())
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	time.Sleep(1500 * time.Millisecond)

	code, body := adminPost(base + "/api/proxy/pause?timeout=10s")
	if code != 200 || !strings.Contains(body, `"status": "paused"`) {
		t.Fatalf("pause: %d %s", code, body)
	}
	t.Logf("pause: %s", body)
	must(t, cluster.Stop("fast"))
	// Once the pool has seen the database go, /readyz still says ready: the restart is planned.
	if !pgtest.WaitFor(10*time.Second, func() bool { c, _ := tryGet(base + "/api/database/health"); return c == 503 }) {
		t.Log("the pool did not see the database down within 10s")
	}
	if c, body := tryGet(base + "/readyz"); c != 200 || !strings.Contains(body, `"paused": true`) {
		t.Errorf("/readyz while paused with the database down: %d %s", c, body)
	}
	must(t, cluster.StartAgain())
	code, body = adminPost(base + "/api/proxy/resume")
	if code != 200 || !strings.Contains(body, `"status": "resumed"`) {
		t.Fatalf("resume: %d %s", code, body)
	}
	t.Logf("resume: %s", body)
	var benchErr error
	select {
	case benchErr = <-benchDone:
	case <-time.After(60 * time.Second):
		t.Fatal("pgbench still runs 60s later")
	}
	logs, _ := os.ReadFile(out.Name())
	if benchErr != nil || !strings.Contains(benchOut.String(), "number of failed transactions: 0 ") ||
		strings.Contains(benchOut.String(), "aborted") {
		t.Fatalf("pgbench: %v\n%s\nsidecar:\n%s", benchErr, benchOut.String(), logs)
	}
	if !p.running() {
		t.Fatal("the sidecar ended")
	}
	_, metrics := tryGet(base + "/metrics")
	for _, want := range []string{"pgsidecar_proxy_paused{", "pgsidecar_proxy_paused_clients{", "pgsidecar_proxy_paused_seconds_total{"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("no %s in /metrics", want)
		}
	}
	t.Logf("pgbench:\n%s", benchOut.String())
}

// TestAdminEndpointsGuard: off without --web.enable-admin (404 naming the flag); POST only;
// without web-config authentication only requests to a loopback address get in; with basic
// auth, the web server asks for credentials first.
func TestAdminEndpointsGuard(t *testing.T) {
	clearPoolEnv(t)
	addr, _, _ := startSidecar(t, "--database-url="+cluster.URL(""))
	if c, body := adminPost("http://" + addr + "/api/proxy/pause"); c != 404 || !strings.Contains(body, "--web.enable-admin") {
		t.Fatalf("pause without --web.enable-admin: %d %s", c, body)
	}

	proxyAddr := freeLoopback(t)
	addr, _, _ = startSidecar(t, "--database-url="+cluster.URL(""), "--web.enable-admin", "--proxy.listen-address="+proxyAddr)
	if c, _ := get(t, "http://"+addr+"/api/proxy/resume"); c != 405 {
		t.Fatalf("GET resume: %d, want 405", c)
	}
	if c, body := adminPost("http://" + addr + "/api/proxy/resume"); c != 200 || !strings.Contains(body, "not paused") {
		t.Fatalf("resume on loopback: %d %s", c, body)
	}

	allow := adminAllowed("")
	for _, tc := range []struct {
		ip   string
		want bool
	}{{"127.0.0.1", true}, {"::1", true}, {"10.1.2.3", false}} {
		r := (&http.Request{}).WithContext(context.WithValue(context.Background(), http.LocalAddrContextKey,
			&net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 9188}))
		if got := allow(r) == nil; got != tc.want {
			t.Errorf("request to %s without auth allowed: %v, want %v", tc.ip, got, tc.want)
		}
	}
	dir := t.TempDir()
	withAuth := filepath.Join(dir, "web.yml")
	// bcrypt of "secret"
	must(t, os.WriteFile(withAuth, []byte("basic_auth_users:\n  admin: $2y$10$RVXnYGEbItW8kUMWRRrnOeW8xF0ZdnmZ9r6XlbuHUN/1eUKxWnaHi\n"), 0o600))
	r := (&http.Request{}).WithContext(context.WithValue(context.Background(), http.LocalAddrContextKey,
		&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 9188}))
	if err := adminAllowed(withAuth)(r); err != nil {
		t.Errorf("a request to a non-loopback address with basic auth configured: %v", err)
	}
	addr, _, _ = startSidecar(t, "--database-url="+cluster.URL(""), "--web.enable-admin", "--web.config.file="+withAuth)
	if c, _ := adminPost("http://" + addr + "/api/proxy/pause"); c != 401 {
		t.Fatalf("pause without credentials: %d, want 401", c)
	}
}

// freeLoopback is a free TCP address on the loopback interface.
func freeLoopback(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	a := l.Addr().String()
	must(t, l.Close())
	return a
}

// TestPauseDuringLongTransaction is the pause's timeout path: a client inside a long
// transaction holds the pause up past its timeout, so the pause fails with 409 naming it, the
// proxy resumes by itself (/readyz no longer reports a pause, new transactions run), and the
// long transaction commits.
func TestPauseDuringLongTransaction(t *testing.T) {
	_, addr, proxyAddr, _ := sidecarWithProxy(t, "", "--proxy.pool-mode=transaction", "--web.enable-admin")
	base := "http://" + addr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr)
	long, err := pgx.Connect(ctx, url)
	must(t, err)
	defer long.Close(context.Background())
	tx, err := long.Begin(ctx)
	must(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := tx.Exec(ctx, "SELECT pg_sleep(1.5)")
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	code, body := adminPost(base + "/api/proxy/pause?timeout=500ms")
	if code != 409 || !strings.Contains(body, `"status": "resumed"`) || !strings.Contains(body, `"user": "postgres"`) {
		t.Fatalf("pause during a long transaction: %d %s", code, body)
	}
	if c, body := tryGet(base + "/readyz"); c != 200 || !strings.Contains(body, `"paused": false`) {
		t.Fatalf("/readyz after the failed pause: %d %s", c, body)
	}
	other, err := pgx.Connect(ctx, url)
	must(t, err)
	defer other.Close(context.Background())
	var one int
	must(t, other.QueryRow(ctx, "SELECT 1").Scan(&one))
	must(t, <-done)
	must(t, tx.Commit(ctx))
}
