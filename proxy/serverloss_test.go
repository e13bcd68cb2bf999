package proxy

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// wantLost checks that err is an in-band ERROR (never the server's FATAL) with SQLSTATE code.
func wantLost(t *testing.T, what string, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code || pgErr.Severity != "ERROR" {
		t.Errorf("%s: %v, want ERROR %s", what, err, code)
	}
}

// receiveUntilReady reads a low-level client's messages up to its n-th ReadyForQuery, and
// returns them summed up: "E:code" for an error, "Z:status" for ReadyForQuery, the type name
// otherwise.
func receiveUntilReady(t *testing.T, fe *pgproto3.Frontend, n int) []string {
	t.Helper()
	var got []string
	for n > 0 {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive after %v: %v", got, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, "E:"+m.Code+":"+m.Severity)
		case *pgproto3.ReadyForQuery:
			got = append(got, "Z:"+string(m.TxStatus))
			n--
		default:
			got = append(got, fmt.Sprintf("%T", msg)[len("*pgproto3."):])
		}
	}
	return got
}

// TestRestartWithoutPauseKeepsTxClients restarts PostgreSQL (fast) under transaction-mode
// clients in every state: each keeps its session, gets PostgreSQL's answers to failed requests
// in-band, and its next transaction runs once the pool has reconnected; a pinned client is
// disconnected.
func TestRestartWithoutPauseKeepsTxClients(t *testing.T) {
	cluster.RequireControl(t)
	h := newTxHarness(t, 6, func(pc *pool.Config, _ *Config) { pc.ConnectTimeout = 60 * time.Second })
	ctx := ctxTimeout(t, 150*time.Second)
	if err := cluster.Exec(ctx, "drop table if exists restart_log; create table restart_log (i int)"); err != nil {
		t.Fatal(err)
	}

	idle := h.pgconnect(t, ctx, "")
	if _, err := idle.Prepare(ctx, "plus", "select $1::int + 1", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := execPrepared(ctx, idle, "plus", "1"); err != nil || got != "2" {
		t.Fatalf("prepared statement: %q, %v", got, err)
	}
	inTx := h.pgconnect(t, ctx, "")
	if _, err := inTx.Exec(ctx, "begin; insert into restart_log values (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	pinned := h.pgconnect(t, ctx, "options=-c%20"+requestPinOption+"%3Dsession")
	if _, err := simple(ctx, pinned, "select 1"); err != nil {
		t.Fatal(err)
	}

	// In flight: an autocommit statement; a pipeline of two extended-protocol segments; a
	// COPY FROM STDIN.
	flight := h.pgconnect(t, ctx, "")
	flightErr := make(chan error, 1)
	go func() {
		_, err := simple(ctx, flight, "select pg_sleep(60)")
		flightErr <- err
	}()
	pipe := h.pgconnect(t, ctx, "")
	pfe := pipe.Frontend()
	pfe.Send(&pgproto3.Parse{Query: "select pg_sleep(60)"})
	pfe.Send(&pgproto3.Bind{})
	pfe.Send(&pgproto3.Execute{})
	pfe.Send(&pgproto3.Sync{})
	pfe.Send(&pgproto3.Parse{Query: "insert into restart_log values (2)"})
	pfe.Send(&pgproto3.Bind{})
	pfe.Send(&pgproto3.Execute{})
	pfe.Send(&pgproto3.Sync{})
	if err := pfe.Flush(); err != nil {
		t.Fatal(err)
	}
	copier := h.pgconnect(t, ctx, "")
	cfe := copier.Frontend()
	cfe.Send(&pgproto3.Query{String: "copy restart_log from stdin"})
	if err := cfe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := cfe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.CopyInResponse); !ok {
		t.Fatalf("COPY answered %T", msg)
	}
	cfe.Send(&pgproto3.CopyData{Data: []byte("3\n")})
	if err := cfe.Flush(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'")
		return n == 2
	}) {
		t.Fatal("the statements in flight never started")
	}

	if err := cluster.Restart("fast"); err != nil {
		t.Fatal(err)
	}

	select {
	case err := <-flightErr:
		wantLost(t, "autocommit statement in flight", err, lostCode)
	case <-ctx.Done():
		t.Fatal("the client in flight was left hanging")
	}
	if s := flight.TxStatus(); s != 'I' {
		t.Errorf("after the statement in flight: status %c, want I", s)
	}
	if got, err := simple(ctx, flight, "select 1"); err != nil || got != "1" {
		t.Errorf("next statement of the client in flight: %q, %v", got, err)
	}

	// The first segment's Parse and Bind were answered before its Execute ran.
	want := []string{"ParseComplete", "BindComplete", "E:" + lostCode + ":ERROR", "Z:I", "E:" + lostCode + ":ERROR", "Z:I"}
	if got := receiveUntilReady(t, pfe, 2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pipeline in flight answered %v, want %v", got, want)
	}

	cfe.Send(&pgproto3.CopyData{Data: []byte("4\n")})
	cfe.Send(&pgproto3.CopyDone{})
	cfe.Send(&pgproto3.Query{String: "select 5"})
	if err := cfe.Flush(); err != nil {
		t.Fatal(err)
	}
	want = []string{"E:" + lostCode + ":ERROR", "Z:I", "RowDescription", "DataRow", "CommandComplete", "Z:I"}
	if got := receiveUntilReady(t, cfe, 2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("COPY in flight answered %v, want %v", got, want)
	}

	// Idle in a transaction: failed, then 25P02 until it ends, answered ROLLBACK.
	_, err := simple(ctx, inTx, "insert into restart_log values (5)")
	wantLost(t, "first statement of a lost transaction", err, lostCode)
	_, err = simple(ctx, inTx, "select 1")
	wantLost(t, "next statement of a lost transaction", err, abortedCode)
	_, err = simple(ctx, inTx, "rollback to savepoint a")
	wantLost(t, "ROLLBACK TO SAVEPOINT in a lost transaction", err, noSavepoint)
	_, err = simple(ctx, inTx, "release savepoint a")
	wantLost(t, "RELEASE in a lost transaction", err, noSavepoint)
	if s := inTx.TxStatus(); s != 'E' {
		t.Errorf("in a lost transaction: status %c, want E", s)
	}
	if got, err := simple(ctx, inTx, "commit"); err != nil || got != "ROLLBACK" {
		t.Errorf("COMMIT of a lost transaction: %q, %v; want ROLLBACK", got, err)
	}
	if got, err := simple(ctx, inTx, "select 6"); err != nil || got != "6" || inTx.TxStatus() != 'I' {
		t.Errorf("after the lost transaction: %q, %v, status %c", got, err, inTx.TxStatus())
	}

	// Idle: its prepared statement is prepared again on the new server connection.
	if got, err := execPrepared(ctx, idle, "plus", "41"); err != nil || got != "42" {
		t.Errorf("prepared statement after the restart: %q, %v", got, err)
	}

	// Pinned: its session state is gone with the server's, so it is disconnected.
	if _, err := simple(ctx, pinned, "select 1"); err == nil {
		t.Error("a pinned client's session went on after a restart")
	}

	if n, err := cluster.QueryInt(ctx, "select count(*) from restart_log"); err != nil || n != 0 {
		t.Errorf("restart_log has %d rows (%v): a request of the lost connection was replayed", n, err)
	}
}

