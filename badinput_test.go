package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// The bad input suite: configuration, queries.yaml, HTTP and the proxy's protocol input. Each
// case names the clear error it expects; none may crash the process or hang.

func TestBadStartupInput(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"negative max", nil, map[string]string{"DB_MAX_CONNECTIONS": "-1"}, "DB_MAX_CONNECTIONS (-1) must not be negative"},
		{"zero max", []string{"--db.max-connections=0", "--db.min-connections=0"}, nil, "DB_MAX_CONNECTIONS (0) must be at least 1"},
		{"min over max", nil, map[string]string{"DB_MIN_CONNECTIONS": "30"}, "DB_MIN_CONNECTIONS (30) must not exceed DB_MAX_CONNECTIONS (20)"},
		{"max not a number", nil, map[string]string{"DB_MAX_CONNECTIONS": "lots"}, `DB_MAX_CONNECTIONS: "lots" is not a whole number`},
		{"garbage timeout", nil, map[string]string{"DB_CONNECTION_TIMEOUT": "10 sec"}, `DB_CONNECTION_TIMEOUT: "10 sec" is not milliseconds`},
		{"negative idle timeout", nil, map[string]string{"DB_IDLE_TIMEOUT": "-5"}, `DB_IDLE_TIMEOUT: "-5" is negative`},
		{"day unit", []string{"--db.max-lifetime=1d"}, nil, `DB_MAX_LIFETIME: "1d" is not milliseconds`},
		{"zero attempts", nil, map[string]string{"DB_RETRY_ATTEMPTS": "0"}, "DB_RETRY_ATTEMPTS (0) must be at least 1"},
		{"negative retry delay", []string{"--db.retry-delay=-1s"}, nil, `DB_RETRY_DELAY: "-1s" is negative`},
		{"zero health interval", nil, map[string]string{"DB_HEALTH_CHECK_INTERVAL": "0"}, "DB_HEALTH_CHECK_INTERVAL (0s) must be greater than 0"},
		{"nanosecond health interval", nil, map[string]string{"DB_HEALTH_CHECK_INTERVAL": "1ns"}, "DB_HEALTH_CHECK_INTERVAL (1ns) must be at least 1s"},
		{"nanosecond health timeout", nil, map[string]string{"DB_HEALTH_CHECK_TIMEOUT": "1ns"}, "DB_HEALTH_CHECK_TIMEOUT (1ns) must be at least 100ms"},
		{"millisecond connection timeout", nil, map[string]string{"DB_CONNECTION_TIMEOUT": "1"}, "DB_CONNECTION_TIMEOUT (1ms) must be at least 100ms"},
		{"nanosecond idle timeout", nil, map[string]string{"DB_IDLE_TIMEOUT": "1ns"}, "DB_IDLE_TIMEOUT (1ns) must be at least 1s"},
		{"nanosecond lifetime", []string{"--db.max-lifetime=1ns"}, nil, "DB_MAX_LIFETIME (1ns) must be at least 1s"},
		{"nanosecond retry delays", nil, map[string]string{"DB_RETRY_DELAY": "1ns", "DB_RETRY_MAX_DELAY": "1ns"}, "DB_RETRY_MAX_DELAY (1ns) must be at least 10ms"},
		{"nanosecond metrics log interval", []string{"--db.metrics-log-interval=1ns"}, nil, "DB_METRICS_LOG_INTERVAL (1ns) must be 0 or at least 1s"},
		{"pool name not UTF-8", nil, map[string]string{"DB_POOL_NAME": "pool\xff\xfe"}, `DB_POOL_NAME ("pool\xff\xfe") must be valid UTF-8`},
		{"pool name too long", []string{"--db.pool-name=" + strings.Repeat("p", 129)}, nil, "DB_POOL_NAME (129 bytes) must be at most 128 bytes"},
		{"words for threshold", nil, map[string]string{"DB_SLOW_QUERY_THRESHOLD": "fast"}, `DB_SLOW_QUERY_THRESHOLD: "fast" is not milliseconds`},
		{"bad port in URL", nil, map[string]string{"DATABASE_URL": "postgres://u:pw@h:port/db"}, "DATABASE_URL (postgres://u:xxxxx@h:port/db) is invalid"},
		{"unknown sslmode", nil, map[string]string{"DATABASE_URL": "postgres://u@h/db?sslmode=sometimes"}, "sslmode is invalid"},
		{"key=value garbage", nil, map[string]string{"DATABASE_URL": "host=h port=abc"}, "DATABASE_URL (host=h port=abc) is invalid"},
		{"no database", nil, map[string]string{"DATABASE_URL": ""}, "DATABASE_URL is not set"},
		{"log level", []string{"--log.level=loud"}, nil, "unrecognized log level loud"},
		{"proxy auth method", []string{"--proxy.auth-method=kerberos"}, nil, "got 'kerberos'"},
		{"proxy message size", []string{"--proxy.max-message-size=huge"}, nil, "invalid huge"},
		{"unknown flag", []string{"--db.max-conections=5"}, nil, "unknown long flag '--db.max-conections'"},
		{"missing web config", []string{"--web.config.file=/nonexistent/web.yml"}, nil, "--web.config.file: open /nonexistent/web.yml"},
		{"web config missing cert", []string{"--web.config.file=testdata/web/missing_cert.yml"}, nil, "--web.config.file: "},
		{"web config syntax", []string{"--web.config.file=testdata/web/syntax_error.yml"}, nil, "--web.config.file: "},
		{"proxy without a password to check", []string{"--proxy.listen-address=127.0.0.1:0"}, map[string]string{"DATABASE_URL": "postgres://app@127.0.0.1:1/pos"}, "DATABASE_URL has no password"},
		{"missing queries file", []string{"--queries.file=/nonexistent/queries.yaml"}, nil, "--queries.file: open /nonexistent/queries.yaml"},
		{"queries unknown key", []string{"--queries.file=collector/testdata/queries/unknown_key.yaml"}, nil, "unknown_key.yaml:3: query pg_example: unknown key"},
		{"queries duplicate metric", []string{"--queries.file=collector/testdata/queries/duplicate_metric.yaml"}, nil, "duplicate_metric.yaml:"},
		{"queries bad usage", []string{"--queries.file=collector/testdata/queries/bad_usage.yaml"}, nil, "bad_usage.yaml:"},
		{"queries without metrics", []string{"--queries.file=collector/testdata/queries/no_metric_columns.yaml"}, nil, "no_metric_columns.yaml:"},
		{"queries syntax", []string{"--queries.file=collector/testdata/queries/syntax_error.yaml"}, nil, "syntax_error.yaml:3:"},
		{"queries bad values", []string{"--queries.file=collector/testdata/queries/bad_values.yaml"}, nil, "bad_values.yaml:"},
		{"queries built-in name", []string{"--queries.file=collector/testdata/queries/builtin_name.yaml"}, nil, "builtin_name.yaml:"},
		{"negative collection timeout", []string{"--collection-timeout=-1s"}, nil, "--collection-timeout (-1s) must be greater than 0"},
		{"no collector connections", []string{"--collector.max-connections=0"}, nil, "--collector.max-connections (0) must be at least 1"},
		{"negative statements limit", nil, map[string]string{"PGSIDECAR_COLLECTOR_STATEMENTS_LIMIT": "-5"}, "--collector.statements.limit (-5) must be at least 1"},
		{"negative size interval", []string{"--collector.database.size-interval=-1m"}, nil, "--collector.database.size-interval (-1m0s) must not be negative"},
		{"zero proxy clients", []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.max-client-connections=0"}, nil, "--proxy.max-client-connections (0) must be at least 1"},
		{"tiny proxy messages", []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.max-message-size=0"}, nil, "--proxy.max-message-size (0B) must be at least 1KiB"},
		{"telemetry path without slash", []string{"--web.telemetry-path=metrics"}, nil, `--web.telemetry-path ("metrics") must be a path starting with /`},
		{"telemetry path taken", []string{"--web.telemetry-path=/status"}, nil, `msg="Cannot serve metrics" path=/status`},
		{"proxy cert without key", []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.tls-cert-file=/x.pem"}, nil, "--proxy.tls-cert-file and --proxy.tls-key-file must be given together"},
		{"proxy TLS mode", []string{"--proxy.tls-mode=sometimes"}, nil, "--proxy.tls-mode must be one of disable, allow, require, got 'sometimes'"},
		{"proxy TLS mode from env", nil, map[string]string{"PROXY_TLS_MODE": "on"}, "--proxy.tls-mode must be one of disable, allow, require, got 'on'"},
		{"proxy TLS required without a certificate", []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.tls-mode=require"}, nil, "--proxy.tls-mode=require needs a certificate: give --proxy.tls-cert-file and --proxy.tls-key-file"},
		{"zero proxy startup connections", []string{"--proxy.max-startup-connections=0"}, nil, "--proxy.max-startup-connections must be auto or a number of at least 1, got '0'"},
		{"words for proxy startup connections", []string{"--proxy.max-startup-connections=many"}, nil, "--proxy.max-startup-connections must be auto or a number of at least 1, got 'many'"},
		{"proxy unreadable users file", []string{"--proxy.listen-address=127.0.0.1:0", "--proxy.users-file=/nonexistent/users.txt"}, nil, "--proxy.users-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearPoolEnv(t)
			t.Setenv("DATABASE_URL", "postgres://app:topsecret1@127.0.0.1:1/pos?sslmode=disable")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errOut testutil.LogBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := []string{"--web.listen-address=127.0.0.1:0"}
			if !slices.ContainsFunc(tc.args, func(a string) bool { return strings.HasPrefix(a, "--db.metrics-log-interval=") }) {
				args = append(args, "--db.metrics-log-interval=0")
			}
			args = append(args, tc.args...)
			code := run(ctx, args, &out, &errOut)
			if ctx.Err() != nil {
				t.Fatalf("bad input did not stop the program: it ran until the test's deadline\n%s", errOut.String())
			}
			// 2 is bad configuration (systemd's RestartPreventExitStatus=2 relies on it).
			if code != 2 {
				t.Fatalf("exit code %d, want 2\n%s", code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, errOut.String())
			}
			if strings.Contains(errOut.String()+out.String(), "topsecret1") {
				t.Fatal("output leaks the password")
			}
		})
	}
}

func TestBadHTTPInput(t *testing.T) {
	clearPoolEnv(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--db.max-connections=4", "--db.min-connections=1")
	base := "http://" + addr
	if !pgtest.WaitFor(20*time.Second, func() bool { c, _ := get(t, base+"/readyz"); return c == 200 }) {
		t.Fatalf("not ready:\n%s", logs.String())
	}
	client := &http.Client{Timeout: 15 * time.Second}
	cases := []struct {
		method, path, body string
		header             map[string]string
		status             int
		want               string // in the body, or "Allow: X" for the header
	}{
		{"PUT", "/api/database/metrics", "", nil, 405, "Allow: GET"},
		{"DELETE", "/api/database/health", "", nil, 405, "Allow: GET"},
		{"GET", "/api/database/warmup", "", nil, 405, "Allow: POST"},
		{"POST", "/api/database/warmup", `{"connections": 1000}`, nil, 400, `"error"`},
		{"POST", "/api/database/warmup", `{"connections": -1}`, nil, 400, `"error"`},
		{"POST", "/api/database/warmup", `not json`, nil, 400, `"error"`},
		{"POST", "/api/database/warmup", `{"connections": "two"}`, nil, 400, `"error"`},
		{"POST", "/api/database/warmup", `{"connections": 1, "extra": true}`, nil, 400, `"error"`},
		{"POST", "/api/database/warmup", `{"connections": 1} {"connections": 2}`, nil, 400, "nothing after it"},
		{"POST", "/api/database/warmup", `{"connections": 1}garbage`, nil, 400, "nothing after it"},
		{"POST", "/api/database/warmup", `{"connections": 1}]`, nil, 400, "nothing after it"},
		{"POST", "/api/database/warmup", "{\"connections\": 1}\n", nil, 200, `"opened"`},
		{"PUT", "/metrics", "", nil, 405, "Allow: GET, HEAD"},
		{"POST", "/metrics", "x", nil, 405, "Allow: GET, HEAD"},
		{"DELETE", "/metrics", "", nil, 405, "Allow: GET, HEAD"},
		{"HEAD", "/metrics", "", nil, 200, ""},
		{"POST", "/healthz", "", nil, 405, "Allow: GET, HEAD"},
		{"PUT", "/readyz", "", nil, 405, "Allow: GET, HEAD"},
		{"POST", "/status", "", nil, 405, "Allow: GET, HEAD"},
		{"POST", "/", "", nil, 405, "Allow: GET, HEAD"},
		{"GET", "/-/reload", "", nil, 405, "Allow: POST"},
		{"GET", "/api/database/no-such-endpoint", "", nil, 404, `"error"`},
		{"GET", "/api/database/metrics/extra", "", nil, 404, `"error"`},
		{"GET", "/-/reload", "", nil, 405, ""},
		{"GET", "/metrics", "", map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "soon"}, 200, "pgsidecar_pool_max_connections"},
		{"GET", "/metrics", "", map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "-5"}, 200, "pgsidecar_pool_max_connections"},
		{"GET", "/metrics", "", map[string]string{"X-Prometheus-Scrape-Timeout-Seconds": "1e308"}, 200, "pgsidecar_pool_max_connections"},
		{"GET", "/api/database/metrics", "", map[string]string{"Accept": "text/event-stream"}, 200, "{"},
		{"GET", "/readyz", "", map[string]string{"Content-Length": "0"}, 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path+" "+tc.body, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			must(t, err)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			r, err := client.Do(req)
			must(t, err)
			defer r.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", r.StatusCode, tc.status, b)
			}
			if allow, ok := strings.CutPrefix(tc.want, "Allow: "); ok {
				if !strings.Contains(r.Header.Get("Allow"), allow) {
					t.Fatalf("Allow header %q, want %q", r.Header.Get("Allow"), allow)
				}
			} else if !strings.Contains(string(b), tc.want) {
				t.Fatalf("body lacks %q: %s", tc.want, b)
			}
		})
	}
	t.Run("oversized headers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/metrics", nil)
		req.Header.Set("X-Junk", strings.Repeat("x", 2<<20))
		r, err := client.Do(req)
		if err == nil {
			r.Body.Close()
			if r.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d, want 431", r.StatusCode)
			}
		}
	})
	t.Run("garbage request line", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		must(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = c.Write([]byte("\x16\x03\x01 HELLO?\r\n\r\n"))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.Contains(line, "400") {
			t.Fatalf("response %q, want 400", line)
		}
	})
	// The server still answers normally after all of that.
	if c, body := get(t, base+"/api/database/health"); c != 200 || !strings.Contains(body, "healthy") {
		t.Fatalf("health after bad input: %d %s", c, body)
	}
}

