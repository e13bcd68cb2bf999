package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// hangGrace is how long past its deadline a call may run before the test calls it a hang. The
// machine is too noisy for timing assertions; this only tells "slow" from "stuck".
const hangGrace = 15 * time.Second

// hangGuard runs fn with a context of the given deadline and fails the test if fn has not
// returned hangGrace after it. It returns how long fn took, for the log.
func hangGuard(t *testing.T, deadline time.Duration, fn func(ctx context.Context) error) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(deadline + hangGrace):
		t.Fatalf("call still running %s past its %s deadline", hangGrace, deadline)
		return 0, nil
	}
}

// connectWithin connects through the proxy with a deadline, guarded against hangs.
func connectWithin(t *testing.T, url string, deadline time.Duration) (*pgx.Conn, time.Duration, error) {
	t.Helper()
	var c *pgx.Conn
	took, err := hangGuard(t, deadline, func(ctx context.Context) error {
		var err error
		c, err = pgx.Connect(ctx, url)
		return err
	})
	if err == nil {
		t.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	return c, took, err
}

// selectWithin runs SELECT want on c with a deadline and checks the answer.
func selectWithin(t *testing.T, c *pgx.Conn, deadline time.Duration, want int) (time.Duration, error) {
	t.Helper()
	return hangGuard(t, deadline, func(ctx context.Context) error {
		var v int
		if err := c.QueryRow(ctx, fmt.Sprintf("SELECT %d", want)).Scan(&v); err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("got %d, want %d", v, want)
		}
		return nil
	})
}

// TestStalledNetworkThroughProxy puts a fault proxy between the pool and the server: proxied
// clients must get answers or clear errors within their deadlines, never hang, and the proxy
// must give its server connections back and serve again once the network is back.
func TestStalledNetworkThroughProxy(t *testing.T) {
	fp, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer fp.Close()
	const connectTimeout = time.Second
	h := newHarness(t, func(pc *pool.Config, c *Config) {
		pc.DatabaseURL = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", pgtest.SuperuserPassword, fp.Port())
		pc.MaxConns, pc.MinConns = 4, 1
		pc.ConnectTimeout = connectTimeout
		pc.HealthCheckInterval = time.Second
		pc.HealthCheckTimeout = 500 * time.Millisecond
		pc.RetryAttempts = 1
		pc.ApplicationName = "proxy-stall"
		c.ResetTimeout = 500 * time.Millisecond
	})
	if !pgtest.WaitFor(hangGrace, func() bool { return h.mgr.Health().Status == pool.StatusHealthy }) {
		t.Fatalf("pool not healthy: %+v", h.mgr.Health())
	}

	// (a) Added latency: slower, still correct.
	fp.SetLatency(20 * time.Millisecond)
	a, _, err := connectWithin(t, h.superURL(), 10*time.Second)
	if err != nil {
		t.Fatalf("connect with latency: %v", err)
	}
	if _, err := selectWithin(t, a, 10*time.Second, 5); err != nil {
		t.Fatalf("query with latency: %v", err)
	}
	fp.SetLatency(0)

	// (b) Black hole under a client mid-session: its query ends at the client's own deadline.
	fp.SetMode(faultproxy.BlackHole)
	took, err := selectWithin(t, a, time.Second, 6)
	if !pgconn.Timeout(err) {
		t.Fatalf("query through a black hole: %v, want the client's deadline", err)
	}
	t.Logf("black-holed query: %v after %s", err, took)
	// The session's server connection cannot be reset through the black hole (the cancel and
	// the reset each wait ResetTimeout): it must be discarded and its pool slot freed.
	start := time.Now()
	select {
	case <-a.PgConn().CleanupDone(): // pgconn's background close, which sends a cancel through the proxy
	case <-time.After(hangGrace):
		t.Fatal("the timed-out client's close hangs")
	}
	if !pgtest.WaitFor(hangGrace, func() bool { return h.mgr.Stats().UsedConns == 0 }) {
		t.Fatalf("the timed-out session still holds its server connection: %+v\nlogs:\n%s", h.mgr.Stats(), h.log.String())
	}
	t.Logf("pool connection released %s after the client's error", time.Since(start))
	if !pgtest.WaitFor(hangGrace, func() bool { return h.mgr.Health().Status == pool.StatusUnhealthy }) {
		t.Fatalf("black hole not detected: %+v", h.mgr.Health())
	}
	// A new client gets a clear error from the proxy after DB_CONNECTION_TIMEOUT, not a hang
	// (its own deadline is far later, so a timeout here means the proxy never answered).
	_, took, err = connectWithin(t, h.superURL(), connectTimeout+10*time.Second)
	t.Logf("new client while black-holed: %v after %s", err, took)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "FATAL" ||
		!strings.Contains(pgErr.Message, "cannot connect to the database within DB_CONNECTION_TIMEOUT") {
		t.Fatalf("new client while black-holed: %v, want FATAL 08006 naming DB_CONNECTION_TIMEOUT", err)
	}
	if strings.Contains(err.Error(), pgtest.SuperuserPassword) {
		t.Fatalf("error shows the password: %v", err)
	}

	// (c) Resets: a client with an open session learns on its next query that it is over.
	fp.SetMode(faultproxy.Pass)
	var b *pgx.Conn
	if !pgtest.WaitFor(hangGrace, func() bool {
		b, _, err = connectWithin(t, h.superURL(), 5*time.Second)
		return err == nil
	}) {
		t.Fatalf("no session after the black hole ended: %v\nlogs:\n%s", err, h.log.String())
	}
	if _, err := selectWithin(t, b, 5*time.Second, 7); err != nil {
		t.Fatal(err)
	}
	lost := h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil)
	fp.SetMode(faultproxy.Refuse)
	took, err = selectWithin(t, b, 5*time.Second, 8)
	t.Logf("query after the reset: %v after %s", err, took)
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "FATAL" {
		t.Fatalf("query after its server connection was reset: %v, want FATAL 08006", err)
	}
	if got := h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil); got != lost+1 {
		t.Errorf("server connections lost = %v, want %v", got, lost+1)
	}

	// (d) Network back: new clients work again, and no session is left holding a connection.
	fp.SetMode(faultproxy.Pass)
	start = time.Now()
	if !pgtest.WaitFor(30*time.Second, func() bool {
		c, _, err := connectWithin(t, h.superURL(), 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close(context.Background())
		_, err = selectWithin(t, c, 5*time.Second, 9)
		return err == nil
	}) {
		t.Fatalf("proxied clients did not recover\nlogs:\n%s", h.log.String())
	}
	t.Logf("clients served again %s after the network came back", time.Since(start))
	_ = b.Close(context.Background())
	h.waitIdle(t)
	// Every server session left is one the pool holds: the faults leaked none.
	if !pgtest.WaitFor(hangGrace, func() bool {
		return cluster.Sessions(t, "proxy-stall") == int64(h.mgr.Stats().TotalConns)
	}) {
		t.Fatalf("server sessions %d, pool connections %d", cluster.Sessions(t, "proxy-stall"), h.mgr.Stats().TotalConns)
	}
	if strings.Contains(h.log.String(), pgtest.SuperuserPassword) {
		t.Errorf("logs show the password:\n%s", h.log.String())
	}
}