// TestCommitInFlightLost: a COMMIT in flight when its server connection is terminated gets
// 08007 (whether it committed is unknown) and ReadyForQuery I, by the simple and the extended
// protocol; the client goes on.
func TestCommitInFlightLost(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	if err := cluster.Exec(ctx, `drop table if exists restart_commit;
		create table restart_commit (i int);
		create or replace function restart_commit_slow() returns trigger language plpgsql
			as $$ begin perform pg_sleep(60); return null; end $$;
		create constraint trigger slow after insert on restart_commit deferrable initially deferred
			for each row execute function restart_commit_slow()`); err != nil {
		t.Fatal(err)
	}
	c := h.pgconnect(t, ctx, "")
	for _, extended := range []bool{false, true} {
		pid, err := simple(ctx, c, "begin; insert into restart_commit values (1); select pg_backend_pid()")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			if extended {
				done <- c.ExecParams(ctx, "commit", nil, nil, nil, nil).Read().Err
				return
			}
			_, err := simple(ctx, c, "commit")
			done <- err
		}()
		if !pgtest.WaitFor(20*time.Second, func() bool {
			n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where pid = "+pid+" and query = 'commit' and state = 'active'")
			return n == 1
		}) {
			t.Fatal("the COMMIT never started")
		}
		if err := cluster.Exec(ctx, "select pg_terminate_backend("+pid+")"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			wantLost(t, fmt.Sprintf("COMMIT in flight (extended protocol: %v)", extended), err, lostCommitCode)
		case <-ctx.Done():
			t.Fatal("the client was left hanging")
		}
		if got, err := simple(ctx, c, "select 7"); err != nil || got != "7" || c.TxStatus() != 'I' {
			t.Errorf("after the COMMIT in flight: %q, %v, status %c", got, err, c.TxStatus())
		}
	}
}

