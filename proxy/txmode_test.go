package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// newTxHarness is a proxy in transaction mode over a pool of maxConns connections.
func newTxHarness(t testing.TB, maxConns int32, tweak func(pc *pool.Config, c *Config)) *harness {
	t.Helper()
	return newHarness(t, func(pc *pool.Config, c *Config) {
		c.PoolMode = PoolTransaction
		pc.MaxConns = maxConns
		pc.MinConns = 1
		if tweak != nil {
			tweak(pc, c)
		}
	})
}

// serverSessions samples the number of client backends on the test cluster (but the sampler's
// own) until stop is called, and returns the largest count seen.
func serverSessions(t testing.TB) (stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := pgx.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var n int64
			if err := c.QueryRow(ctx, `select count(*) from pg_stat_activity
				where backend_type = 'client backend' and pid <> pg_backend_pid()`).Scan(&n); err == nil && n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() int {
		cancel()
		<-done
		_ = c.Close(context.Background())
		return int(peak.Load())
	}
}

// TestTxModeSharesServerConnections: many pgx clients (default statement cache: named prepared
// statements) run transactions at once over two server connections.
func TestTxModeSharesServerConnections(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	setup := h.connect(t, ctx, h.superURL())
	if _, err := setup.Exec(ctx, "create table if not exists tx_counter (id int primary key, n int); insert into tx_counter values (1, 0) on conflict (id) do update set n = 0"); err != nil {
		t.Fatal(err)
	}
	stop := serverSessions(t)
	const clients, rounds = 20, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, h.superURL())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for j := range rounds {
				var got int
				if err := c.QueryRow(ctx, "select $1::int + $2::int", i, j).Scan(&got); err != nil || got != i+j {
					errs <- fmt.Errorf("client %d: select: %d, %v", i, got, err)
					return
				}
				err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, "update tx_counter set n = n + $1 where id = 1", 1)
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("client %d: tx: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	peak := stop()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int
	if err := setup.QueryRow(ctx, "select n from tx_counter where id = 1").Scan(&n); err != nil || n != clients*rounds {
		t.Errorf("counter = %d, %v; want %d", n, err, clients*rounds)
	}
	// The sampler's count includes the setup client's server connection while it holds one,
	// which is one of the pool's two.
	if peak > 2 {
		t.Errorf("%d server sessions at once, want at most 2", peak)
	}
	t.Logf("peak server sessions %d; prepared statement hits %v misses %v", peak,
		h.metric(t, "pgsidecar_proxy_prepared_statement_hits_total", nil), h.metric(t, "pgsidecar_proxy_prepared_statement_misses_total", nil))
}

