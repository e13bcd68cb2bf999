package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestPauseQueuesNewTransactions: a pause lets a transaction under way finish, queues a new
// one (without failing it) and closes the server connections once none is out; the resume
// runs the queued statement. The metrics show the pause, the queue and the time paused.
func TestPauseQueuesNewTransactions(t *testing.T) {
	h := newTxHarness(t, 4, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	inTx := h.pgconnect(t, ctx, "")
	later := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, inTx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	type pauseOut struct {
		r   PauseResult
		err error
	}
	paused := make(chan pauseOut, 1)
	go func() {
		r, err := h.srv.Pause(ctx, 10*time.Second)
		paused <- pauseOut{r, err}
	}()
	if !pgtest.WaitFor(5*time.Second, h.srv.Paused) {
		t.Fatal("not paused")
	}
	queued := make(chan error, 1)
	go func() {
		v, err := simple(ctx, later, "SELECT 42")
		if err == nil && v != "42" {
			err = errors.New("got " + v)
		}
		queued <- err
	}()
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.metric(t, "pgsidecar_proxy_paused_clients", nil) == 1 }) {
		t.Fatal("the new transaction is not queued")
	}
	// The transaction under way goes on while the pause waits for it.
	if v, err := simple(ctx, inTx, "SELECT 2"); err != nil || v != "2" {
		t.Fatalf("statement in the transaction under way: %q %v", v, err)
	}
	select {
	case p := <-paused:
		t.Fatalf("the pause took effect with a transaction open: %+v", p)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := simple(ctx, inTx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	p := <-paused
	if p.err != nil || p.r.Queued != 1 || p.r.Waited <= 0 {
		t.Fatalf("pause: %+v %v", p.r, p.err)
	}
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.metric(t, "pgsidecar_proxy_server_connections", nil) == 0 }) {
		t.Fatal("the server connections stayed open while paused")
	}
	if h.metric(t, "pgsidecar_proxy_paused", nil) != 1 {
		t.Fatal("pgsidecar_proxy_paused is not 1")
	}
	select {
	case err := <-queued:
		t.Fatalf("the queued statement ended while paused: %v", err)
	default:
	}
	r := h.srv.Resume()
	if !r.WasPaused || r.Released != 1 {
		t.Fatalf("resume: %+v", r)
	}
	if err := <-queued; err != nil {
		t.Fatalf("the queued statement: %v", err)
	}
	if h.metric(t, "pgsidecar_proxy_paused", nil) != 0 || h.metric(t, "pgsidecar_proxy_paused_seconds_total", nil) <= 0 {
		t.Fatal("paused metrics after the resume")
	}
}