// TestLostTransactionExtendedProtocol: a transaction lost with its server connection (the
// backend terminated while the client was idle in it), used through the extended protocol:
// the first request gets 08006, the next 25P02, and a prepared COMMIT or an unnamed ROLLBACK
// ends it, answered ROLLBACK.
func TestLostTransactionExtendedProtocol(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.pgconnect(t, ctx, "")
	for name, sql := range map[string]string{"val": "select $1::int", "done": "commit"} {
		if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
			t.Fatal(err)
		}
	}
	terminate := func() {
		t.Helper()
		pid, err := simple(ctx, c, "begin; select pg_backend_pid()")
		if err != nil {
			t.Fatal(err)
		}
		if err := cluster.Exec(ctx, "select pg_terminate_backend("+pid+")"); err != nil {
			t.Fatal(err)
		}
		if !pgtest.WaitFor(20*time.Second, func() bool {
			return h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil) > 0
		}) {
			t.Fatal("the proxy never saw the connection go")
		}
	}
	terminate()
	_, err := execPrepared(ctx, c, "val", "1")
	wantLost(t, "first request of the lost transaction", err, lostCode)
	_, err = execPrepared(ctx, c, "val", "2")
	wantLost(t, "next request", err, abortedCode)
	if s := c.TxStatus(); s != 'E' {
		t.Errorf("status %c, want E", s)
	}
	res := c.ExecPrepared(ctx, "done", nil, nil, nil).Read()
	if res.Err != nil || res.CommandTag.String() != "ROLLBACK" || c.TxStatus() != 'I' {
		t.Errorf("prepared COMMIT of the lost transaction: %q, %v, status %c", res.CommandTag, res.Err, c.TxStatus())
	}
	if got, err := execPrepared(ctx, c, "val", "3"); err != nil || got != "3" {
		t.Errorf("after the lost transaction: %q, %v", got, err)
	}

	terminate()
	_, err = execPrepared(ctx, c, "val", "4")
	wantLost(t, "first request of the second lost transaction", err, lostCode)
	res = c.ExecParams(ctx, "rollback", nil, nil, nil, nil).Read()
	if res.Err != nil || res.CommandTag.String() != "ROLLBACK" || c.TxStatus() != 'I' {
		t.Errorf("unnamed ROLLBACK of the lost transaction: %q, %v, status %c", res.CommandTag, res.Err, c.TxStatus())
	}
	if got, err := execPrepared(ctx, c, "val", "5"); err != nil || got != "5" {
		t.Errorf("after the second lost transaction: %q, %v", got, err)
	}
}

