package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	if flag.Lookup("test.run").Value.String() == "^TestReferenceDocs$" {
		// make docs needs no PostgreSQL: the reference is generated from the code alone.
		os.Exit(m.Run())
	}
	code := pgtest.Main(m, &cluster, pgtest.Options{})
	if binaryDir != "" {
		_ = os.RemoveAll(binaryDir)
	}
	os.Exit(code)
}

var (
	binaryOnce sync.Once
	binaryDir  string
	binaryPath string
	binaryErr  error
)

// sidecarBinary builds the pgsidecar command once per test run, for tests of what only a real
// process shows: signals, exit codes, a closed stderr.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			binaryErr = err
			return
		}
		if binaryDir, binaryErr = os.MkdirTemp("", "pgsidecar-bin"); binaryErr != nil {
			return
		}
		binaryPath = filepath.Join(binaryDir, "pgsidecar")
		if out, err := exec.Command(goTool, "build", "-o", binaryPath, ".").CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// sidecarProcess is a running pgsidecar binary.
type sidecarProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has ended; then err holds Wait's answer
	err    error
}

// startProcess starts the binary with args and the test's environment, its stdout and stderr
// both going to out.
func startProcess(t *testing.T, out *os.File, args ...string) *sidecarProcess {
	t.Helper()
	p := &sidecarProcess{cmd: exec.Command(sidecarBinary(t), args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	must(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// exitCode waits up to d for the process to end and returns its exit code, or -1 when a signal
// ended it; the test fails if it is still running.
func (p *sidecarProcess) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("the process still runs %s later", d)
	}
	return p.cmd.ProcessState.ExitCode()
}

// running reports whether the process has not ended.
func (p *sidecarProcess) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// clearPoolEnv keeps the developer's environment out of config tests.
func clearPoolEnv(t *testing.T) {
	for _, k := range []string{"DATABASE_URL", "DB_MAX_CONNECTIONS", "DB_MIN_CONNECTIONS", "DB_CONNECTION_TIMEOUT",
		"DB_IDLE_TIMEOUT", "DB_MAX_LIFETIME", "DB_RETRY_ATTEMPTS", "DB_RETRY_DELAY", "PGHOST", "PGDATABASE", "PGPASSWORD"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

func TestBadConfigExitsNonZeroNamingTheSetting(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"DATABASE_URL": "postgres://h/db", "DB_MIN_CONNECTIONS": "10", "DB_MAX_CONNECTIONS": "5"},
			"DB_MIN_CONNECTIONS (10) must not exceed DB_MAX_CONNECTIONS (5)"},
		{[]string{"--database-url=postgres://h/db", "--db.connection-timeout=soon"}, nil, "DB_CONNECTION_TIMEOUT"},
		{[]string{"--database-url=postgres://u:topsecret1@h/db?sslmode=maybe"}, nil, "sslmode is invalid"},
		{nil, nil, "DATABASE_URL is not set"},
		{[]string{"--database-url=postgres://h/db", "--no-such-flag"}, nil, "unknown long flag '--no-such-flag'"},
		{[]string{"--env-file=/nonexistent/.env"}, nil, "--env-file"},
		{[]string{"--database-url=postgres://h/db", "--collector.scope=some"}, nil, `--collector.scope ("some") must be auto, all or local`},
		{[]string{"--database-url=postgres://h/db", "--collector.election.interval=10ms"}, nil, "--collector.election.interval (10ms) must be between 100ms and 1m"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			clearPoolEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errOut testutil.LogBuffer
			code := run(context.Background(), tc.args, &out, &errOut)
			if code == 0 {
				t.Fatalf("exit code 0 for bad config %v", tc)
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("stderr %q does not name %q", errOut.String(), tc.want)
			}
			if strings.Contains(errOut.String(), "topsecret1") {
				t.Fatalf("stderr leaks the password: %s", errOut.String())
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out, errOut testutil.LogBuffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"DB_MAX_CONNECTIONS", "--db.retry-delay", "--web.listen-address", "--env-file", "--log.level"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %s", want)
		}
	}
	out, errOut = testutil.LogBuffer{}, testutil.LogBuffer{}
	if code := run(context.Background(), []string{"--version"}, &out, &errOut); code != 0 ||
		!strings.Contains(out.String()+errOut.String(), "pgsidecar") {
		t.Fatalf("--version exit %d: %q %q", code, out.String(), errOut.String())
	}
}

// TestSettingsTablesBindFlagsAndEnvironment parses every kind of setting the packages' tables
// declare (switches, lists, sizes, durations, enums) from flags and environment variables.
func TestSettingsTablesBindFlagsAndEnvironment(t *testing.T) {
	clearPoolEnv(t)
	t.Setenv("PGSIDECAR_COLLECTOR_SETTINGS", "false")
	t.Setenv("PGSIDECAR_COLLECTION_TIMEOUT", "7s")
	t.Setenv("PROXY_LISTEN_ADDRESS", "127.0.0.1:6432\n/run/pg/.s.PGSQL.6432")
	t.Setenv("DB_MAX_CONNECTIONS", "7")
	k, a := newApp(io.Discard, io.Discard)
	if _, err := k.Parse([]string{"--no-web.enable-api", "--no-collector.activity", "--collector.statements",
		"--proxy.max-message-size=2MiB", "--proxy.auth-method=md5", "--collector.database.size-interval=1d"}); err != nil {
		t.Fatal(err)
	}
	api, col, prx := a.features[0].(*apiFeature).cfg, a.features[1].(*collectorFeature).cfg, a.features[2].(*proxyFeature).cfg
	if api.Enabled {
		t.Error("--no-web.enable-api left the API on")
	}
	want := map[string]bool{"activity": false, "database": true, "settings": false, "statements": true}
	for name, on := range want {
		if col.Enabled[name] != on {
			t.Errorf("collector %s on = %v, want %v", name, col.Enabled[name], on)
		}
	}
	if col.Timeout != 7*time.Second || col.DatabaseSizeInterval != 24*time.Hour || col.MaxConns != 1 || col.StatementsLimit != 25 {
		t.Errorf("collector config %+v", col)
	}
	if strings.Join(prx.Listen, ",") != "127.0.0.1:6432,/run/pg/.s.PGSQL.6432" || prx.MaxMessageSize != 2<<20 ||
		prx.Auth != "md5" || prx.MaxClients != 1000 {
		t.Errorf("proxy config %+v", prx)
	}
	if a.poolCfg.MaxConns != 7 || a.poolCfg.MinConns != 5 {
		t.Errorf("pool config %+v", a.poolCfg)
	}
}

func TestEnvFile(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	f := filepath.Join(dir, ".env")
	content := "# Database Pool Configuration\nDB_MAX_CONNECTIONS=30          # Maximum connections in pool\n" +
		"DB_MIN_CONNECTIONS=40\nexport DATABASE_URL=\"postgres://h/db\"\n\n"
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut testutil.LogBuffer
	code := run(context.Background(), []string{"--env-file", f}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "DB_MIN_CONNECTIONS (40) must not exceed DB_MAX_CONNECTIONS (30)") {
		t.Fatalf("env file not applied: exit %d, %s", code, errOut.String())
	}
	if err := os.WriteFile(f, []byte("NOT A LINE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code = run(context.Background(), []string{"--env-file=" + f}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), ".env:1: expected KEY=VALUE") {
		t.Fatalf("bad env file: exit %d, %s", code, errOut.String())
	}
}

// startSidecar runs the binary's run function and returns its address and a stop function that
// returns the exit code.
func startSidecar(t *testing.T, args ...string) (addr string, logs *testutil.LogBuffer, stop func() int) {
	t.Helper()
	addr = testutil.FreeAddr(t)
	logs = &testutil.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--web.listen-address=" + addr, "--db.metrics-log-interval=0"}, args...), io.Discard, logs)
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		r, err := http.Get("http://" + addr + "/")
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	}) {
		cancel()
		t.Fatalf("sidecar did not listen; logs:\n%s", logs.String())
	}
	var once sync.Once
	code := -1
	stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("sidecar did not shut down")
			}
		})
		return code
	}
	t.Cleanup(func() { stop() })
	return addr, logs, stop
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second}
	r, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

