package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// sendNoSync sends Parse, Bind and Execute of sql with no Sync, as a client that leaves in the
// middle of a batch does, and waits until the proxy holds a server connection for it.
func sendNoSync(t *testing.T, h *harness, c *pgconn.PgConn, sql string) {
	t.Helper()
	fe := c.Frontend()
	fe.Send(&pgproto3.Parse{Query: sql})
	fe.Send(&pgproto3.Bind{})
	fe.Send(&pgproto3.Execute{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestTxModeMidBatchDisconnectFreesConnection: a client that sends a batch without its Sync and
// leaves gives its server connection back at once, with the batch's work rolled back; the
// server-connection gauges stay true to the one connection.
func TestTxModeMidBatchDisconnectFreesConnection(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	b := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, b, "create table if not exists midbatch (n int); truncate midbatch"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		a := h.pgconnect(t, ctx, "")
		sendNoSync(t, h, a, "insert into midbatch values (1)")
		time.Sleep(50 * time.Millisecond) // the proxy holds the connection for a
		_ = a.Conn().Close()
		qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		got, err := simple(qctx, b, "select count(*) from midbatch")
		cancel()
		if err != nil || got != "0" {
			t.Fatalf("round %d: query after a client left mid-batch: %q, %v (the insert must be rolled back, the connection free)", i, got, err)
		}
		if n := h.metric(t, "pgsidecar_proxy_server_connections", nil); n > 1 {
			t.Fatalf("round %d: %v server connections counted, pool of 1", i, n)
		}
	}
	_ = b.Close(ctx)
	h.waitIdle(t)
	if n := h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}); n != 0 {
		t.Errorf("active server connections at rest: %v", n)
	}
}