// TestDatabaseDownPastConnectionTimeout: a transaction-mode client whose next transaction finds
// the database down waits for it up to DB_CONNECTION_TIMEOUT while the proxy retries (refused
// connections, then 57P03 while it starts); past that it gets ERROR 08006 in-band and stays
// connected, and its next transaction runs once the server is back.
func TestDatabaseDownPastConnectionTimeout(t *testing.T) {
	cluster.RequireControl(t)
	patient := newTxHarness(t, 2, func(pc *pool.Config, _ *Config) { pc.ConnectTimeout = 60 * time.Second })
	hasty := newTxHarness(t, 2, func(pc *pool.Config, _ *Config) { pc.ConnectTimeout = time.Second })
	ctx := ctxTimeout(t, 90*time.Second)
	waits := patient.pgconnect(t, ctx, "")
	gives := hasty.pgconnect(t, ctx, "")
	for _, c := range []*pgconn.PgConn{waits, gives} {
		if _, err := simple(ctx, c, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cluster.StartAgain(); err != nil {
			t.Fatal(err)
		}
	}()
	waited := make(chan error, 1)
	go func() {
		got, err := simple(ctx, waits, "select 2")
		if err == nil && got != "2" {
			err = fmt.Errorf("got %q", got)
		}
		waited <- err
	}()
	_, err := simple(ctx, gives, "select 2")
	wantLost(t, "statement while the database is down", err, "08006")
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Errorf("statement that waited for the database: %v", err)
	}
	if got, err := simple(ctx, gives, "select 3"); err != nil || got != "3" {
		t.Errorf("once the database is back: %q, %v", got, err)
	}
}

// TestDeadPoolConnectionNotHandedOut: after every server session ended (a restart), the idle
// connections the pool kept, used too recently for pgxpool to ping them, are dead; a client's
// next transaction must get a live one, not an error.
func TestDeadPoolConnectionNotHandedOut(t *testing.T) {
	h := newTxHarness(t, 4, func(pc *pool.Config, _ *Config) { pc.MinConns = 4 })
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, c, "select 1"); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(20*time.Second, func() bool { return h.mgr.Pool().Stat().IdleConns() >= 2 }) {
		t.Fatal("the pool never warmed its connections")
	}
	// Touch the pool's idle connections, so that pgxpool hands them out without a ping.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = h.mgr.Pool().Exec(ctx, "select pg_sleep(0.05)")
		}()
	}
	wg.Wait()
	if err := cluster.Exec(ctx, `select pg_terminate_backend(pid) from pg_stat_activity
		where backend_type = 'client backend' and pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil) > 0 ||
			h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "idle"}) == 0
	}) {
		t.Fatal("the proxy never saw its connection go")
	}
	if got, err := simple(ctx, c, "select 2"); err != nil || got != "2" {
		t.Errorf("next transaction after every session ended: %q, %v", got, err)
	}
}

// TestLostTransactionThroughPgx: a pgx application's transaction whose backend is terminated:
// its statement fails with 08006, its Commit reports the rollback (pgx.ErrTxCommitRollback),
// and the same connection (its statement cache included) serves the next transaction.
func TestLostTransactionThroughPgx(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.connect(t, ctx, h.superURL())
	var n int
	if err := c.QueryRow(ctx, "select $1::int", 1).Scan(&n); err != nil {
		t.Fatal(err)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, fmt.Sprintf("select pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		return h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil) > 0
	}) {
		t.Fatal("the proxy never saw the connection go")
	}
	err = tx.QueryRow(ctx, "select $1::int", 2).Scan(&n)
	wantLost(t, "statement of the lost transaction", err, lostCode)
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("Commit of the lost transaction: %v, want pgx.ErrTxCommitRollback", err)
	}
	if err := c.QueryRow(ctx, "select $1::int", 3).Scan(&n); err != nil || n != 3 || c.IsClosed() {
		t.Errorf("next statement: %d, %v", n, err)
	}
}