// TestPauseTimeout: a client idle in a transaction for the whole pause timeout fails the pause,
// which names it and resumes by itself.
func TestPauseTimeout(t *testing.T) {
	h := newTxHarness(t, 4, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	inTx := h.pgconnect(t, ctx, "application_name=holder")
	if _, err := simple(ctx, inTx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	r, err := h.srv.Pause(ctx, 300*time.Millisecond)
	if !errors.Is(err, ErrPauseTimeout) || len(r.Holders) != 1 || r.Holders[0].User != "postgres" || r.Waited < 300*time.Millisecond {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if h.srv.Paused() {
		t.Fatal("still paused after the timeout")
	}
	other := h.pgconnect(t, ctx, "")
	if v, err := simple(ctx, other, "SELECT 3"); err != nil || v != "3" {
		t.Fatalf("a new transaction after the failed pause: %q %v", v, err)
	}
	if _, err := simple(ctx, inTx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
}

// queueBehindPause pauses the proxy and sends c a query, which the pause queues; the query's
// outcome comes on the channel once the pause ends.
func queueBehindPause(t *testing.T, ctx context.Context, h *harness, c *pgconn.PgConn) <-chan error {
	t.Helper()
	if _, err := h.srv.Pause(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := simple(ctx, c, "SELECT 1")
		done <- err
	}()
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.metric(t, "pgsidecar_proxy_paused_clients", nil) == 1 }) {
		t.Fatal("not queued")
	}
	return done
}

// TestCancelQueuedRequest: a CancelRequest for a request a pause queued answers 57014 in-band;
// the client stays connected and runs its next statement after the resume.
func TestCancelQueuedRequest(t *testing.T) {
	h := newTxHarness(t, 4, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.pgconnect(t, ctx, "")
	done := queueBehindPause(t, ctx, h, c)
	if err := c.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := <-done; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("the canceled request: %v, want 57014", err)
	}
	h.srv.Resume()
	if v, err := simple(ctx, c, "SELECT 5"); err != nil || v != "5" {
		t.Fatalf("after the resume: %q %v", v, err)
	}
}

// TestReconnectAfterTransaction: Reconnect leaves a transaction under way on its server
// connection and replaces that connection after it; an idle connection is replaced at once.
func TestReconnectAfterTransaction(t *testing.T) {
	h := newTxHarness(t, 4, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	inTx := h.pgconnect(t, ctx, "")
	idle := h.pgconnect(t, ctx, "")
	txPid, err := simple(ctx, inTx, "BEGIN; SELECT pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	idlePid, err := simple(ctx, idle, "SELECT pg_backend_pid()") // on another connection, idle after
	if err != nil {
		t.Fatal(err)
	}
	// The client has its answer before the connection's reader gives the connection back.
	if !pgtest.WaitFor(5*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}) == 1
	}) {
		t.Fatal("the idle client's server connection was not given back")
	}
	r := h.srv.Reconnect()
	if r.Replacing != 1 || r.Closed < 1 {
		t.Fatalf("reconnect: %+v", r)
	}
	if pid, err := simple(ctx, inTx, "SELECT pg_backend_pid()"); err != nil || pid != txPid {
		t.Fatalf("inside the transaction: backend %s (%v), want %s", pid, err, txPid)
	}
	if _, err := simple(ctx, inTx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgconn.PgConn{inTx, idle} {
		pid, err := simple(ctx, c, "SELECT pg_backend_pid()")
		if err != nil || pid == txPid || pid == idlePid {
			t.Fatalf("after the reconnect: backend %s (%v), old ones %s and %s", pid, err, txPid, idlePid)
		}
	}
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, pid := range []string{txPid, idlePid} {
		if !pgtest.WaitFor(5*time.Second, func() bool {
			n, err := cluster.QueryInt(ctx2, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+pid)
			return err == nil && n == 0
		}) {
			t.Fatalf("backend %s still runs after the reconnect", pid)
		}
	}
}

// TestPauseSessionMode: in session mode a session holds its server connection until logout, so
// a pause waits for logouts (and fails while a session stays), and a login during the pause
// waits for the resume.
func TestPauseSessionMode(t *testing.T) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = PoolSession })
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	if r, err := h.srv.Pause(ctx, 200*time.Millisecond); !errors.Is(err, ErrPauseTimeout) || len(r.Holders) != 1 {
		t.Fatalf("pause with a session logged in: %+v %v", r, err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.Pause(ctx, 5*time.Second); err != nil {
		t.Fatalf("pause after the logout: %v", err)
	}
	type login struct {
		c   *pgconn.PgConn
		err error
	}
	logged := make(chan login, 1)
	go func() {
		c, err := pgconn.Connect(ctx, h.superURL())
		logged <- login{c, err}
	}()
	if !pgtest.WaitFor(5*time.Second, func() bool { return h.metric(t, "pgsidecar_proxy_paused_clients", nil) == 1 }) {
		t.Fatal("the login is not queued")
	}
	h.srv.Resume()
	l := <-logged
	if l.err != nil {
		t.Fatalf("the queued login: %v", l.err)
	}
	defer l.c.Close(context.Background())
	if v, err := simple(ctx, l.c, "SELECT 7"); err != nil || v != "7" {
		t.Fatalf("after the resume: %q %v", v, err)
	}
}