// TestTxModeGaugesUnderDisconnects is a property test: clients leave at random points (in the
// middle of a batch, of a transaction, of a COPY, after an error, or cleanly) over a pool of
// two. The server-connection gauges never go negative nor count more than the pool, the proxy
// never holds more server sessions than DB_MAX_CONNECTIONS, and at rest no connection is active.
func TestTxModeGaugesUnderDisconnects(t *testing.T) {
	const maxConns = 2
	h := newTxHarness(t, maxConns, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	setup := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, setup, "create table if not exists leave_copy (n int)"); err != nil {
		t.Fatal(err)
	}
	_ = setup.Close(ctx)

	stopSessions := serverSessions(t)
	sampling := make(chan struct{})
	sampled := make(chan error, 1)
	go func() {
		var bad error
		over := 0
		for {
			select {
			case <-sampling:
				sampled <- bad
				return
			case <-time.After(2 * time.Millisecond):
			}
			active := h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"})
			idle := h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "idle"})
			// The two gauges are read one after the other: a connection moving between them
			// may be seen in both once, so only a sum over the pool that lasts counts.
			if active+idle > maxConns {
				over++
			} else {
				over = 0
			}
			if bad == nil && (active < 0 || idle < 0 || active > maxConns || idle > maxConns || over >= 3) {
				bad = fmt.Errorf("server connection gauges active=%v idle=%v with a pool of %d", active, idle, maxConns)
			}
		}
	}()

	leaves := []func(c *pgconn.PgConn) error{
		func(c *pgconn.PgConn) error { // mid-batch
			fe := c.Frontend()
			fe.Send(&pgproto3.Parse{Query: "select pg_sleep(0.01)"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			return fe.Flush()
		},
		func(c *pgconn.PgConn) error { // mid-transaction
			_, err := simple(ctx, c, "begin; select 1")
			return err
		},
		func(c *pgconn.PgConn) error { // during COPY FROM STDIN
			fe := c.Frontend()
			fe.Send(&pgproto3.Query{String: "copy leave_copy from stdin"})
			fe.Send(&pgproto3.CopyData{Data: []byte("1\n")})
			return fe.Flush()
		},
		func(c *pgconn.PgConn) error { // after an error in a transaction
			_, _ = simple(ctx, c, "begin")
			_, err := simple(ctx, c, "select 1/0")
			if sqlState(err) != "22012" {
				return fmt.Errorf("select 1/0: %v", err)
			}
			return nil
		},
		func(c *pgconn.PgConn) error { // after an error in a batch, before its Sync
			fe := c.Frontend()
			fe.Send(&pgproto3.Parse{Query: "select 1/0"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Parse{Query: "select 1"})
			return fe.Flush()
		},
		func(c *pgconn.PgConn) error { // mid-query
			c.Exec(ctx, "select pg_sleep(0.05)")
			return nil
		},
		func(c *pgconn.PgConn) error { // cleanly
			_, err := simple(ctx, c, "select 1")
			return err
		},
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	seeds := make([]int, 40)
	for i := range seeds {
		seeds[i] = rng.IntN(len(leaves))
	}
	t.Logf("leave points: %v", seeds)
	var wg sync.WaitGroup
	errs := make(chan error, len(seeds))
	sem := make(chan struct{}, 4)
	for i, k := range seeds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := pgconn.Connect(ctx, h.superURL())
			if err != nil {
				errs <- fmt.Errorf("client %d: connect: %w", i, err)
				return
			}
			if err := leaves[k](c); err != nil {
				errs <- fmt.Errorf("client %d (leave %d): %w", i, k, err)
			}
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			_ = c.Conn().Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every connection is usable again, in time.
	c := h.pgconnect(t, ctx, "")
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if got, err := simple(qctx, c, "select 42"); err != nil || got != "42" {
		t.Errorf("query after the clients left: %q, %v", got, err)
	}
	cancel()
	_ = c.Close(ctx)
	h.waitIdle(t)
	close(sampling)
	if err := <-sampled; err != nil {
		t.Error(err)
	}
	if peak := stopSessions(); peak > maxConns {
		t.Errorf("%d server sessions at once, DB_MAX_CONNECTIONS is %d", peak, maxConns)
	}
	if n := h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}); n != 0 {
		t.Errorf("active server connections at rest: %v", n)
	}
}

// TestTxModeGaugeWhenLeftConnectionFails: a server connection that fails after its client left
// (here a frozen backend that cannot take the cancel nor the rollback within the reset timeout)
// leaves the active gauge.
func TestTxModeGaugeWhenLeftConnectionFails(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.ResetTimeout = 300 * time.Millisecond })
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	pid, err := simple(ctx, a, "begin; select pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(pid)
	if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
		t.Skipf("cannot stop the backend: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(p, syscall.SIGCONT) })
	a.Exec(ctx, "select 1")
	time.Sleep(50 * time.Millisecond)
	_ = a.Conn().Close()
	if !pgtest.WaitFor(5*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}) == 0
	}) {
		t.Fatalf("active server connections after the dropped one: %v, want 0",
			h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}))
	}
	_ = syscall.Kill(p, syscall.SIGCONT)
	b := h.pgconnect(t, ctx, "")
	if got, err := simple(ctx, b, "select 42"); err != nil || got != "42" {
		t.Fatalf("query on a new connection: %q, %v", got, err)
	}
	_ = b.Close(ctx)
	h.waitIdle(t)
	if n := h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}); n != 0 {
		t.Errorf("active server connections at rest: %v", n)
	}
}

// TestTxModeWaitTimeoutInBand: a request that waits --proxy.query-wait-timeout for a server
// connection fails with ERROR 53300, a simple Query and an extended batch alike, and the client
// stays connected: its next request runs once a connection is free.
func TestTxModeWaitTimeoutInBand(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.QueryWaitTimeout = 200 * time.Millisecond })
	ctx := ctxTimeout(t, 30*time.Second)
	b := h.pgconnect(t, ctx, "")
	a := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "begin; select 1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := simple(ctx, b, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || pgErr.Severity != "ERROR" {
		t.Fatalf("query while the only connection is in a transaction: %v, want ERROR 53300", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
		t.Errorf("waited %s, want about the 200ms query wait timeout", d)
	}
	res := b.ExecParams(ctx, "select $1::int", [][]byte{[]byte("7")}, nil, nil, nil).Read()
	if sqlState(res.Err) != "53300" {
		t.Fatalf("extended query while the only connection is in a transaction: %v, want 53300", res.Err)
	}
	if b.IsClosed() || b.TxStatus() != 'I' {
		t.Fatalf("client closed (%v) or not idle (%c) after the in-band errors", b.IsClosed(), b.TxStatus())
	}
	if _, err := simple(ctx, a, "commit"); err != nil {
		t.Fatal(err)
	}
	if got, err := simple(ctx, b, "select 42"); err != nil || got != "42" {
		t.Fatalf("query once the connection is free: %q, %v", got, err)
	}
	if got, err := execParams(ctx, b, "select $1::int", "7"); err != nil || got != "7" {
		t.Fatalf("extended query once the connection is free: %q, %v", got, err)
	}
	if n := h.metric(t, "pgsidecar_proxy_wait_timeouts_total", nil); n != 2 {
		t.Errorf("wait timeouts counted: %v, want 2", n)
	}
}