func TestBadProxyInput(t *testing.T) {
	clearPoolEnv(t)
	proxyAddr := testutil.FreeAddr(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--proxy.listen-address="+proxyAddr,
		"--proxy.max-message-size=1MiB", "--db.max-connections=4", "--db.min-connections=1")
	if !pgtest.WaitFor(20*time.Second, func() bool { c, _ := get(t, "http://"+addr+"/readyz"); return c == 200 }) {
		t.Fatalf("not ready:\n%s", logs.String())
	}
	startup := func(params map[string]string) []byte {
		b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}).Encode(nil)
		return b
	}
	raw := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	u32 := func(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }
	cases := []struct {
		name  string
		send  []byte
		login bool   // log in properly first
		want  string // SQLSTATE of the ErrorResponse, or "N" for a refused SSL/GSS request
	}{
		{"length shorter than its header", raw(u32(3)), false, "08P01"},
		{"length of two gigabytes", raw(u32(0x7fffffff), u32(196608)), false, "08P01"},
		{"protocol 9.9", raw(u32(8), u32(9<<16|9)), false, "0A000"},
		{"SSLRequest without TLS", raw(u32(8), u32(80877103)), false, "N"},
		{"GSSENCRequest", raw(u32(8), u32(80877104)), false, "N"},
		{"no user", startup(map[string]string{"database": "postgres"}), false, "28000"},
		{"another database", startup(map[string]string{"user": "postgres", "database": "elsewhere"}), false, "3D000"},
		{"replication", startup(map[string]string{"user": "postgres", "database": "postgres", "replication": "true"}), false, "0A000"},
		{"unknown message type", raw([]byte{'z'}, u32(4)), true, "08P01"},
		{"message length below 4", raw([]byte{'Q'}, u32(2)), true, "08P01"},
		{"oversize message", raw([]byte{'Q'}, u32(2<<20)), true, "54000"},
	}
	proxyURL := fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", pgtest.SuperuserPassword, proxyAddr)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c net.Conn
			var fe *pgproto3.Frontend
			if tc.login {
				// A real client logs in; then the test takes over its socket.
				pc, err := pgconn.Connect(context.Background(), proxyURL)
				must(t, err)
				h, err := pc.Hijack()
				must(t, err)
				c, fe = h.Conn, h.Frontend
			} else {
				var err error
				c, err = net.DialTimeout("tcp", proxyAddr, 5*time.Second)
				must(t, err)
				fe = pgproto3.NewFrontend(c, c)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			_, err := c.Write(tc.send)
			must(t, err)
			if tc.want == "N" {
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil || b[0] != 'N' {
					t.Fatalf("answer %q, %v; want N", b, err)
				}
				return
			}
			code := readErrorCode(t, fe)
			if code != tc.want {
				t.Fatalf("SQLSTATE %q, want %q", code, tc.want)
			}
		})
	}
	for _, auth := range []struct{ name, url string }{
		{"wrong password", fmt.Sprintf("postgres://postgres:not-the-password@%s/postgres?sslmode=disable", proxyAddr)},
		{"unknown user", fmt.Sprintf("postgres://nobody:pw@%s/postgres?sslmode=disable", proxyAddr)},
	} {
		t.Run(auth.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := pgconn.Connect(ctx, auth.url)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("want 28P01, got %v", err)
			}
		})
	}
	// The proxy still serves a proper client afterwards.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, proxyURL)
	must(t, err)
	defer pc.Close(ctx)
	if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("query after bad input: %v", err)
	}
}