// pgconnect opens a protocol-level connection through the proxy.
func (h *harness) pgconnect(t testing.TB, ctx context.Context, params string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(ctx, h.url("postgres", pgtest.SuperuserPassword, params))
	if err != nil {
		t.Fatalf("connect through proxy: %v\nlogs:\n%s", err, h.log.String())
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// execPrepared runs a prepared statement with one text parameter and returns the first column of
// its one row.
func execPrepared(ctx context.Context, c *pgconn.PgConn, name, arg string) (string, error) {
	res := c.ExecPrepared(ctx, name, [][]byte{[]byte(arg)}, nil, nil).Read()
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) != 1 {
		return "", fmt.Errorf("%d rows", len(res.Rows))
	}
	return string(res.Rows[0][0]), nil
}

func simple(ctx context.Context, c *pgconn.PgConn, sql string) (string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	return firstValue(res[len(res)-1])
}

// TestTxModePreparedStatements: each client's named statements are its own, whichever server
// connection runs them; a duplicate or unknown name is an in-band error that leaves the client
// connected; Close, DEALLOCATE and DISCARD ALL forget them.
func TestTxModePreparedStatements(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	b := h.pgconnect(t, ctx, "")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Prepare(ctx, "s1", "select ($1::int + 1)::text", nil))
	must(b.Prepare(ctx, "s1", "select ($1::int * 10)::text", nil))
	for i := range 5 {
		if got, err := execPrepared(ctx, a, "s1", fmt.Sprint(i)); err != nil || got != fmt.Sprint(i+1) {
			t.Fatalf("a s1(%d) = %q, %v", i, got, err)
		}
		if got, err := execPrepared(ctx, b, "s1", fmt.Sprint(i)); err != nil || got != fmt.Sprint(i*10) {
			t.Fatalf("b s1(%d) = %q, %v", i, got, err)
		}
	}
	// Duplicate: 42P05, in-band.
	if _, err := a.Prepare(ctx, "s1", "select 2", nil); sqlState(err) != "42P05" || !strings.Contains(err.Error(), `"s1" already exists`) {
		t.Fatalf("duplicate prepare: %v, want 42P05", err)
	}
	if got, err := execPrepared(ctx, a, "s1", "1"); err != nil || got != "2" {
		t.Fatalf("s1 after the duplicate: %q, %v", got, err)
	}
	// Unknown: 26000, in-band.
	if _, err := execPrepared(ctx, a, "nope", "1"); sqlState(err) != "26000" {
		t.Fatalf("unknown statement: %v, want 26000", err)
	}
	// A duplicate inside a transaction fails the transaction, as PostgreSQL does.
	must(simple(ctx, a, "begin"))
	if _, err := a.Prepare(ctx, "s1", "select 2", nil); sqlState(err) != "42P05" {
		t.Fatalf("duplicate prepare in a transaction: %v", err)
	}
	if a.TxStatus() != 'E' {
		t.Errorf("transaction status after the error = %c, want E", a.TxStatus())
	}
	if _, err := simple(ctx, a, "select 1"); sqlState(err) != "25P02" {
		t.Errorf("query in the failed transaction: %v, want 25P02", err)
	}
	must(simple(ctx, a, "rollback"))

	// Close (protocol), then DEALLOCATE name and DEALLOCATE ALL (SQL).
	if err := a.Deallocate(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := execPrepared(ctx, a, "s1", "1"); sqlState(err) != "26000" {
		t.Fatalf("s1 after Close: %v, want 26000", err)
	}
	must(a.Prepare(ctx, "s1", "select 'again'", nil))
	if tag, err := simple(ctx, a, "DEALLOCATE s1"); err != nil || tag != "DEALLOCATE" {
		t.Fatalf("DEALLOCATE s1: %q, %v", tag, err)
	}
	if _, err := execPrepared(ctx, a, "s1", "1"); sqlState(err) != "26000" {
		t.Fatalf("s1 after DEALLOCATE: %v, want 26000", err)
	}
	must(a.Prepare(ctx, "x1", "select ($1::int)::text", nil))
	must(a.Prepare(ctx, "x2", "select ($1::int)::text", nil))
	if tag, err := simple(ctx, a, "deallocate all"); err != nil || tag != "DEALLOCATE ALL" {
		t.Fatalf("DEALLOCATE ALL: %q, %v", tag, err)
	}
	for _, name := range []string{"x1", "x2"} {
		if _, err := execPrepared(ctx, a, name, "1"); sqlState(err) != "26000" {
			t.Fatalf("%s after DEALLOCATE ALL: %v, want 26000", name, err)
		}
	}
	must(a.Prepare(ctx, "x1", "select ($1::int)::text", nil))
	if tag, err := simple(ctx, a, "discard all"); err != nil || tag != "DISCARD ALL" {
		t.Fatalf("DISCARD ALL: %q, %v", tag, err)
	}
	if _, err := execPrepared(ctx, a, "x1", "1"); sqlState(err) != "26000" {
		t.Fatalf("x1 after DISCARD ALL: %v, want 26000", err)
	}
	// b never noticed any of it.
	if got, err := execPrepared(ctx, b, "s1", "7"); err != nil || got != "70" {
		t.Fatalf("b s1 = %q, %v", got, err)
	}
}

// TestTxModeStatementEviction: with room for two statements per server connection, a client
// using five in turn gets each one prepared again after its eviction.
func TestTxModeStatementEviction(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.MaxPreparedStatements = 2 })
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	for i := range 5 {
		if _, err := a.Prepare(ctx, fmt.Sprintf("e%d", i), fmt.Sprintf("select ($1::int + %d)::text", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for i := range 5 {
			if got, err := execPrepared(ctx, a, fmt.Sprintf("e%d", i), "100"); err != nil || got != fmt.Sprint(100+i) {
				t.Fatalf("round %d e%d = %q, %v", round, i, got, err)
			}
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_prepared_statement_evictions_total", nil); got < 10 {
		t.Errorf("evictions = %v, want at least 10", got)
	}
	var n string
	n, err := simple(ctx, a, "select count(*) from pg_prepared_statements")
	if err != nil || n != "2" {
		t.Errorf("statements on the server connection = %s, %v; want 2", n, err)
	}
}

// TestTxModePipelineError: an error in the middle of a pipeline fails its batch only; a named
// Parse the server would have skipped is skipped, and later batches run.
func TestTxModePipelineError(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := a.Prepare(ctx, "p1", "select ($1::int * 2)::text", nil); err != nil {
		t.Fatal(err)
	}
	p := a.StartPipeline(ctx)
	p.SendQueryPrepared("p1", [][]byte{[]byte("21")}, nil, nil)
	p.SendPipelineSync()
	p.SendQueryParams("select 1/0", nil, nil, nil, nil)
	p.SendPrepare("p2", "select 'skipped'", nil) // the server skips it after the error
	p.SendQueryPrepared("p1", [][]byte{[]byte("1")}, nil, nil)
	p.SendPipelineSync()
	p.SendQueryPrepared("p1", [][]byte{[]byte("50")}, nil, nil)
	p.SendPipelineSync()
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		r, err := p.GetResults()
		if err != nil {
			got = append(got, "error "+sqlState(err))
			continue
		}
		if r == nil {
			break
		}
		switch r := r.(type) {
		case *pgconn.ResultReader:
			res := r.Read()
			if res.Err != nil {
				got = append(got, "error "+sqlState(res.Err))
			} else if len(res.Rows) > 0 {
				got = append(got, string(res.Rows[0][0]))
			}
		case *pgconn.PipelineSync:
			got = append(got, "sync")
		case *pgconn.StatementDescription:
			got = append(got, "described "+r.Name)
		}
		if len(got) > 20 {
			break
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	want := "42 sync error 22012 sync 100 sync"
	if strings.Join(got, " ") != want {
		t.Errorf("pipeline results %q, want %q", strings.Join(got, " "), want)
	}
	// p2 was never prepared.
	if _, err := a.Prepare(ctx, "p2", "select 'now'", nil); err != nil {
		t.Errorf("prepare p2 after the failed batch: %v", err)
	}
}

// trackedSettings are the settings transaction mode carries between server connections, each
// with a value no test client has by default.
var trackedSettings = []struct{ name, set, want string }{
	{"search_path", "set search_path = leak_schema, public", "leak_schema, public"},
	{"TimeZone", "set time zone 'Asia/Tokyo'", "Asia/Tokyo"},
	{"DateStyle", "set datestyle = 'SQL, DMY'", "SQL, DMY"},
	{"IntervalStyle", "set intervalstyle to iso_8601", "iso_8601"},
	{"extra_float_digits", "set extra_float_digits = -2", "-2"},
	{"application_name", "set application_name = 'leaky'", "leaky"},
	{"standard_conforming_strings", "set standard_conforming_strings = off", "off"},
	{"client_encoding", "set client_encoding = 'LATIN1'", "LATIN1"},
}

// TestTxModeSettingsDoNotLeak: settings a client changes with SET, or asks for at startup,
// stay its own: another client on the same server connection sees its own values, and the
// first client keeps its values on whichever connection serves it next.
func TestTxModeSettingsDoNotLeak(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	b := h.pgconnect(t, ctx, "")
	baseline := map[string]string{}
	for _, s := range trackedSettings {
		v, err := simple(ctx, b, "show "+s.name)
		if err != nil {
			t.Fatal(err)
		}
		baseline[s.name] = v
	}
	a := h.pgconnect(t, ctx, "")
	for _, s := range trackedSettings {
		if _, err := simple(ctx, a, s.set); err != nil {
			t.Fatalf("%s: %v", s.set, err)
		}
	}
	for _, s := range trackedSettings {
		if got, err := simple(ctx, b, "show "+s.name); err != nil || got != baseline[s.name] {
			t.Errorf("other client: %s = %q, %v; want %q (leaked from the first client)", s.name, got, err, baseline[s.name])
		}
		if got, err := simple(ctx, a, "show "+s.name); err != nil || got != s.want {
			t.Errorf("first client: %s = %q, %v; want %q", s.name, got, err, s.want)
		}
	}
	// RESET gives the first client its default back.
	if _, err := simple(ctx, a, "reset search_path"); err != nil {
		t.Fatal(err)
	}
	if _, err := simple(ctx, b, "select 1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := simple(ctx, a, "show search_path"); got != baseline["search_path"] {
		t.Errorf("search_path after RESET = %q, want %q", got, baseline["search_path"])
	}

	// Startup parameters likewise.
	c := h.pgconnect(t, ctx, "search_path=startup_schema&application_name=startup_app&timezone=Europe/Lisbon&extra_float_digits=1&datestyle=German&intervalstyle=sql_standard")
	want := map[string]string{"search_path": "startup_schema", "application_name": "startup_app", "TimeZone": "Europe/Lisbon",
		"extra_float_digits": "1", "DateStyle": "German, DMY", "IntervalStyle": "sql_standard"}
	for round := range 2 {
		for name, v := range want {
			if got, err := simple(ctx, c, "show "+name); err != nil || got != v {
				t.Errorf("round %d: startup client: %s = %q, %v; want %q", round, name, got, err, v)
			}
			if got, err := simple(ctx, b, "show "+name); err != nil || got != baseline[name] {
				t.Errorf("round %d: other client: %s = %q, %v; want %q (leaked from startup parameters)", round, name, got, err, baseline[name])
			}
		}
	}
	// The client was told its own values at login.
	if got := c.ParameterStatus("application_name"); got != "startup_app" {
		t.Errorf("ParameterStatus application_name = %q", got)
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil); got != 0 {
		t.Errorf("pinned sessions = %v, want 0: tracked settings do not pin", got)
	}
}

// TestTxModePins: a session that takes state that cannot move between server connections keeps
// its connection until it disconnects, so the state works for it and no other client sees it.
func TestTxModePins(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 90*time.Second)
	for _, tc := range []struct {
		reason string
		setup  []string
		// own runs in the pinned session, in a later transaction; other in another client.
		own, ownWant     string
		other, otherWant string
	}{
		{"listen", []string{"listen pinned_ch"}, "select count(*) from pg_listening_channels()", "1",
			"select count(*) from pg_listening_channels()", "0"},
		{"advisory_lock", []string{"select pg_advisory_lock(4242)"}, "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()", "1",
			"select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()", "0"},
		{"temp_table", []string{"create temp table pinned_tt (x int)", "insert into pinned_tt values (1)"}, "select count(*) from pinned_tt", "1",
			"select coalesce(to_regclass('pinned_tt')::text, 'none')", "none"},
		{"prepare", []string{"prepare pinned_q as select 7"}, "execute pinned_q", "7",
			"select count(*) from pg_prepared_statements where name = 'pinned_q'", "0"},
		{"cursor_with_hold", []string{"declare pinned_cur cursor with hold for select generate_series(1, 3)", "fetch 1 from pinned_cur"}, "fetch 1 from pinned_cur", "2",
			"select count(*) from pg_cursors where name = 'pinned_cur'", "0"},
		{"role", []string{"set role pg_monitor"}, "select current_user", "pg_monitor", "select current_user", "postgres"},
		{"set_config", []string{"select set_config('pgsidecar_test' || '.x', 'y', false)"},
			"select current_setting('pgsidecar_test.x', true)", "y", "select coalesce(nullif(current_setting('pgsidecar_test.x', true), ''), 'none')", "none"},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			a := h.pgconnect(t, ctx, "")
			for _, sql := range tc.setup {
				if _, err := simple(ctx, a, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			if got := h.metric(t, "pgsidecar_proxy_pinned_sessions", map[string]string{"reason": tc.reason}); got != 1 {
				t.Errorf("pinned sessions (%s) = %v, want 1", tc.reason, got)
			}
			b := h.pgconnect(t, ctx, "")
			for range 3 {
				if got, err := simple(ctx, b, tc.other); err != nil || got != tc.otherWant {
					t.Errorf("other client: %s = %q, %v; want %q", tc.other, got, err, tc.otherWant)
				}
			}
			if got, err := simple(ctx, a, tc.own); err != nil || got != tc.ownWant {
				t.Errorf("pinned client: %s = %q, %v; want %q", tc.own, got, err, tc.ownWant)
			}
			_ = a.Close(ctx)
			_ = b.Close(ctx)
			if !pgtest.WaitFor(10*time.Second, func() bool {
				return h.metric(t, "pgsidecar_proxy_pinned_sessions", map[string]string{"reason": tc.reason}) == 0 &&
					h.metric(t, "pgsidecar_proxy_client_connections", nil) == 0
			}) {
				t.Fatalf("the pinned session did not end")
			}
			// The state went with the session: every server connection is clean.
			for range 2 {
				c := h.pgconnect(t, ctx, "")
				if got, err := simple(ctx, c, tc.other); err != nil || got != tc.otherWant {
					t.Errorf("after the pinned client left: %s = %q, %v; want %q", tc.other, got, err, tc.otherWant)
				}
			}
		})
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil); got != 7 {
		t.Errorf("pinned sessions total = %v, want 7", got)
	}
}

// TestTxModeListenNotify: a pinned LISTEN session gets notifications sent by other clients.
func TestTxModeListenNotify(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "listen txch"); err != nil {
		t.Fatal(err)
	}
	b := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, b, "notify txch, 'hello'"); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitForNotification(ctx); err != nil {
		t.Fatalf("wait for the notification: %v", err)
	}
}

