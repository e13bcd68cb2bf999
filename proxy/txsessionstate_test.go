package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
)

// extended runs sql with the extended protocol, unnamed (as JDBC sends it), and returns the first
// column of its first row, or its command tag.
func extended(ctx context.Context, c *pgconn.PgConn, sql string, args ...string) (string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	return firstValue(c.ExecParams(ctx, sql, params, nil, nil, nil).Read())
}

// firstValue is the first column of a result's first row, or its command tag.
func firstValue(res *pgconn.Result) (string, error) {
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) == 0 {
		return res.CommandTag.String(), nil
	}
	return string(res.Rows[0][0]), nil
}

// named prepares sql under name (as psycopg does after prepare_threshold) and runs it.
func named(ctx context.Context, c *pgconn.PgConn, name, sql string) (string, error) {
	if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
		return "", err
	}
	return firstValue(c.ExecPrepared(ctx, name, nil, nil, nil).Read())
}

// TestTxModeSessionStateStaysOwn: each way a client changes its session's settings (the cases
// that reached the next client on the same server connection) stays with that client, and
// none of them pins.
func TestTxModeSessionStateStaysOwn(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	for _, tc := range []struct {
		name   string
		change func(c *pgconn.PgConn) error
		read   string // what the changing client reads as want, the other as something else
		want   string
	}{
		{"set_config tenant", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, "SELECT set_config('app.tenant', 'acme', false)")
			return err
		}, "select coalesce(current_setting('app.tenant', true), '')", "acme"},
		{"set_config statement_timeout", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, "select pg_catalog.set_config('statement_timeout', '4321', false)")
			return err
		}, "show statement_timeout", "4321ms"},
		{"set_config with a Bind parameter", func(c *pgconn.PgConn) error {
			_, err := extended(ctx, c, "SELECT set_config('TimeZone', $1, false)", "Asia/Kolkata")
			return err
		}, "show timezone", "Asia/Kolkata"},
		{"unnamed extended SET", func(c *pgconn.PgConn) error {
			_, err := extended(ctx, c, "SET work_mem = '9MB'")
			return err
		}, "show work_mem", "9MB"},
		{"named extended SET", func(c *pgconn.PgConn) error {
			_, err := named(ctx, c, "s_set", "SET search_path = named_schema")
			return err
		}, "show search_path", "named_schema"},
		{"SET SESSION CHARACTERISTICS", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
			return err
		}, "show default_transaction_isolation", "serializable"},
		{"SET behind an E string", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, `SELECT E'\''; SET maintenance_work_mem = '77MB'`)
			return err
		}, "show maintenance_work_mem", "77MB"},
		{"SET behind a dollar quote", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, `SELECT $$;'$$; SET lock_timeout = '1234ms'`)
			return err
		}, "show lock_timeout", "1234ms"},
		{"set_config in a CTE", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, "WITH x AS (SELECT set_config('app.cte', 'yes', false) AS v) SELECT v FROM x")
			return err
		}, "select coalesce(current_setting('app.cte', true), '')", "yes"},
		{"client_min_messages (Rails)", func(c *pgconn.PgConn) error {
			_, err := simple(ctx, c, "SET client_min_messages TO warning")
			return err
		}, "show client_min_messages", "warning"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := h.pgconnect(t, ctx, "")
			b := h.pgconnect(t, ctx, "")
			before, err := simple(ctx, b, tc.read)
			if err != nil {
				t.Fatal(err)
			}
			if before == tc.want {
				t.Fatalf("%s is already %q", tc.read, before)
			}
			pinned := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil)
			if err := tc.change(a); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if got, err := simple(ctx, b, tc.read); err != nil || got != before {
					t.Errorf("other client: %s = %q, %v; want %q", tc.read, got, err, before)
				}
				if got, err := simple(ctx, a, tc.read); err != nil || got != tc.want {
					t.Errorf("changing client: %s = %q, %v; want %q", tc.read, got, err, tc.want)
				}
			}
			if got := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil); got != pinned {
				t.Errorf("the change pinned the session")
			}
			_ = a.Close(ctx)
			_ = b.Close(ctx)
			h.waitIdle(t)
			// A client that left with its settings leaves nothing behind.
			c := h.pgconnect(t, ctx, "")
			if got, err := simple(ctx, c, tc.read); err != nil || got != before {
				t.Errorf("next client: %s = %q, %v; want %q", tc.read, got, err, before)
			}
		})
	}
}