func execParams(ctx context.Context, c *pgconn.PgConn, sql, arg string) (string, error) {
	res := c.ExecParams(ctx, sql, [][]byte{[]byte(arg)}, nil, nil, nil).Read()
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) != 1 {
		return "", fmt.Errorf("%d rows", len(res.Rows))
	}
	return string(res.Rows[0][0]), nil
}

// TestOversizedMessageErrorArrives: a client that sends a message over --proxy.max-message-size
// and more after it (as a pipelining client does) reads the proxy's 54000 before the close, in
// both pool modes.
func TestOversizedMessageErrorArrives(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, func(_ *pool.Config, c *Config) {
				c.PoolMode = mode
				c.MaxMessageSize = 64 << 10
			})
			ctx := ctxTimeout(t, 30*time.Second)
			c := h.pgconnect(t, ctx, "")
			msg := (&pgproto3.Query{String: strings.Repeat("x", 1<<20)})
			b, _ := msg.Encode(nil)
			b, _ = (&pgproto3.Sync{}).Encode(b)
			b, _ = (&pgproto3.Query{String: "select 1"}).Encode(b)
			conn := c.Conn()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(b); err != nil {
				t.Fatalf("write: %v", err)
			}
			// pgconn returns an ErrorResponse as its error.
			var err error
			for err == nil {
				_, err = c.ReceiveMessage(ctx)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "54000" || pgErr.Severity != "FATAL" {
				t.Fatalf("reading the proxy's answer: %v, want FATAL 54000", err)
			}
			if !pgtest.WaitFor(5*time.Second, func() bool {
				return strings.Contains(h.log.String(), "message over --proxy.max-message-size")
			}) {
				t.Errorf("the close is not logged")
			}
		})
	}
}

// TestTxModeIdleTransactionTimeout: a client idle in a transaction longer than
// --proxy.idle-transaction-timeout gets FATAL 25P03, its transaction is rolled back and its
// server connection serves the next client; a client whose query runs that long is not idle.
func TestTxModeIdleTransactionTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.IdleTransactionTimeout = timeout })
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "create table if not exists idle_tx (n int); truncate idle_tx"); err != nil {
		t.Fatal(err)
	}
	// Busy, not idle: a query longer than the timeout, then requests in quick succession.
	if _, err := simple(ctx, a, "begin; select pg_sleep(0.5)"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		time.Sleep(timeout / 2)
		if _, err := simple(ctx, a, "insert into idle_tx values (1)"); err != nil {
			t.Fatalf("client active in its transaction: %v", err)
		}
	}
	time.Sleep(3 * timeout)
	_, err := simple(ctx, a, "commit")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25P03" || pgErr.Severity != "FATAL" {
		t.Fatalf("commit after idling in the transaction: %v, want FATAL 25P03", err)
	}
	b := h.pgconnect(t, ctx, "")
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if got, err := simple(qctx, b, "select count(*) from idle_tx"); err != nil || got != "0" {
		t.Fatalf("after the idle client was ended: %q, %v (want its transaction rolled back)", got, err)
	}
	if n := h.metric(t, "pgsidecar_proxy_idle_transaction_timeouts_total", nil); n != 1 {
		t.Errorf("idle transaction timeouts counted: %v, want 1", n)
	}
	if !strings.Contains(h.log.String(), "idle in a transaction") {
		t.Errorf("the close is not logged")
	}
}