// TestTxModeClientLeavesMidTransaction: a client that disconnects inside a transaction holding a
// row lock has its transaction rolled back; the next client on the same server connection takes
// the lock.
func TestTxModeClientLeavesMidTransaction(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := h.mgr.Pool().Exec(ctx, "create table if not exists tx_locked (id int primary key, v int); insert into tx_locked values (1, 0) on conflict do nothing"); err != nil {
		t.Fatal(err)
	}
	a := h.pgconnect(t, ctx, "")
	for _, sql := range []string{"begin", "update tx_locked set v = v + 1 where id = 1", "select v from tx_locked where id = 1 for update"} {
		if _, err := simple(ctx, a, sql); err != nil {
			t.Fatal(err)
		}
	}
	_ = a.Conn().Close() // no Terminate: the client just goes
	b := h.pgconnect(t, ctx, "")
	if got, err := simple(ctx, b, "select v::text from tx_locked where id = 1 for update nowait"); err != nil || got != "0" {
		t.Fatalf("next client: %q, %v; want the lock and the rolled-back value 0", got, err)
	}
	if got := h.metric(t, "pgsidecar_proxy_transactions_total", map[string]string{"outcome": "abandoned"}); got != 1 {
		t.Errorf("abandoned transactions = %v, want 1", got)
	}
}