// TestTxModeRolledBackSetUndone: a SET in a transaction that rolls back is undone for the client,
// and one in a transaction that commits stays, with savepoints as PostgreSQL has them.
func TestTxModeRolledBackSetUndone(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	b := h.pgconnect(t, ctx, "")
	base, _ := simple(ctx, b, "show work_mem")
	steps := []struct{ sql, want string }{
		{"BEGIN; SET work_mem = '6MB'; ROLLBACK", base},
		{"BEGIN; SET work_mem = '7MB'; SAVEPOINT s; SET work_mem = '8MB'; ROLLBACK TO s; COMMIT", "7MB"},
		{"BEGIN; SET work_mem = '9MB'; SELECT 1/0", ""},
		{"ROLLBACK", "7MB"},
		{"SET work_mem = '10MB'; SELECT 1/0", "7MB"}, // one implicit transaction: undone
	}
	for _, st := range steps {
		_, _ = simple(ctx, a, st.sql)
		if st.want == "" {
			continue
		}
		if _, err := simple(ctx, b, "select 1"); err != nil { // the connection moves
			t.Fatal(err)
		}
		if got, err := simple(ctx, a, "show work_mem"); err != nil || got != st.want {
			t.Errorf("after %q: work_mem = %q, %v; want %q", st.sql, got, err, st.want)
		}
		if got, _ := simple(ctx, b, "show work_mem"); got != base {
			t.Errorf("after %q: the other client's work_mem = %q, want %q", st.sql, got, base)
		}
	}
}

// TestResetReturnsToStartupValues: RESET, RESET ALL, SET ... TO DEFAULT and DISCARD ALL return a
// client to the values it asked for at login, as on a direct connection, in both pool modes and
// on both protocols.
func TestResetReturnsToStartupValues(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, func(pc *pool.Config, c *Config) {
				c.PoolMode = mode
				pc.MaxConns = 1
			})
			ctx := ctxTimeout(t, 30*time.Second)
			a := h.pgconnect(t, ctx, "options=-c%20work_mem%3D3MB&application_name=startup_app")
			for _, reset := range []string{"RESET ALL", "RESET work_mem", "SET work_mem TO DEFAULT", "DISCARD ALL", "extended RESET ALL", "extended RESET work_mem"} {
				if _, err := simple(ctx, a, "SET work_mem = '5MB'; SET application_name = 'changed'"); err != nil {
					t.Fatal(err)
				}
				var err error
				if sql, ok := strings.CutPrefix(reset, "extended "); ok {
					_, err = extended(ctx, a, sql)
				} else {
					_, err = simple(ctx, a, reset)
				}
				if err != nil {
					t.Fatalf("%s: %v", reset, err)
				}
				if got, err := simple(ctx, a, "show work_mem"); err != nil || got != "3MB" {
					t.Errorf("after %s: work_mem = %q, %v; want the start-up 3MB", reset, got, err)
				}
				if strings.HasSuffix(reset, " ALL") {
					if got, _ := simple(ctx, a, "show application_name"); got != "startup_app" {
						t.Errorf("after %s: application_name = %q, want startup_app", reset, got)
					}
				}
			}
			// A RESET that fails with its transaction changes nothing.
			if _, err := simple(ctx, a, "SET work_mem = '5MB'"); err != nil {
				t.Fatal(err)
			}
			_, _ = simple(ctx, a, "RESET ALL; SELECT 1/0")
			if got, _ := simple(ctx, a, "show work_mem"); got != "5MB" {
				t.Errorf("after a failed RESET ALL: work_mem = %q, want 5MB", got)
			}
			// The restoring query's answers are the proxy's: the client saw none of them.
			if got, err := simple(ctx, a, "select 42"); err != nil || got != "42" {
				t.Errorf("select 42 = %q, %v", got, err)
			}
		})
	}
}

