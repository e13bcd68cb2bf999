package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestCrashRestartsWithEverythingRunning stops PostgreSQL immediately and starts it again 20
// times while a Go app on the pool library and proxy clients query, scrapes run and probes poll. /metrics and /healthz must answer
// every time, /readyz must follow the database, nothing may hang past its deadline, and the
// sidecar must end without leaked server sessions or goroutines.
func TestCrashRestartsWithEverythingRunning(t *testing.T) {
	cluster.RequireControl(t)
	if testing.Short() {
		t.Skip("20 restarts take a while")
	}
	clearPoolEnv(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	proxyAddr := testutil.FreeAddr(t)
	addr, logs, stop := startSidecar(t, "--database-url="+cluster.URL(""), "--proxy.listen-address="+proxyAddr,
		"--db.min-connections=2", "--db.max-connections=8", "--db.application-name=crash-sidecar",
		"--db.connection-timeout=2s", "--collection-timeout=2s")
	base := "http://" + addr
	client := &http.Client{Timeout: 10 * time.Second}
	waitReady := func(want int) bool {
		return pgtest.WaitFor(20*time.Second, func() bool {
			r, err := client.Get(base + "/readyz")
			if err != nil {
				return false
			}
			r.Body.Close()
			return r.StatusCode == want
		})
	}
	if !waitReady(200) {
		t.Fatalf("never ready:\n%s", logs.String())
	}

	// A Go app on the pool library, next to the proxy clients.
	libCfg := pool.DefaultConfig()
	libCfg.DatabaseURL, libCfg.Name, libCfg.ApplicationName = cluster.URL(""), "library", "crash-library"
	libCfg.MaxConns, libCfg.MinConns, libCfg.MetricsLogInterval = 4, 1, 0
	libCfg.RetryDelay, libCfg.RetryMaxDelay, libCfg.ConnectTimeout = 20*time.Millisecond, 200*time.Millisecond, 2*time.Second
	lib, err := pool.New(libCfg, pool.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer lib.Close()

	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	var proxyOK, proxyFailed, probeFailures, libOK, libFailed atomic.Int64
	var probeErr atomic.Value
	// load calls fn in a loop until stopLoad, each call bounded by a 3 s deadline; a call still
	// running long after its deadline is a hang.
	load := func(what string, ok, failed *atomic.Int64, fn func(ctx context.Context) error) {
		wg.Go(func() {
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				start := time.Now()
				err := fn(ctx)
				cancel()
				if time.Since(start) > 3*time.Second+20*time.Second {
					t.Errorf("a %s call ran %s past its 3s deadline", what, time.Since(start))
				}
				if err == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	for range 2 {
		load("library", &libOK, &libFailed, func(ctx context.Context) error {
			return lib.ExecuteWithRetry(ctx, func(ctx context.Context) error {
				_, err := lib.Pool().Exec(ctx, "SELECT 1")
				return err
			})
		})
	}
	// Proxy clients: connect, query, disconnect.
	for w := range 3 {
		load("proxy", &proxyOK, &proxyFailed, func(ctx context.Context) error {
			c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr))
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			_, err = c.Exec(ctx, "SELECT $1::int", w)
			return err
		})
	}
	// Scrapes and liveness: must answer every time, database up or down.
	wg.Go(func() {
		for {
			select {
			case <-stopLoad:
				return
			default:
			}
			for _, p := range []string{"/metrics", "/healthz"} {
				r, err := client.Get(base + p)
				if err != nil {
					probeFailures.Add(1)
					probeErr.Store(fmt.Sprintf("%s: %v", p, err))
					continue
				}
				r.Body.Close()
				if r.StatusCode != 200 {
					probeFailures.Add(1)
					probeErr.Store(fmt.Sprintf("%s: status %d", p, r.StatusCode))
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	var downLag, upLag []time.Duration
	for i := range 20 {
		before, libBefore := proxyOK.Load(), libOK.Load()
		if !pgtest.WaitFor(30*time.Second, func() bool { return proxyOK.Load() > before+3 && libOK.Load() > libBefore+3 }) {
			t.Fatalf("round %d: proxy or library clients make no progress\n%s", i, logs.String())
		}
		if err := cluster.Stop("immediate"); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		if !waitReady(503) {
			t.Fatalf("round %d: /readyz stayed 200 with the database down", i)
		}
		downLag = append(downLag, time.Since(stopped))
		if err := cluster.StartAgain(); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		if !waitReady(200) {
			t.Fatalf("round %d: /readyz did not come back", i)
		}
		upLag = append(upLag, time.Since(started))
	}
	close(stopLoad)
	wg.Wait()
	if n := probeFailures.Load(); n > 0 {
		t.Fatalf("/metrics or /healthz failed %d times; last: %v", n, probeErr.Load())
	}
	t.Logf("library calls: %d ok; proxy calls: %d ok, %d failed; /readyz 503 after a crash: median %s, max %s; 200 after restart: median %s, max %s",
		libOK.Load(), proxyOK.Load(), proxyFailed.Load(), median(downLag), maxDur(downLag), median(upLag), maxDur(upLag))

	// The server holds exactly what the pools hold: no session the pools lost track of.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var server, sidecarPool, libServer int64
	if !pgtest.WaitFor(15*time.Second, func() bool {
		var m struct {
			Pool struct{ TotalConnections int64 }
		}
		_, body := get(t, base+"/api/database/metrics")
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			return false
		}
		var err1, err2 error
		server, err1 = cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crash-sidecar'")
		libServer, err2 = cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'crash-library'")
		sidecarPool = m.Pool.TotalConnections
		return err1 == nil && err2 == nil && server == sidecarPool && libServer == int64(lib.Stats().TotalConns)
	}) {
		t.Fatalf("server sessions differ from what the pools hold: sidecar %d on the server, %d in its pool; library %d on the server, %d in its pool",
			server, sidecarPool, libServer, lib.Stats().TotalConns)
	}
	lib.Close()
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !pgtest.WaitFor(15*time.Second, func() bool {
		n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'crash-sidecar%'")
		return err == nil && n == 0
	}) {
		t.Fatal("server sessions left after the sidecar stopped")
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// TestClosedLogReader: when the reader of the sidecar's stderr goes away (pgsidecar 2>&1 |
// grep …, and grep ends), the log lines are lost but the process, its pool and its proxied
// sessions go on.
func TestClosedLogReader(t *testing.T) {
	clearPoolEnv(t)
	addr, proxyAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	r, w, err := os.Pipe()
	must(t, err)
	p := startProcess(t, w, "--web.listen-address="+addr, "--database-url="+cluster.URL(""),
		"--proxy.listen-address="+proxyAddr, "--db.min-connections=1")
	w.Close()
	// Read until the sidecar serves, then close the only reader.
	lines := bufio.NewScanner(r)
	for lines.Scan() && !strings.Contains(lines.Text(), "Listening on") {
	}
	base := "http://" + addr
	if !pgtest.WaitFor(20*time.Second, func() bool { c, _ := get(t, base+"/readyz"); return c == 200 }) {
		t.Fatal("never ready")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	session, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr))
	must(t, err)
	defer session.Close(context.Background())
	r.Close()

	// A warm-up logs a line, which now goes to a pipe nobody reads.
	resp, err := http.Post(base+"/api/database/warmup", "application/json", strings.NewReader(`{"connections": 1}`))
	if err == nil {
		resp.Body.Close()
	}
	time.Sleep(500 * time.Millisecond)
	if !p.running() {
		t.Fatalf("the sidecar ended when its log reader went away: %v", p.err)
	}
	if c, _ := get(t, base+"/healthz"); c != 200 {
		t.Fatalf("/healthz = %d", c)
	}
	var one int
	if err := session.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the proxied session ended: %v", err)
	}
	session.Close(ctx) // SIGTERM waits for the proxy's clients to leave
	must(t, p.cmd.Process.Signal(syscall.SIGTERM))
	if code := p.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// TestSignalDuringStartup: SIGTERM stops the program promptly even when a start-up stage is
// blocked, here on a FIFO given as a file that a library reads without checking (pgx's
// sslrootcert, the web config's certificate) or that is read after signals are caught (the
// proxy's users file). The message names the stage it was stopped at.
func TestSignalDuringStartup(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	must(t, syscall.Mkfifo(fifo, 0o600))
	webCfg := filepath.Join(dir, "web.yml")
	must(t, os.WriteFile(webCfg, []byte("tls_server_config:\n  cert_file: "+fifo+"\n  key_file: "+fifo+"\n"), 0o600))
	url := "postgres://app:topsecret1@127.0.0.1:1/pos?sslmode=disable"
	cases := []struct {
		name, url string
		args      []string
		stage     string
	}{
		{"sslrootcert", "postgres://app:topsecret1@127.0.0.1:1/pos?sslmode=verify-full&sslrootcert=" + fifo, nil,
			"checking the pool configuration"},
		{"web config certificate", url, []string{"--web.config.file=" + webCfg}, "reading --web.config.file"},
		{"proxy users file", url, []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.users-file=" + fifo}, "starting the proxy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearPoolEnv(t)
			t.Setenv("DATABASE_URL", tc.url)
			out, err := os.CreateTemp(t.TempDir(), "out")
			must(t, err)
			p := startProcess(t, out, append([]string{"--web.listen-address=127.0.0.1:0"}, tc.args...)...)
			time.Sleep(time.Second)
			if !p.running() {
				b, _ := os.ReadFile(out.Name())
				if p.cmd.ProcessState.ExitCode() == 2 && strings.Contains(string(b), "not a regular file") {
					t.Skipf("the stage no longer blocks: %s", b)
				}
				t.Fatalf("ended before the signal: %v\n%s", p.err, b)
			}
			sent := time.Now()
			must(t, p.cmd.Process.Signal(syscall.SIGTERM))
			code := p.exitCode(t, 10*time.Second)
			b, _ := os.ReadFile(out.Name())
			if code != 1 || !strings.Contains(string(b), "stopped during start-up") &&
				!strings.Contains(string(b), "Stopped during start-up") || !strings.Contains(string(b), tc.stage) {
				t.Fatalf("exit code %d after %s, want 1 and a message naming %q:\n%s", code, time.Since(sent), tc.stage, b)
			}
			if strings.Contains(string(b), "topsecret1") {
				t.Fatal("output leaks the password")
			}
			t.Logf("stopped %s after SIGTERM", time.Since(sent).Round(10*time.Millisecond))
		})
	}
}

// TestSilentProxyConnections opens --proxy.max-client-connections TCP connections to the
// binary's proxy that never send a startup packet: a real client must still log in and query
// at once, not wait out the 15s startup timeout for FATAL 53300.
func TestSilentProxyConnections(t *testing.T) {
	proxyAddr := testutil.FreeAddr(t)
	_, logs, stop := startSidecar(t, "--database-url="+cluster.URL(""), "--proxy.listen-address="+proxyAddr,
		"--proxy.max-client-connections=10", "--db.max-connections=2", "--db.min-connections=1")
	defer stop()
	for range 10 {
		c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	time.Sleep(200 * time.Millisecond) // let the proxy accept them all
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr))
	if err != nil {
		t.Fatalf("real client behind 10 silent connections: %v\nlogs:\n%s", err, logs.String())
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "SELECT 3").Scan(&n); err != nil || n != 3 {
		t.Fatalf("query: %v (%d)", err, n)
	}
}