func readErrorCode(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("no answer: the proxy hung on bad input")
			}
			t.Fatalf("connection ended without an ErrorResponse: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			return e.Code
		}
	}
}

// TestSlowHTTPClients: clients that send half a request and stall (slowloris) neither block
// other clients nor keep their connections: the server closes them.
func TestSlowHTTPClients(t *testing.T) {
	clearPoolEnv(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--db.max-connections=2", "--db.min-connections=1")
	var stalled []net.Conn
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		partial := "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
		if i%2 == 1 { // headers done, body promised and never sent
			partial = "POST /api/database/warmup HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"conn"
		}
		if _, err := io.WriteString(c, partial); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d with 50 stalled clients\n%s", code, logs.String())
	}
	if code, body := get(t, "http://"+addr+"/metrics"); code != http.StatusOK || !strings.Contains(body, "pgsidecar_pool_connections") {
		t.Fatalf("/metrics = %d with 50 stalled clients", code)
	}
	// The server ends each stalled connection (after its read timeouts); the bound only
	// catches a connection kept forever.
	for i, c := range stalled {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("stalled client %d: the server did not close the connection: %v", i, err)
		}
	}
}

// TestListenFailures: a listen address that cannot work names its flag. One that is wrong in
// itself exits 2 like any bad setting; one in use exits 1, since a restart can succeed once the
// other process lets go.
func TestListenFailures(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer taken.Close()
	inUse := taken.Addr().String()
	cases := []struct {
		name string
		args []string
		code int
		want []string // all in the output
	}{
		{"web address in use", []string{"--web.listen-address=" + inUse}, 1, []string{"--web.listen-address: listen tcp " + inUse + ": bind: address already in use"}},
		{"web address without port", []string{"--web.listen-address=127.0.0.1"}, 2, []string{"--web.listen-address: listen tcp: address 127.0.0.1: missing port in address"}},
		{"web unknown port", []string{"--web.listen-address=127.0.0.1:metrics"}, 2, []string{"--web.listen-address: listen tcp: lookup tcp/metrics: unknown port"}},
		{"web vsock address without port", []string{"--web.listen-address=vsock://2"}, 2, []string{"--web.listen-address: vsock://2: a vsock address is vsock://[CID]:PORT"}},
		{"web vsock port a name", []string{"--web.listen-address=vsock://:http"}, 2, []string{"--web.listen-address: vsock://:http: a vsock address is vsock://[CID]:PORT"}},
		{"systemd socket none passed", []string{"--web.systemd-socket"}, 2, []string{"--web.systemd-socket: systemd passed no listening socket"}},
		{"web second address in use", []string{"--web.listen-address=127.0.0.1:0", "--web.listen-address=" + inUse}, 1, []string{"--web.listen-address: ", "address already in use"}},
		{"proxy address in use", []string{"--web.listen-address=127.0.0.1:0", "--proxy.listen-address=" + inUse}, 1, []string{"--proxy.listen-address: ", inUse, "address already in use"}},
		{"proxy address without port", []string{"--web.listen-address=127.0.0.1:0", "--proxy.listen-address=127.0.0.1"}, 2, []string{"--proxy.listen-address: ", "address 127.0.0.1: missing port in address"}},
		{"proxy socket directory missing", []string{"--web.listen-address=127.0.0.1:0", "--proxy.listen-address=/nonexistent/dir/.s.PGSQL.6432"}, 2, []string{"--proxy.listen-address: ", "listen unix /nonexistent/dir/.s.PGSQL.6432: bind: no such file or directory"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearPoolEnv(t)
			t.Setenv("DATABASE_URL", "postgres://app:topsecret1@127.0.0.1:1/pos?sslmode=disable")
			var out, errOut testutil.LogBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			code := run(ctx, append([]string{"--db.metrics-log-interval=0"}, tc.args...), &out, &errOut)
			if ctx.Err() != nil {
				t.Fatalf("the failure did not stop the program\n%s", errOut.String())
			}
			if code != tc.code {
				t.Fatalf("exit code %d, want %d\n%s", code, tc.code, errOut.String())
			}
			for _, want := range tc.want {
				if !strings.Contains(errOut.String(), want) {
					t.Fatalf("output does not say %q:\n%s", want, errOut.String())
				}
			}
			if strings.Contains(errOut.String()+out.String(), "topsecret1") {
				t.Fatal("output leaks the password")
			}
		})
	}
}