// TestServerConnectionLimitThroughProxy has the server itself refuse connections (a role at its
// CONNECTION LIMIT): a proxied client that cannot get one must hear 53300, as from the server,
// in bounded time and without the password, and clients must work again once one is free.
func TestServerConnectionLimitThroughProxy(t *testing.T) {
	const role, password = "proxy_limited", "proxy-limited-pw-7"
	ctx := ctxTimeout(t, 60*time.Second)
	if err := cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN PASSWORD '%s' CONNECTION LIMIT 1", role, role, password)); err != nil {
		t.Fatal(err)
	}
	const connectTimeout = 3 * time.Second // room for several refused attempts on a slow machine
	h := newHarness(t, func(pc *pool.Config, _ *Config) {
		pc.DatabaseURL = cluster.URLFor(role, password, "postgres")
		pc.MaxConns, pc.MinConns = 4, 0
		pc.ConnectTimeout = connectTimeout
		pc.HealthCheckInterval = time.Second
		pc.HealthCheckTimeout = 500 * time.Millisecond
	})
	url := h.url(role, password, "") // the proxy checks clients against DATABASE_URL's user

	// The pool may briefly hold the one allowed connection for a health check: allow retries.
	var first *pgx.Conn
	var err error
	if !pgtest.WaitFor(hangGrace, func() bool {
		first, _, err = connectWithin(t, url, 5*time.Second)
		return err == nil
	}) {
		t.Fatalf("first client: %v\nlogs:\n%s", err, h.log.String())
	}
	if _, err := selectWithin(t, first, 5*time.Second, 1); err != nil {
		t.Fatal(err)
	}

	rejected := h.metric(t, "pgsidecar_proxy_client_errors_total", map[string]string{"sqlstate": "53300"})
	second, took, err := connectWithin(t, url, connectTimeout+10*time.Second)
	if err == nil {
		_ = second.Close(ctx)
		t.Fatal("second client got a session past the role's connection limit")
	}
	t.Logf("second client: %v after %s", err, took)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || pgErr.Severity != "FATAL" ||
		!strings.Contains(pgErr.Message, "DB_CONNECTION_TIMEOUT") || !strings.Contains(pgErr.Message, "too many connections") {
		t.Fatalf("second client: %v, want FATAL 53300 with the server's reason", err)
	}
	if strings.Contains(err.Error(), password) || strings.Contains(h.log.String(), password) {
		t.Fatalf("error or logs show the password: %v\nlogs:\n%s", err, h.log.String())
	}
	if got := h.metric(t, "pgsidecar_proxy_client_errors_total", map[string]string{"sqlstate": "53300"}); got != rejected+1 {
		t.Errorf("proxy errors with 53300 = %v, want %v", got, rejected+1)
	}

	// Once the first client leaves, the next one gets a session.
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitIdle(t)
	var third *pgx.Conn
	if !pgtest.WaitFor(hangGrace, func() bool {
		third, _, err = connectWithin(t, url, 5*time.Second)
		return err == nil
	}) {
		t.Fatalf("no session after the first client left: %v\nlogs:\n%s", err, h.log.String())
	}
	if _, err := selectWithin(t, third, 5*time.Second, 3); err != nil {
		t.Fatalf("third client: %v", err)
	}
}