// TestTxModeCancel: a cancel request reaches the server connection running the client's query.
func TestTxModeCancel(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	a := h.pgconnect(t, ctx, "")
	errc := make(chan error, 1)
	go func() {
		_, err := simple(ctx, a, "select pg_sleep(60)")
		errc <- err
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'")
		return n == 1
	}) {
		t.Fatal("the query never started")
	}
	c2, err := pgconn.Connect(ctx, h.url("postgres", pgtest.SuperuserPassword, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	if err := a.CancelRequest(ctx); err != nil {
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
	if got, err := simple(ctx, a, "select 1"); err != nil || got != "1" {
		t.Fatalf("after cancel: %q, %v", got, err)
	}
	// A cancel while the client holds no server connection goes nowhere.
	if err := c2.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := simple(ctx, c2, "select 2"); err != nil || got != "2" {
		t.Fatalf("query after an idle cancel: %q, %v", got, err)
	}
	if got := h.metric(t, "pgsidecar_proxy_cancel_requests_total", nil); got != 1 {
		t.Errorf("cancel requests = %v, want 1", got)
	}
}

// TestTxModeServerKilledMidTransaction: the client whose server connection dies in the middle of
// its transaction gets ERROR 08006 and keeps its session, in a failed transaction; the
// connection is dropped and clients carry on once the server is back.
func TestTxModeServerKilledMidTransaction(t *testing.T) {
	cluster.RequireControl(t)
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 90*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "begin"); err != nil {
		t.Fatal(err)
	}
	pid, err := simple(ctx, a, "select pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := simple(ctx, a, "select pg_sleep(60)")
		errc <- err
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where pid = "+pid+" and query = 'select pg_sleep(60)' and state = 'active'")
		return n == 1
	}) {
		t.Fatal("the query never started")
	}
	var p int
	fmt.Sscan(pid, &p)
	if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
		t.Fatalf("kill backend %d: %v", p, err)
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
		t.Fatal("the client was left hanging")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "ERROR" || a.TxStatus() != 'E' {
		t.Fatalf("query on a killed server connection: %v, status %c; want ERROR 08006, status E", err, a.TxStatus())
	}
	if got, err := simple(ctx, a, "rollback"); err != nil || got != "ROLLBACK" {
		t.Fatalf("rollback of the lost transaction: %q, %v", got, err)
	}
	if got := h.metric(t, "pgsidecar_proxy_server_connections_lost_total", nil); got != 1 {
		t.Errorf("server connections lost = %v, want 1", got)
	}
	if got := h.metric(t, "pgsidecar_proxy_transactions_total", map[string]string{"outcome": "error"}); got != 1 {
		t.Errorf("transactions with outcome error = %v, want 1", got)
	}
	// The postmaster restarts after a backend crash; clients get in again once it is back.
	if !pgtest.WaitFor(30*time.Second, func() bool {
		c, err := pgconn.Connect(ctx, h.url("postgres", pgtest.SuperuserPassword, ""))
		if err != nil {
			return false
		}
		defer c.Close(ctx)
		got, err := simple(ctx, c, "select pg_backend_pid()")
		return err == nil && got != pid
	}) {
		t.Fatalf("no working session after the server came back\nlogs:\n%s", h.log.String())
	}
}