// TestStartupFilesThatWouldBlock: a FIFO or a device given as a configuration file is refused
// at once, naming the flag, rather than hanging start-up or filling memory.
func TestStartupFilesThatWouldBlock(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	must(t, syscall.Mkfifo(fifo, 0o600))
	// The proxy's files are read when it starts; a FIFO there hung start-up. The other file of
	// the TLS pair is a regular one, so the error is about the file under test.
	regular := filepath.Join(t.TempDir(), "regular.pem")
	must(t, os.WriteFile(regular, []byte("not PEM"), 0o600))
	proxyArgs := func(flag, path string) []string {
		args := []string{"--proxy.listen-address=127.0.0.1:0", flag + "=" + path}
		switch flag {
		case "--proxy.tls-cert-file":
			args = append(args, "--proxy.tls-key-file="+regular)
		case "--proxy.tls-key-file":
			args = append(args, "--proxy.tls-cert-file="+regular)
		}
		return args
	}
	for _, flag := range []string{"--env-file", "--queries.file", "--web.config.file", "--proxy.users-file",
		"--proxy.tls-cert-file", "--proxy.tls-key-file"} {
		for _, path := range []string{fifo, "/dev/zero"} {
			t.Run(flag+" "+filepath.Base(path), func(t *testing.T) {
				clearPoolEnv(t)
				t.Setenv("DATABASE_URL", "postgres://app:topsecret1@127.0.0.1:1/pos?sslmode=disable")
				out, err := os.CreateTemp(t.TempDir(), "out")
				must(t, err)
				args := []string{"--web.listen-address=127.0.0.1:0", flag + "=" + path}
				if strings.HasPrefix(flag, "--proxy.") {
					args = append([]string{"--web.listen-address=127.0.0.1:0"}, proxyArgs(flag, path)...)
				}
				p := startProcess(t, out, args...)
				code := p.exitCode(t, 10*time.Second)
				b, _ := os.ReadFile(out.Name())
				if code != 2 || !strings.Contains(string(b), flag+": ") || !strings.Contains(string(b), "not a regular file") {
					t.Fatalf("exit code %d, want 2 and a message naming %s:\n%s", code, flag, b)
				}
			})
		}
	}
}