func TestServesMetricsWhileDatabaseIsDown(t *testing.T) {
	clearPoolEnv(t)
	addr, logs, stop := startSidecar(t, "--database-url=postgres://app:hidden-pw-1@127.0.0.1:1/pos?sslmode=disable",
		"--db.connection-timeout=500ms")
	code, body := get(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	// No sidecar leads while the database is down, and pg_up still says so.
	for _, want := range []string{`pgsidecar_health_check_up{pool="default"} 0`, `pgsidecar_pool_max_connections{pool="default"} 20`,
		`pg_up{pool="default"} 0`, `pgsidecar_collector_leader{scope="auto"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, body := get(t, "http://"+addr+"/"); code != 200 || !strings.Contains(body, "/metrics") {
		t.Fatalf("landing page: %d", code)
	}
	if c := stop(); c != 0 {
		t.Fatalf("exit code %d after SIGTERM-like stop", c)
	}
	if strings.Contains(logs.String(), "hidden-pw-1") || strings.Contains(body, "hidden-pw-1") {
		t.Fatal("password leaked into logs or metrics")
	}
	if !strings.Contains(logs.String(), "Database connection failed") || !strings.Contains(logs.String(), "Shutting down") {
		t.Fatalf("logs do not tell the story:\n%s", logs.String())
	}
}

func TestMetricsOfALiveSidecar(t *testing.T) {
	clearPoolEnv(t)
	addr, _, stop := startSidecar(t, "--database-url="+cluster.URL(""), "--db.min-connections=2")
	if !pgtest.WaitFor(20*time.Second, func() bool {
		_, body := get(t, "http://"+addr+"/metrics")
		return strings.Contains(body, `pgsidecar_health_check_up{pool="default"} 1`)
	}) {
		t.Fatal("sidecar never reported healthy")
	}
	_, body := get(t, "http://"+addr+"/metrics")
	for _, want := range []string{"pgsidecar_pool_connections{pool=\"default\",state=\"idle\"}", "go_goroutines", "pgsidecar_build_info",
		fmt.Sprintf("pgsidecar_pool_min_connections{pool=%q} 2", "default")} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if c := stop(); c != 0 {
		t.Fatalf("exit code %d", c)
	}
}

func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	certPEM, keyPEM := selfSignedCert(t)
	must(t, os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600))
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	must(t, err)
	webCfg := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prometheus: %s\n",
		filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), hash)
	must(t, os.WriteFile(filepath.Join(dir, "web.yml"), []byte(webCfg), 0o600))

	addr := testutil.FreeAddr(t)
	logs := &testutil.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--web.listen-address=" + addr, "--web.config.file=" + filepath.Join(dir, "web.yml"),
			"--database-url=postgres://app:pw@127.0.0.1:1/pos", "--db.metrics-log-interval=0"}, io.Discard, logs)
	}()
	defer func() {
		cancel()
		<-done
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var resp *http.Response
	if !pgtest.WaitFor(20*time.Second, func() bool {
		req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
		r, err := client.Do(req)
		if err != nil {
			return false
		}
		resp = r
		return true
	}) {
		t.Fatalf("no TLS listener; logs:\n%s", logs.String())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without credentials: %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
	req.SetBasicAuth("prometheus", "wrong")
	r, err := client.Do(req)
	must(t, err)
	r.Body.Close()
	if r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d, want 401", r.StatusCode)
	}
	req.SetBasicAuth("prometheus", "scrape-pw")
	r, err = client.Do(req)
	must(t, err)
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !strings.Contains(string(body), "pgsidecar_pool_max_connections") {
		t.Fatalf("with credentials: %d", r.StatusCode)
	}
	// Plain HTTP is not served.
	if r, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics"); err == nil {
		r.Body.Close()
		if r.StatusCode == 200 {
			t.Fatal("plain HTTP served metrics with TLS configured")
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func selfSignedCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// Fifty simultaneous scrapes all get an answer, and they share collections instead of running
// the catalog queries fifty times.
func TestConcurrentScrapesShareCollections(t *testing.T) {
	clearPoolEnv(t)
	addr, _, _ := startSidecar(t, "--database-url="+cluster.URL(""))
	collections := func() float64 {
		_, body := get(t, "http://"+addr+"/metrics")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, "pgsidecar_collections_total "); ok {
				var f float64
				fmt.Sscan(v, &f)
				return f
			}
		}
		t.Fatal("no pgsidecar_collections_total")
		return 0
	}
	before := collections()
	start := make(chan struct{})
	codes := make(chan int, 50)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			<-start
			r, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			codes <- r.StatusCode
		})
	}
	close(start)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("a concurrent scrape got %d", c)
		}
	}
	// Without sharing this would be 50 (plus the probe's own).
	if n := collections() - before; n > 12 {
		t.Fatalf("%v collections for 50 simultaneous scrapes", n)
	}
}

// TestEnvFileLongLines: lines up to 1 MiB load; a longer one is named by its line number and
// key, without any of its value.
func TestEnvFileLongLines(t *testing.T) {
	clearPoolEnv(t)
	t.Setenv("PGSIDECAR_TEST_LONG", "")
	os.Unsetenv("PGSIDECAR_TEST_LONG")
	dir := t.TempDir()
	f := filepath.Join(dir, ".env")
	long := strings.Repeat("v", 900<<10)
	must(t, os.WriteFile(f, []byte("# long values\nPGSIDECAR_TEST_LONG="+long+"\nDB_MAX_CONNECTIONS=0\n"), 0o600))
	var out, errOut testutil.LogBuffer
	code := run(context.Background(), []string{"--env-file", f, "--database-url=postgres://h/db"}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "DB_MAX_CONNECTIONS (0) must be at least 1") {
		t.Fatalf("the lines after a 900 KiB line were not loaded: exit %d, %s", code, errOut.String())
	}
	if os.Getenv("PGSIDECAR_TEST_LONG") != long {
		t.Fatal("a 900 KiB value was not loaded whole")
	}
	for _, tc := range []struct{ content, want string }{
		{"DB_MIN_CONNECTIONS=1\nexport DB_SECRET_THING=" + strings.Repeat("s3cr3t", 400<<10) + "\n",
			".env:2: the line of DB_SECRET_THING is longer than 1 MiB"},
		{"DB_MIN_CONNECTIONS=1\n\n" + strings.Repeat("s3cr3t", 400<<10), ".env:3: the line is longer than 1 MiB"},
	} {
		must(t, os.WriteFile(f, []byte(tc.content), 0o600))
		out, errOut = testutil.LogBuffer{}, testutil.LogBuffer{}
		code := run(context.Background(), []string{"--env-file=" + f}, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), "--env-file: ") || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("exit %d, %q; want 2 and %q", code, errOut.String(), tc.want)
		}
		if strings.Contains(errOut.String(), "s3cr3t") || strings.Contains(errOut.String(), "token too long") {
			t.Errorf("error shows the value or the scanner's words: %.300s", errOut.String())
		}
	}
}

// TestProbeListenerWithoutAuth: with basic auth on, --web.probe-listen-address serves /healthz
// and /readyz without credentials (and nothing else), as kubelet's probes in the Kubernetes
// example need, while the main listener still requires them.
func TestProbeListenerWithoutAuth(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "web.yml"), fmt.Appendf(nil, "basic_auth_users:\n  prometheus: %s\n", hash), 0o600))
	probes := testutil.FreeAddr(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--web.config.file="+filepath.Join(dir, "web.yml"),
		"--web.probe-listen-address="+probes)
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusUnauthorized {
		t.Errorf("/healthz on the main listener without credentials: %d, want 401", code)
	}
	if code, body := get(t, "http://"+probes+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz on the probe listener: %d %s; logs:\n%s", code, body, logs.String())
	}
	if !pgtest.WaitFor(20*time.Second, func() bool { code, _ := get(t, "http://"+probes+"/readyz"); return code == http.StatusOK }) {
		t.Errorf("/readyz on the probe listener never 200; logs:\n%s", logs.String())
	}
	for _, path := range []string{"/metrics", "/api/database/metrics", "/status", "/"} {
		if code, _ := get(t, "http://"+probes+path); code != http.StatusNotFound {
			t.Errorf("%s on the probe listener: %d, want 404", path, code)
		}
	}
}
