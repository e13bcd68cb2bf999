package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestSimpleAndExtendedQueries(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	var n int
	if err := c.QueryRow(ctx, "select 1 + $1::int", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("extended query: %d, %v", n, err)
	}
	if err := c.QueryRow(ctx, "select 40 + 2", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 42 {
		t.Fatalf("simple query: %d, %v", n, err)
	}
	// The client sees the server connection's settings and the proxy's own cancel key.
	if v := c.PgConn().ParameterStatus("server_version"); !strings.HasPrefix(v, "1") {
		t.Errorf("server_version = %q", v)
	}
	var backendPID uint32
	if err := c.QueryRow(ctx, "select pg_backend_pid()").Scan(&backendPID); err != nil {
		t.Fatal(err)
	}
	if c.PgConn().PID() == backendPID {
		t.Errorf("client got the server's backend PID %d as its cancel key", backendPID)
	}
}

// TestQueriesAreMeasured checks that every query a client runs lands once in the pool's query
// histogram, with its operation, and errors by SQLSTATE.
func TestQueriesAreMeasured(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	before := h.metric(t, "pgsidecar_query_duration_seconds", nil)
	if before != 0 {
		t.Fatalf("histogram not empty before the client ran queries: %v", before)
	}
	queries := 0
	run := func(sql string, args ...any) error {
		queries++
		_, err := c.Exec(ctx, sql, args...)
		return err
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(run("create temporary table m (id int primary key, v text)"))
	for i := range 5 {
		must(run("insert into m values ($1, 'x')", i)) // extended, cached statement
	}
	must(run("update m set v = 'y' where id = 1", pgx.QueryExecModeSimpleProtocol))
	must(run("select * from m", pgx.QueryExecModeExec))
	must(run("delete from m where id = $1", pgx.QueryExecModeDescribeExec, 2))
	if err := run("insert into m values (1, 'dup')"); sqlState(err) != "23505" {
		t.Fatalf("duplicate insert: %v", err)
	}
	if err := run("select 1/0", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "22012" {
		t.Fatalf("division by zero: %v", err)
	}
	got := h.metric(t, "pgsidecar_query_duration_seconds", nil)
	if int(got) != queries {
		t.Errorf("histogram count = %v, want %d (queries the client ran)", got, queries)
	}
	for op, want := range map[string]float64{"insert": 6, "update": 1, "select": 2, "delete": 1, "create": 1} {
		if got := h.metric(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": op}); got != want {
			t.Errorf("operation %s: %v queries, want %v", op, got, want)
		}
	}
	for code, want := range map[string]float64{"23505": 1, "22012": 1} {
		if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": code}); got != want {
			t.Errorf("errors with SQLSTATE %s = %v, want %v", code, got, want)
		}
	}
	if s := h.mgr.Stats().Queries; int(s.Count) != queries || s.Errors != 2 {
		t.Errorf("Manager.Stats().Queries = %d queries, %d errors; want %d, 2", s.Count, s.Errors, queries)
	}
	if in, out := h.metric(t, "pgsidecar_proxy_bytes_total", map[string]string{"direction": "in"}),
		h.metric(t, "pgsidecar_proxy_bytes_total", map[string]string{"direction": "out"}); in == 0 || out == 0 {
		t.Errorf("bytes in=%v out=%v", in, out)
	}
}

func TestPipelinedSyncs(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	p := c.PgConn().StartPipeline(ctx)
	for i := range 3 {
		p.SendQueryParams("select $1::int", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil)
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		res, err := p.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		rr := res.(*pgconn.ResultReader).Read()
		if rr.Err != nil || len(rr.Rows) != 1 || string(rr.Rows[0][0]) != fmt.Sprint(i) {
			t.Fatalf("result %d: %+v", i, rr)
		}
		if res, err := p.GetResults(); err != nil || res != nil {
			if _, ok := res.(*pgconn.PipelineSync); !ok {
				t.Fatalf("expected sync %d: %T %v", i, res, err)
			}
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := h.metric(t, "pgsidecar_query_duration_seconds", map[string]string{"operation": "select"}); got != 3 {
		t.Errorf("select count = %v, want 3 (one per Sync)", got)
	}
	// A pgx batch: several statements in one pipeline.
	b := &pgx.Batch{}
	b.Queue("select 1")
	b.Queue("select 2")
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAuthentication(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	// A role whose SCRAM verifier comes from the server itself, so the proxy checks what
	// PostgreSQL would.
	if err := cluster.Exec(ctx, "create role proxy_scram login password 'scram-pw-1'"); err != nil && sqlState(err) != "42710" {
		t.Fatal(err)
	}
	verifier, err := queryString(ctx, "select rolpassword from pg_authid where rolname = 'proxy_scram'")
	if err != nil || !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Fatalf("verifier: %q %v", verifier, err)
	}
	usersFile := filepath.Join(t.TempDir(), "users.txt")
	content := fmt.Sprintf("; comment\n\"plain\" \"plain-pw\"\n\"hashed\" \"md5%s\"\n\"proxy_scram\" \"%s\"\n",
		md5hex("hashed-pw"+"hashed"), verifier)
	if err := os.WriteFile(usersFile, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadUsers(usersFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5} {
		t.Run(string(method), func(t *testing.T) {
			h := newHarness(t, func(_ *pool.Config, c *Config) { c.Auth = method; c.Users = users })
			ok := []struct{ user, pw string }{{"plain", "plain-pw"}, {"proxy_scram", "scram-pw-1"}}
			if method == AuthMD5 {
				ok = append(ok, struct{ user, pw string }{"hashed", "hashed-pw"})
			}
			for _, u := range ok {
				c := h.connect(t, ctx, h.url(u.user, u.pw, ""))
				if err := c.Ping(ctx); err != nil {
					t.Errorf("%s: %v", u.user, err)
				}
				_ = c.Close(ctx)
			}
			for _, u := range []struct{ user, pw string }{{"plain", "wrong"}, {"nobody", "plain-pw"}, {"proxy_scram", "scram-pw-2"}} {
				_, err := pgx.Connect(ctx, h.url(u.user, u.pw, ""))
				if sqlState(err) != "28P01" {
					t.Errorf("%s with a wrong password: %v, want 28P01", u.user, err)
				}
				if err != nil && strings.Contains(err.Error(), u.pw) {
					t.Errorf("error shows the password: %v", err)
				}
			}
			if got := h.metric(t, "pgsidecar_proxy_auth_failures_total", nil); got != 3 {
				t.Errorf("auth failures = %v, want 3", got)
			}
			if strings.Contains(h.log.String(), "plain-pw") || strings.Contains(h.log.String(), "scram-pw") {
				t.Errorf("logs show a password:\n%s", h.log.String())
			}
			h.waitIdle(t)
		})
	}
	t.Run("database_url_credentials", func(t *testing.T) {
		h := newHarness(t, nil)
		_, err := pgx.Connect(ctx, h.url("postgres", "not-the-password", ""))
		if sqlState(err) != "28P01" {
			t.Fatalf("wrong password: %v, want 28P01", err)
		}
		c := h.connect(t, ctx, h.superURL())
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("trust_on_loopback_and_unix_socket", func(t *testing.T) {
		h := newHarness(t, func(_ *pool.Config, c *Config) { c.Auth = AuthTrust })
		for _, url := range []string{
			h.url("postgres", "anything", ""),
			fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", h.sock, h.port),
		} {
			c := h.connect(t, ctx, url)
			if err := c.Ping(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func queryString(ctx context.Context, sql string) (string, error) {
	c, err := pgx.Connect(ctx, cluster.URL(""))
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	var s string
	err = c.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

func TestWrongDatabase(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := pgx.Connect(ctx, strings.Replace(h.superURL(), "/postgres?", "/other?", 1))
	if sqlState(err) != "3D000" {
		t.Fatalf("connect to another database: %v, want 3D000", err)
	}
}

func TestPoolExhaustedGets53300(t *testing.T) {
	h := newHarness(t, func(pc *pool.Config, _ *Config) {
		pc.MaxConns, pc.MinConns = 1, 1
		pc.ConnectTimeout = 300 * time.Millisecond
	})
	ctx := ctxTimeout(t, 30*time.Second)
	first := h.connect(t, ctx, h.superURL())
	_, err := pgx.Connect(ctx, h.superURL())
	if sqlState(err) != "53300" {
		t.Fatalf("second client while the only connection is taken: %v, want 53300", err)
	}
	if !strings.Contains(err.Error(), "DB_CONNECTION_TIMEOUT") {
		t.Errorf("error does not name the setting: %v", err)
	}
	_ = first.Close(ctx)
	h.waitIdle(t)
	c := h.connect(t, ctx, h.superURL())
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if h.metric(t, "pgsidecar_proxy_client_wait_seconds", nil) != 3 {
		t.Errorf("wait histogram count = %v, want 3", h.metric(t, "pgsidecar_proxy_client_wait_seconds", nil))
	}
}

// TestSessionReset checks that a session's state does not leak into the next one on the same
// server connection, and that the pool's own pgx use of that connection still works.
func TestSessionReset(t *testing.T) {
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.MaxConns, pc.MinConns = 1, 1 })
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.mgr.Pool().Exec(ctx, "create table if not exists reset_t (v int)"); err != nil {
		t.Fatal(err)
	}
	var pid1, pid2 int
	c := h.connect(t, ctx, h.url("postgres", pgtest.SuperuserPassword, "application_name=first"))
	for _, sql := range []string{
		"select pg_backend_pid()",
		"set search_path = nowhere",
		"create temporary table tmp_t (v int)",
		"prepare p1 as select 1",
		"listen somewhere",
		"begin",
		"insert into public.reset_t values (1)",
	} {
		if sql == "select pg_backend_pid()" {
			if err := c.QueryRow(ctx, sql).Scan(&pid1); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var app string
	if err := c.QueryRow(ctx, "show application_name", pgx.QueryExecModeSimpleProtocol).Scan(&app); err != nil || app != "first" {
		t.Errorf("application_name = %q, %v", app, err)
	}
	_ = c.Close(ctx) // mid-transaction
	h.waitIdle(t)
	if got := h.metric(t, "pgsidecar_proxy_transactions_total", map[string]string{"outcome": "abandoned"}); got != 1 {
		t.Errorf("abandoned transactions = %v, want 1", got)
	}

	// The pool's own pgx statement cache must not point at statements DISCARD ALL dropped.
	for range 3 {
		var n int
		if err := h.mgr.Pool().QueryRow(ctx, "select count(*) from reset_t where v = $1", 1).Scan(&n); err != nil || n != 0 {
			t.Fatalf("pool query after a proxied session: %d, %v (the abandoned insert must be rolled back)", n, err)
		}
	}

	c2 := h.connect(t, ctx, h.superURL())
	if err := c2.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid1 != pid2 {
		t.Fatalf("second session got backend %d, first had %d: the connection was not reused", pid2, pid1)
	}
	checks := map[string]string{
		"show search_path": `"$user", public`,
		"select count(*)::text from pg_prepared_statements where name = 'p1'": "0",
		"select count(*)::text from pg_listening_channels()":                  "0",
		"select count(*)::text from pg_class where relname = 'tmp_t'":         "0",
		"select (current_setting('application_name') <> 'first')::text":       "true",
	}
	for sql, want := range checks {
		var got string
		if err := c2.QueryRow(ctx, sql, pgx.QueryExecModeSimpleProtocol).Scan(&got); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", sql, got, err, want)
		}
	}
}

func TestCopyInAndOut(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.connect(t, ctx, h.superURL())
	if _, err := c.Exec(ctx, "create temporary table cp (id int, v text)"); err != nil {
		t.Fatal(err)
	}
	const rows = 20000
	n, err := c.CopyFrom(ctx, pgx.Identifier{"cp"}, []string{"id", "v"}, pgx.CopyFromSlice(rows, func(i int) ([]any, error) {
		return []any{i, strings.Repeat("v", i%100)}, nil
	}))
	if err != nil || n != rows {
		t.Fatalf("CopyFrom: %d, %v", n, err)
	}
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf, "copy cp to stdout")
	if err != nil || tag.RowsAffected() != rows {
		t.Fatalf("CopyTo: %v, %v", tag, err)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != rows {
		t.Errorf("copied out %d lines, want %d", lines, rows)
	}
	// COPY FROM STDIN with bad data fails cleanly and the session goes on.
	_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tx\n"), "copy cp from stdin")
	if sqlState(err) != "22P02" {
		t.Fatalf("bad copy: %v, want 22P02", err)
	}
	var count int
	if err := c.QueryRow(ctx, "select count(*) from cp").Scan(&count); err != nil || count != rows {
		t.Fatalf("count after failed copy: %d, %v", count, err)
	}
}

func TestListenNotify(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	listener := h.connect(t, ctx, h.superURL())
	if _, err := listener.Exec(ctx, "listen proxy_chan"); err != nil {
		t.Fatal(err)
	}
	notifier := h.connect(t, ctx, h.superURL())
	if _, err := notifier.Exec(ctx, "select pg_notify('proxy_chan', 'hello')"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	if err != nil || n.Channel != "proxy_chan" || n.Payload != "hello" {
		t.Fatalf("notification: %+v, %v", n, err)
	}
	// Notices come through too.
	var notices []string
	var mu sync.Mutex
	cfg, _ := pgx.ParseConfig(h.superURL())
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { mu.Lock(); notices = append(notices, n.Message); mu.Unlock() }
	nc, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close(ctx)
	if _, err := nc.Exec(ctx, "do $$ begin raise notice 'proxied notice'; end $$"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || notices[0] != "proxied notice" {
		t.Errorf("notices = %q", notices)
	}
}

func TestCancelRequest(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.connect(t, ctx, h.superURL())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(60)")
		errc <- err
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'")
		return n == 1
	}) {
		t.Fatal("the query never started")
	}
	// pgconn sends the cancel to the address it is connected to (the proxy) with the key the
	// proxy gave it.
	if err := c.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if sqlState(err) != "57014" {
			t.Fatalf("canceled query: %v, want 57014", err)
		}
	case <-ctx.Done():
		t.Fatal("query was not canceled")
	}
	var n int
	if err := c.QueryRow(ctx, "select 1").Scan(&n); err != nil || n != 1 {
		t.Fatalf("session after cancel: %v", err)
	}
	if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "57014"}); got != 1 {
		t.Errorf("57014 errors = %v, want 1", got)
	}
	if got := h.metric(t, "pgsidecar_proxy_cancel_requests_total", nil); got != 1 {
		t.Errorf("cancel requests = %v, want 1", got)
	}
}

func TestLargeMessages(t *testing.T) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.MaxMessageSize = 4 << 20 })
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.connect(t, ctx, h.superURL())
	// Rows far larger than the relay's buffers, both ways.
	var s string
	if err := c.QueryRow(ctx, "select repeat('x', 20*1024*1024)").Scan(&s); err != nil || len(s) != 20<<20 {
		t.Fatalf("large row: %d, %v", len(s), err)
	}
	big := strings.Repeat("y", 3<<20)
	var l int
	if err := c.QueryRow(ctx, "select length($1::text)", big).Scan(&l); err != nil || l != len(big) {
		t.Fatalf("large parameter: %d, %v", l, err)
	}
	if err := c.QueryRow(ctx, "select length('"+big+"')", pgx.QueryExecModeSimpleProtocol).Scan(&l); err != nil || l != len(big) {
		t.Fatalf("large query text: %d, %v", l, err)
	}
	// Past the limit: the client gets 54000 and is closed; its server connection is not reused.
	huge := strings.Repeat("z", 5<<20)
	_, err := c.Exec(ctx, "select length($1::text)", huge)
	if sqlState(err) != "54000" {
		t.Fatalf("message over the limit: %v, want 54000", err)
	}
	h.waitIdle(t)
	c2 := h.connect(t, ctx, h.superURL())
	if err := c2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestTransactionsByOutcome(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	for _, script := range [][]string{
		{"begin", "select 1", "commit"},
		{"begin", "select 1", "commit"},
		{"begin", "select 1", "rollback"},
		{"begin", "select 1/0", "rollback"},
	} {
		for _, sql := range script {
			_, _ = c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		}
	}
	for outcome, want := range map[string]float64{"commit": 2, "rollback": 1, "error": 1, "abandoned": 0} {
		if got := h.metric(t, "pgsidecar_proxy_transactions_total", map[string]string{"outcome": outcome}); got != want {
			t.Errorf("%s = %v, want %v", outcome, got, want)
		}
	}
}

func TestSlowQueryLogged(t *testing.T) {
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.SlowQueryThreshold = 50 * time.Millisecond })
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	if _, err := c.Exec(ctx, "select pg_sleep(0.1), $1::text", "secret-bind-value"); err != nil {
		t.Fatal(err)
	}
	// The text shown is normalised: constants are placeholders, so a password spelt in any way
	// PostgreSQL accepts is not shown.
	if _, err := c.Exec(ctx, "select pg_sleep(0.1), $$dollar-quoted-secret$$", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	slow := h.mgr.SlowQueries()
	if len(slow) != 2 || slow[1].SQL != "select pg_sleep($2), $1::text" || slow[1].Operation != "select" ||
		slow[0].SQL != "select pg_sleep($1), $2" {
		t.Fatalf("slow queries = %+v", slow)
	}
	logs := h.log.String()
	if !strings.Contains(logs, "Slow query detected") || strings.Contains(logs, "secret-bind-value") ||
		strings.Contains(logs, "dollar-quoted-secret") {
		t.Errorf("slow query log missing or shows a bind value or constant:\n%s", logs)
	}
}

func TestTLS(t *testing.T) {
	cert := selfSigned(t)
	h := newHarness(t, func(_ *pool.Config, c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, strings.Replace(h.superURL(), "sslmode=disable", "sslmode=require", 1))
	if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("connection is %T, want TLS", c.PgConn().Conn())
	}
	var n int
	if err := c.QueryRow(ctx, "select 7").Scan(&n); err != nil || n != 7 {
		t.Fatal(err)
	}
	// Without TLS configured the proxy declines SSLRequest and prefer falls back to plaintext.
	h2 := newHarness(t, nil)
	c2 := h2.connect(t, ctx, strings.Replace(h2.superURL(), "sslmode=disable", "sslmode=prefer", 1))
	if _, ok := c2.PgConn().Conn().(*tls.Conn); ok {
		t.Fatal("TLS without a certificate")
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestServerKilledMidTransaction kills the backend under a client in a transaction: the client
// gets FATAL 08006 and is closed, the dead connection leaves the pool, and new clients work once
// the server is back.
func TestServerKilledMidTransaction(t *testing.T) {
	cluster.RequireControl(t)
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.MaxConns, pc.MinConns = 2, 1 })
	ctx := ctxTimeout(t, 90*time.Second)
	c := h.connect(t, ctx, h.superURL())
	var pid int
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	// Kill it while a query is running, so that the query is in flight for certain.
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(60)")
		errc <- err
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where pid = $1 and query = 'select pg_sleep(60)' and state = 'active'", pid)
		return n == 1
	}) {
		t.Fatal("the query never started")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill backend %d: %v", pid, err)
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		t.Fatal("the client was left hanging")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "FATAL" {
		t.Fatalf("query on a killed server connection: %v, want FATAL 08006", err)
	}
	if !c.IsClosed() {
		t.Error("client connection still open after FATAL")
	}
	h.waitIdle(t)
	if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "08006"}); got != 1 {
		t.Errorf("08006 query errors = %v, want 1 (the query in flight)", got)
	}
	if strings.Contains(h.log.String(), pgtest.SuperuserPassword) {
		t.Errorf("logs show the password:\n%s", h.log.String())
	}
	if got := h.metric(t, "pgsidecar_proxy_transactions_total", map[string]string{"outcome": "error"}); got != 1 {
		t.Errorf("transactions with outcome error = %v, want 1 (the one the kill ended)", got)
	}
	if h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil) != 1 {
		t.Errorf("server connections lost = %v, want 1", h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil))
	}
	// The postmaster restarts after a backend crash; clients get in again once it is back.
	var ok bool
	pgtest.WaitFor(30*time.Second, func() bool {
		c2, err := pgx.Connect(ctx, h.superURL())
		if err != nil {
			return false
		}
		defer c2.Close(ctx)
		var n int
		var p2 int
		ok = c2.QueryRow(ctx, "select 1, pg_backend_pid()").Scan(&n, &p2) == nil && p2 != pid
		return ok
	})
	if !ok {
		t.Fatalf("no working session after the server came back\nlogs:\n%s", h.log.String())
	}
}

// TestTLSModes connects pgx clients with each sslmode to a proxy in each TLS mode: allow serves
// both, disable declines TLS even with a certificate, and require refuses plaintext TCP logins
// with PostgreSQL's FATAL 28000 while prefer clients get TLS and unix socket clients still log in.
func TestTLSModes(t *testing.T) {
	cert := selfSigned(t)
	ctx := ctxTimeout(t, 60*time.Second)
	type want struct {
		tls  bool   // the session runs over TLS
		code string // or the login fails with this SQLSTATE ("-" for a client-side error)
	}
	for _, tc := range []struct {
		mode  TLSMode
		modes map[string]want // by client sslmode
	}{
		{TLSAllow, map[string]want{"disable": {}, "allow": {}, "prefer": {tls: true}, "require": {tls: true}}},
		{TLSDisable, map[string]want{"disable": {}, "allow": {}, "prefer": {}, "require": {code: "-"}}},
		// allow tries plaintext first and, refused, TLS.
		{TLSRequire, map[string]want{"disable": {code: "28000"}, "allow": {tls: true}, "prefer": {tls: true}, "require": {tls: true}}},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			h := newHarness(t, func(_ *pool.Config, c *Config) {
				c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
				c.TLSMode = tc.mode
			})
			for sslmode, w := range tc.modes {
				url := strings.Replace(h.superURL(), "sslmode=disable", "sslmode="+sslmode, 1)
				c, err := pgx.Connect(ctx, url)
				if w.code != "" {
					if err == nil {
						_ = c.Close(ctx)
						t.Fatalf("sslmode=%s: logged in, want an error %s", sslmode, w.code)
					}
					if w.code != "-" && sqlState(err) != w.code {
						t.Fatalf("sslmode=%s: %v, want %s", sslmode, err, w.code)
					}
					t.Logf("sslmode=%s: %v", sslmode, err)
					if w.code == "28000" {
						const want = `no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "postgres", no encryption`
						var pgErr *pgconn.PgError
						if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || pgErr.Message != want {
							t.Fatalf("sslmode=%s: %v, want FATAL %s", sslmode, err, want)
						}
					}
					continue
				}
				if err != nil {
					t.Fatalf("sslmode=%s: %v\nlogs:\n%s", sslmode, err, h.log.String())
				}
				_, isTLS := c.PgConn().Conn().(*tls.Conn)
				var n int
				qerr := c.QueryRow(ctx, "select 7").Scan(&n)
				_ = c.Close(ctx)
				if isTLS != w.tls || qerr != nil || n != 7 {
					t.Fatalf("sslmode=%s: tls=%v, query %v (%d); want tls=%v", sslmode, isTLS, qerr, n, w.tls)
				}
			}
			// Unix socket clients are never refused for want of TLS.
			c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres password=%s dbname=postgres sslmode=disable",
				h.sock, h.port, pgtest.SuperuserPassword))
			if err != nil {
				t.Fatalf("unix socket client: %v", err)
			}
			_ = c.Close(ctx)
		})
	}
}