// TestTxModePinPolicyError: with --proxy.pin-policy=error a statement that would pin is an
// in-band error and the client goes on; a client that asks for a session at login gets one.
func TestTxModePinPolicyError(t *testing.T) {
	h := newTxHarness(t, 2, func(_ *pool.Config, c *Config) { c.PinPolicy = PinPolicyError })
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	for _, sql := range []string{"SET ROLE pg_monitor", "select pg_advisory_lock(77)", "create temp table refused (x int)"} {
		if _, err := simple(ctx, a, sql); sqlState(err) != "0A000" {
			t.Errorf("%s: %v, want 0A000", sql, err)
		}
		if _, err := named(ctx, a, "", sql); sqlState(err) != "0A000" {
			t.Errorf("extended %s: %v, want 0A000", sql, err)
		}
		if got, err := simple(ctx, a, "select current_user"); err != nil || got != "postgres" {
			t.Errorf("after %s: current_user = %q, %v", sql, got, err)
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil); got != 0 {
		t.Errorf("pinned sessions = %v, want 0", got)
	}
	b := h.pgconnect(t, ctx, "options=-c%20pgsidecar.pool_mode%3Dsession")
	if _, err := simple(ctx, b, "create temp table mine (x int)"); err != nil {
		t.Fatal(err)
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions", map[string]string{"reason": sessionsql.PinRequested}); got != 1 {
		t.Errorf("pinned sessions (requested) = %v, want 1", got)
	}
	if got, err := simple(ctx, b, "select count(*) from mine"); err != nil || got != "0" {
		t.Errorf("requested session: %q, %v", got, err)
	}
}

// TestTxModeORMTrafficDoesNotPin: what ORMs and drivers send on every connection leaves their
// sessions free to move.
func TestTxModeORMTrafficDoesNotPin(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.pgconnect(t, ctx, "")
	for _, sql := range []string{
		"SET client_min_messages TO warning", "SET standard_conforming_strings = on", "SET intervalstyle = iso_8601",
		"SET TIME ZONE 'UTC'", "SHOW TRANSACTION ISOLATION LEVEL", "BEGIN", "SET LOCAL statement_timeout = '1s'", "COMMIT",
		"DEALLOCATE ALL", "SELECT pg_advisory_xact_lock(1)", "select 1 /* controller='users',action='show' */",
	} {
		if _, err := simple(ctx, c, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for _, sql := range []string{"SELECT set_config('TimeZone', $1, false)", "SELECT $1::int"} {
		if _, err := extended(ctx, c, sql, "1"); err != nil && sql != "SELECT set_config('TimeZone', $1, false)" {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_pinned_sessions_total", nil); got != 0 {
		t.Errorf("pinned sessions = %v, want 0", got)
	}
}

// TestTxModePinnedClientsOwnStatements: two clients with temporary tables of the same name but
// other columns prepare the same text: each gets its own table's rows, as directly, not an
// error from the other's result type.
func TestTxModePinnedClientsOwnStatements(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	b := h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "create temp table same_name (x int); insert into same_name values (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := simple(ctx, b, "create temp table same_name (y text, z text); insert into same_name values ('b', 'c')"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		conn *pgconn.PgConn
		cols int
	}{{a, 1}, {b, 2}} {
		if _, err := c.conn.Prepare(ctx, "s", "select * from same_name", nil); err != nil {
			t.Fatal(err)
		}
		res := c.conn.ExecPrepared(ctx, "s", nil, nil, nil).Read()
		if res.Err != nil || len(res.FieldDescriptions) != c.cols {
			t.Errorf("select * from same_name: %d columns, %v; want %d", len(res.FieldDescriptions), res.Err, c.cols)
		}
	}
}

// TestTxModeFetchPreparedBeforeItsCursor: a FETCH prepared before its cursor exists describes no
// result, and one with the cursor open describes the cursor's: that is no change of result type
// where the proxy prepares it again on another server connection.
func TestTxModeFetchPreparedBeforeItsCursor(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	for round := range 4 {
		c := h.pgconnect(t, ctx, "")
		hold := h.pgconnect(t, ctx, "")
		sd, err := c.Prepare(ctx, "ps_fetch", `fetch all in "fetch_cursor"`, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Another client holds one connection in a transaction, so c's may change.
		if round%2 == 1 {
			if _, err := simple(ctx, hold, "begin; select 1"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := simple(ctx, c, `begin; declare "fetch_cursor" cursor for select n, n::text from generate_series(1, 3) n`); err != nil {
			t.Fatal(err)
		}
		res := c.ExecStatement(ctx, sd, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 3 {
			t.Fatalf("round %d: fetch: %d rows, %v", round, len(res.Rows), res.Err)
		}
		_, _ = simple(ctx, c, "commit")
		_ = hold.Close(ctx)
		_ = c.Close(ctx)
	}
}