// TestStartupOptionsApplied: settings a client gives in its startup options parameter
// (PGOPTIONS, libpq's options=) hold in its session, in both pool modes, and in transaction mode
// they do not reach another client on the same server connection.
func TestStartupOptionsApplied(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, func(pc *pool.Config, c *Config) {
				c.PoolMode = mode
				pc.MaxConns = 1
			})
			ctx := ctxTimeout(t, 30*time.Second)
			a := h.connect(t, ctx, h.url("postgres", pgtest.SuperuserPassword, "options=-c%20work_mem%3D3MB%20--lock-timeout%3D7s"))
			for name, want := range map[string]string{"work_mem": "3MB", "lock_timeout": "7s"} {
				var got string
				if err := a.QueryRow(ctx, "SHOW "+name).Scan(&got); err != nil || got != want {
					t.Errorf("%s = %q, %v; want %q", name, got, err, want)
				}
			}
			if mode != PoolTransaction {
				return
			}
			b := h.connect(t, ctx, h.superURL())
			var got string
			if err := b.QueryRow(ctx, "SHOW work_mem").Scan(&got); err != nil || got == "3MB" {
				t.Errorf("other client: work_mem = %q, %v; leaked from the first client's options", got, err)
			}
		})
	}
}

// TestTxModeStatementsPerClientBounded: the proxy keeps each client's named statements, so it
// refuses one more than maxClientStatements in-band (53400) and the session goes on.
func TestTxModeStatementsPerClientBounded(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.pgconnect(t, ctx, "")
	fe := c.Frontend()
	for i := 0; i <= maxClientStatements; i++ {
		fe.Send(&pgproto3.Parse{Name: fmt.Sprintf("s%d", i), Query: fmt.Sprintf("select %d", i)})
		if i%1000 == 0 {
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var parsed int
	var refused *pgproto3.ErrorResponse
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			parsed++
		case *pgproto3.ErrorResponse:
			refused = m
		}
	}
	if parsed != maxClientStatements || refused == nil || refused.Code != "53400" {
		t.Fatalf("parsed %d, error %+v; want %d parsed, then 53400", parsed, refused, maxClientStatements)
	}
	// Still usable, and the statements it has run.
	if got, err := simple(ctx, c, "select 1"); err != nil || got != "1" {
		t.Fatalf("after the refusal: %q, %v", got, err)
	}
	res := c.ExecPrepared(ctx, "s7", nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "7" {
		t.Fatalf("statement s7: %v %v", res.Err, res.Rows)
	}
}

// TestTxModePinsPreparedSessionState: a named statement that takes session state pins its
// client even when parsed while the client held no server connection (pgconn's Prepare sends
// Parse, Describe and Sync at once), so its temporary table does not reach the next client.
func TestTxModePinsPreparedSessionState(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	if _, err := a.Prepare(ctx, "mk", "create temporary table pinned_t (i int)", nil); err != nil {
		t.Fatal(err)
	}
	if res := a.ExecPrepared(ctx, "mk", nil, nil, nil).Read(); res.Err != nil {
		t.Fatal(res.Err)
	}
	// The second client gets the other connection; the most recently used one would be the
	// first client's, had it not been pinned.
	b := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, b, "create temporary table pinned_t (i int)"); err != nil {
		t.Fatalf("the first client's temporary table reached the second client: %v", err)
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions", map[string]string{"reason": "temp_table"}); got < 1 {
		t.Errorf("pinned sessions (temp_table) = %v, want the first client", got)
	}
}