// TestTrustOnNonLoopbackWarns: trust on a wildcard address gets one warning per such address,
// naming the flag; loopback and unix socket addresses get none.
func TestTrustOnNonLoopbackWarns(t *testing.T) {
	sock := filepath.Join(t.TempDir(), ".s.PGSQL.1")
	h := newHarness(t, func(_ *pool.Config, c *Config) {
		c.Auth = AuthTrust
		c.Listen = []string{"0.0.0.0:0", "127.0.0.1:0", sock}
	})
	var warnings []string
	for _, line := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(line, "non-loopback") {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "level=WARN") || !strings.Contains(warnings[0], "address=0.0.0.0:") ||
		!strings.Contains(warnings[0], "--proxy.auth-method=trust") {
		t.Fatalf("want one WARN naming 0.0.0.0 and --proxy.auth-method, got %q\nlogs:\n%s", warnings, h.log.String())
	}
}

// TestAuthFailureLogThrottled: 200 failed logins count 200 in the metric but log one line in
// full and one summary with the other 199.
func TestAuthFailureLogThrottled(t *testing.T) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.AuthFailureLogInterval = time.Minute })
	ctx := ctxTimeout(t, 120*time.Second)
	const n = 200
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, n)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				c, err := pgconn.Connect(ctx, h.url("postgres", "not-the-password", ""))
				if err == nil {
					_ = c.Close(ctx)
				}
				errs <- err
			}
		}()
	}
	start := time.Now()
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	t.Logf("%d failed logins in %s", n, time.Since(start))
	for err := range errs {
		if sqlState(err) != "28P01" {
			t.Fatalf("login with a wrong password: %v, want 28P01", err)
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_auth_failures_total", nil); got != n {
		t.Errorf("auth failures metric = %v, want %d", got, n)
	}
	_ = h.srv.Close() // logs the pending summary
	var lines []string
	for _, line := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(line, "Proxy authentication failed") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "user=postgres") || !strings.Contains(lines[1], fmt.Sprintf("suppressed=%d", n-1)) {
		t.Fatalf("want the first failure and a summary of %d suppressed, got %d lines:\n%s", n-1, len(lines), strings.Join(lines, "\n"))
	}
}