// TestTxModeLoginWithoutServerConnection: a client logs in while every server connection is
// held, with the server's parameters and its own startup settings reported; its first query
// waits and fails in-band, and once a connection is free its settings are in force there.
func TestTxModeLoginWithoutServerConnection(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.QueryWaitTimeout = 300 * time.Millisecond })
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "begin; select 1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	b, err := pgconn.Connect(lctx, h.url("postgres", pgtest.SuperuserPassword, "application_name=bee&timezone=Asia/Tokyo"))
	if err != nil {
		t.Fatalf("login while the only server connection is held: %v", err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	t.Logf("logged in in %s", time.Since(start))
	for name, want := range map[string]string{"application_name": "bee", "TimeZone": "Asia/Tokyo",
		"server_encoding": "UTF8", "client_encoding": "UTF8", "integer_datetimes": "on",
		"standard_conforming_strings": "on", "DateStyle": "", "IntervalStyle": "", "is_superuser": "",
		"session_authorization": "", "server_version": ""} {
		got := b.ParameterStatus(name)
		if got == "" || want != "" && got != want {
			t.Errorf("ParameterStatus %s = %q, want %q", name, got, want)
		}
	}
	if _, err := simple(ctx, b, "select 1"); sqlState(err) != "53300" {
		t.Fatalf("first query while the connection is held: %v, want 53300 in-band", err)
	}
	if _, err := simple(ctx, a, "commit"); err != nil {
		t.Fatal(err)
	}
	if got, err := simple(ctx, b, "select current_setting('application_name') || ' ' || current_setting('timezone')"); err != nil || got != "bee Asia/Tokyo" {
		t.Fatalf("settings on the first checkout: %q, %v", got, err)
	}
	// A bad startup setting still fails the login when a connection is free to check it on
	// (b's answer can reach it a moment before its connection is back in the set).
	if !pgtest.WaitFor(5*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}) == 0
	}) {
		t.Fatal("the server connection is still active after the last answer")
	}
	bad, err := pgconn.Connect(ctx, h.url("postgres", pgtest.SuperuserPassword, "options=-c%20statement_timeout%3Dbanana"))
	if err == nil {
		_ = bad.Close(ctx)
		t.Fatal("login with statement_timeout=banana succeeded")
	}
}

// TestTxModeDeadIdleConnectionReplaced: a server connection that dies while idle in the set
// never reaches a client: the next login and query get a working one.
func TestTxModeDeadIdleConnectionReplaced(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	pid, err := simple(ctx, a, "select pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Close(ctx)
	direct, err := pgconn.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	if _, err := simple(ctx, direct, "select pg_terminate_backend("+pid+", 5000)"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b := h.pgconnect(t, ctx, "")
		if got, err := simple(ctx, b, "select 42"); err != nil || got != "42" {
			t.Fatalf("round %d: query after the idle server connection died: %q, %v", i, got, err)
		}
		_ = b.Close(ctx)
	}
}

// TestTxModeWaiterGetsRoomOfLostConnection: a client waiting for the only server connection gets
// a new one as soon as that connection is lost, not after its wait runs out.
func TestTxModeWaiterGetsRoomOfLostConnection(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.QueryWaitTimeout = 30 * time.Second })
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	pid, err := simple(ctx, a, "begin; select pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	b := h.pgconnect(t, ctx, "")
	done := make(chan error, 1)
	start := time.Now()
	go func() { _, err := simple(ctx, b, "select 1"); done <- err }()
	if !pgtest.WaitFor(5*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_client_connections", map[string]string{"state": "waiting"}) == 1
	}) {
		t.Fatal("the second client is not waiting")
	}
	admin, err := pgx.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "select pg_terminate_backend("+pid+")"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("waiting client: %v", err)
		}
		t.Logf("the waiting client got a connection %v after it asked", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting client still waits 10 s after the only server connection was lost")
	}
}