// TestSilentConnectionsDoNotLockOutClients fills both bounds with TCP connections that never
// send a startup packet: a real client must still log in and query at once (the oldest silent
// connection makes room), and every silent one is closed by the startup timeout.
func TestSilentConnectionsDoNotLockOutClients(t *testing.T) {
	const startupTimeout = 2 * time.Second
	h := newHarness(t, func(_ *pool.Config, c *Config) {
		c.MaxClients, c.MaxStartup = 5, 5
		c.StartupTimeout = startupTimeout
	})
	addr := fmt.Sprintf("127.0.0.1:%d", h.port)
	var silent []net.Conn
	for range 5 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	if !pgtest.WaitFor(hangGrace, func() bool {
		return h.metric(t, "pgsidecar_proxy_client_connections", map[string]string{"state": "authenticating"}) == 5
	}) {
		t.Fatal("silent connections not accepted")
	}
	start := time.Now()
	for i := range 2 {
		c, took, err := connectWithin(t, h.superURL(), startupTimeout/2)
		if err != nil {
			t.Fatalf("real client %d with the startup bound full: %v after %s\nlogs:\n%s", i, err, took, h.log.String())
		}
		if _, err := selectWithin(t, c, 5*time.Second, i); err != nil {
			t.Fatal(err)
		}
	}
	// Each silent connection ends by the startup timeout: the oldest two made room, the others
	// timed out.
	for i, c := range silent {
		_ = c.SetReadDeadline(start.Add(startupTimeout + hangGrace))
		_, err := c.Read(make([]byte, 1))
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("silent connection %d still open past the startup timeout: %v", i, err)
		}
	}
	if took := time.Since(start); took > startupTimeout+hangGrace {
		t.Fatalf("silent connections closed after %s", took)
	}
	if !strings.Contains(h.log.String(), "--proxy.max-startup-connections reached") {
		t.Errorf("no log line about the full startup bound:\n%s", h.log.String())
	}
}

// A client of a frozen server (SIGSTOP: the pool's connections are idle, nothing answers) gets
// 08006 saying the database cannot be reached, not 53300 blaming a full pool.
func TestFrozenServerThroughProxy(t *testing.T) {
	cluster.RequireControl(t)
	h := newHarness(t, func(pc *pool.Config, _ *Config) {
		pc.MaxConns, pc.MinConns = 8, 2
		pc.ConnectTimeout = time.Second
		pc.HealthCheckInterval = time.Hour // no check touches the idle connections
	})
	h.waitIdle(t)
	// Both minimum connections open (on a loaded machine the second may still be logging in),
	// then idle long enough that pgxpool pings them on acquire.
	if !pgtest.WaitFor(20*time.Second, func() bool {
		st := h.mgr.Stats()
		return st.IdleConns >= 2 && st.ConstructingConns == 0
	}) {
		t.Fatalf("the pool did not open its minimum connections: %+v", h.mgr.Stats())
	}
	time.Sleep(1100 * time.Millisecond)
	thaw, err := cluster.Freeze()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = thaw() }()
	c, took, err := connectWithin(t, h.superURL(), 20*time.Second)
	if err == nil {
		_ = c.Close(context.Background())
		t.Fatal("a client got a session on a frozen server")
	}
	t.Logf("client: %v after %s", err, took)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || !strings.Contains(pgErr.Message, "cannot connect to the database") {
		t.Fatalf("client of a frozen server: %v, want 08006 cannot connect to the database", err)
	}
	if got := h.metric(t, "pgsidecar_pool_acquire_timeouts_total", nil); got != 0 {
		t.Fatalf("acquire_timeouts_total = %v on a frozen server", got)
	}
}
