package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
)

// exchange sends msgs and a Sync after each batch (nil in msgs ends a batch), and returns the
// answers up to the last ReadyForQuery as short words: "parsed", "E:<SQLSTATE>", "Z", ...
func exchange(t *testing.T, ctx context.Context, c *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) string {
	t.Helper()
	fe := c.Frontend()
	syncs := 0
	for _, m := range msgs {
		if m == nil {
			m = &pgproto3.Sync{}
		}
		if _, ok := m.(*pgproto3.Sync); ok {
			syncs++
		}
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = c.Conn().Close() // unblocks Receive
		case <-done:
		}
	}()
	for syncs > 0 {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			got = append(got, "parsed")
		case *pgproto3.BindComplete:
			got = append(got, "bound")
		case *pgproto3.CloseComplete:
			got = append(got, "closed")
		case *pgproto3.ErrorResponse:
			got = append(got, "E:"+m.Code)
		case *pgproto3.CommandComplete:
			got = append(got, "C")
		case *pgproto3.ReadyForQuery:
			got = append(got, "Z")
			syncs--
		}
	}
	return strings.Join(got, " ")
}

// TestTxModeParseErrorsAtParse: a named Parse of a statement the proxy does not know to be valid
// gets the server's answer, an error included, at the Parse, whether or not the client holds a
// server connection, as on a direct connection; the batch is then skipped up to its Sync. A
// statement known to be valid is still answered without a server connection.
func TestTxModeParseErrorsAtParse(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	b := h.pgconnect(t, ctx, "") // logging in takes a server connection
	if _, err := a.Prepare(ctx, "s1", "select * from no_such_table", nil); sqlState(err) != "42P01" {
		t.Fatalf("Prepare of a missing table's query: %v, want 42P01", err)
	}
	// libpq's PQprepare (and pgbench -M prepared): Parse and Sync alone.
	bad := &pgproto3.Parse{Name: "s2", Query: "select from_nowhere("}
	if got := exchange(t, ctx, a, bad, nil); got != "E:42601 Z" {
		t.Fatalf("Parse, Sync of invalid SQL: %q, want an error at the Parse", got)
	}
	// Again: the proxy remembers nothing of it.
	if got := exchange(t, ctx, a, bad, nil); got != "E:42601 Z" {
		t.Fatalf("Parse, Sync of invalid SQL again: %q", got)
	}
	// The rest of the batch is skipped; the next batch runs.
	missing := "select * from no_such_table where 1 = $1"
	got := exchange(t, ctx, a,
		&pgproto3.Parse{Name: "s3", Query: missing}, &pgproto3.Bind{PreparedStatement: "s3"},
		&pgproto3.Execute{}, nil,
		&pgproto3.Parse{Name: "s4", Query: missing}, nil,
		&pgproto3.Parse{Name: "ok", Query: "select 1"}, &pgproto3.Bind{PreparedStatement: "ok"},
		&pgproto3.Execute{}, nil)
	if got != "E:42P01 Z E:42P01 Z parsed bound C Z" {
		t.Fatalf("pipeline with invalid Parses: %q", got)
	}
	// The same new text twice in one batch: both stand or fall with the first.
	if got := exchange(t, ctx, a, &pgproto3.Parse{Name: "s5", Query: missing + " and 2 = 2"},
		&pgproto3.Parse{Name: "s6", Query: missing + " and 2 = 2"}, nil); got != "E:42P01 Z" {
		t.Fatalf("two Parses of invalid SQL in a batch: %q", got)
	}
	if got := exchange(t, ctx, a, &pgproto3.Parse{Name: "g1", Query: "select 'twice'"},
		&pgproto3.Parse{Name: "g2", Query: "select 'twice'"}, nil); got != "parsed parsed Z" {
		t.Fatalf("two Parses of a new statement in a batch: %q", got)
	}
	if res := a.ExecPrepared(ctx, "g2", nil, nil, nil).Read(); res.Err != nil {
		t.Fatalf("g2: %v", res.Err)
	}
	for _, name := range []string{"s1", "s2", "s3", "s4", "s5", "s6"} {
		if res := a.ExecPrepared(ctx, name, nil, nil, nil).Read(); sqlState(res.Err) != "26000" {
			t.Fatalf("%s after its failed Parse: %v, want 26000", name, res.Err)
		}
	}
	// Inside a transaction.
	if _, err := simple(ctx, a, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s1", "select * from no_such_table", nil); sqlState(err) != "42P01" {
		t.Fatalf("Prepare in a transaction: %v, want 42P01", err)
	}
	if a.TxStatus() != 'E' {
		t.Errorf("transaction status after the failed Prepare = %c, want E", a.TxStatus())
	}
	if _, err := simple(ctx, a, "rollback"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s1", "select ($1::int + 1)::text", nil); err != nil {
		t.Fatalf("the name after the failed Parses: %v", err)
	}
	if got, err := execPrepared(ctx, a, "s1", "1"); err != nil || got != "2" {
		t.Fatalf("s1 = %q, %v", got, err)
	}

	// A statement known to be valid is answered without a server connection: b's Parse and Sync
	// while a holds the only one in a transaction.
	if _, err := simple(ctx, a, "begin"); err != nil {
		t.Fatal(err)
	}
	quick, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if got := exchange(t, quick, b, &pgproto3.Parse{Name: "k", Query: "select ($1::int + 1)::text"}, nil); got != "parsed Z" {
		t.Fatalf("known statement while the pool is busy: %q", got)
	}
	if _, err := simple(ctx, a, "commit"); err != nil {
		t.Fatal(err)
	}
	if got, err := execPrepared(ctx, b, "k", "41"); err != nil || got != "42" {
		t.Fatalf("k = %q, %v", got, err)
	}

	// pgx with its statement cache.
	pc := h.connect(t, ctx, h.superURL())
	var n int
	if err := pc.QueryRow(ctx, "select count(*) from no_such_table where 1 = $1", 1).Scan(&n); sqlState(err) != "42P01" {
		t.Fatalf("pgx QueryRow of a missing table: %v, want 42P01", err)
	}
	if err := pc.QueryRow(ctx, "select $1::int", 5).Scan(&n); err != nil || n != 5 {
		t.Fatalf("pgx after the error: %d, %v", n, err)
	}
}

// ddlSequence runs, on clients a and b, prepared statements across an ALTER TABLE that changes
// the statement's result type, and returns what each step gave: "<n>cols" or a SQLSTATE.
// between runs after a has re-prepared, before b uses its old statement again.
func ddlSequence(t *testing.T, ctx context.Context, a, b *pgconn.PgConn, table string, between func()) []string {
	t.Helper()
	must := func(c *pgconn.PgConn, sql string) {
		t.Helper()
		if _, err := simple(ctx, c, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	must(a, fmt.Sprintf("drop table if exists %[1]s; create table %[1]s (x int); insert into %[1]s values (1)", table))
	query := "select * from " + table
	var got []string
	exec := func(c *pgconn.PgConn) {
		res := c.ExecPrepared(ctx, "s", nil, nil, nil).Read()
		if res.Err != nil {
			got = append(got, sqlState(res.Err))
		} else {
			got = append(got, fmt.Sprintf("%dcols", len(res.FieldDescriptions)))
		}
	}
	prepare := func(c *pgconn.PgConn) {
		if _, err := c.Prepare(ctx, "s", query, nil); err != nil {
			got = append(got, "prepare "+sqlState(err))
		}
	}
	reprepare := func(c *pgconn.PgConn) {
		if err := c.Deallocate(ctx, "s"); err != nil {
			t.Fatal(err)
		}
		prepare(c)
	}
	// In transactions, so that through the proxy each holds a server connection of its own.
	must(a, "begin")
	must(b, "begin")
	prepare(a)
	prepare(b)
	exec(a)
	exec(b)
	must(a, "commit")
	must(b, "commit")
	must(a, "alter table "+table+" add column y int default 2")
	exec(a)
	reprepare(a)
	exec(a)
	if between != nil {
		between()
	}
	exec(b)
	exec(b)
	reprepare(b)
	exec(b)
	exec(a)
	return got
}

// TestTxModeStatementVersionsAfterDDL: after ALTER TABLE changes a statement's result type, each
// client sees what it would see on a direct connection: 0A000 (cached plan must not change
// result type) on its old statement, and a working one once it closes and prepares it again,
// while other clients still hold the old one.
func TestTxModeStatementVersionsAfterDDL(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	direct := func() *pgconn.PgConn {
		c, err := pgconn.Connect(ctx, cluster.URL(""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	want := ddlSequence(t, ctx, direct(), direct(), "pstmt_ver_direct", nil)
	if w := "1cols 1cols 0A000 2cols 0A000 0A000 2cols 2cols"; strings.Join(want, " ") != w {
		t.Fatalf("direct connection gave %q, not the %q this test expects of PostgreSQL", want, w)
	}
	a, b := h.pgconnect(t, ctx, ""), h.pgconnect(t, ctx, "")
	if got := ddlSequence(t, ctx, a, b, "pstmt_ver_proxy", nil); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("through the proxy %q, directly %q", got, want)
	}
	// The old version is closed on both server connections once no client holds it.
	if _, err := simple(ctx, a, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := simple(ctx, b, "begin"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgconn.PgConn{a, b} {
		if res := c.ExecPrepared(ctx, "s", nil, nil, nil).Read(); res.Err != nil {
			t.Fatal(res.Err)
		}
		n, err := simple(ctx, c, "select count(*) from pg_prepared_statements where statement = 'select * from pstmt_ver_proxy'")
		if err != nil || n != "1" {
			t.Errorf("versions of the statement on a server connection: %s, %v; want 1", n, err)
		}
	}
}

// TestTxModeStaleStatementNotPreparedAgain: a client's statement whose result type changed gets
// 0A000 also on a server connection that does not have it prepared (here: evicted), rather than
// the statement prepared afresh with the new result type, which its driver would decode with
// the old row description.
func TestTxModeStaleStatementNotPreparedAgain(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.MaxPreparedStatements = 2 })
	ctx := ctxTimeout(t, 30*time.Second)
	a, b := h.pgconnect(t, ctx, ""), h.pgconnect(t, ctx, "")
	evict := func() {
		for i := range 2 {
			if _, err := a.Prepare(ctx, fmt.Sprintf("e%d", i), fmt.Sprintf("select %d", i), nil); err != nil {
				t.Fatal(err)
			}
			if res := a.ExecPrepared(ctx, fmt.Sprintf("e%d", i), nil, nil, nil).Read(); res.Err != nil {
				t.Fatal(res.Err)
			}
		}
	}
	// The sequence never holds two transactions open at once on the pool of one: b waits for
	// a's commit only after a's begin was answered.
	got := ddlSequenceSerial(t, ctx, a, b, "pstmt_stale_evicted", evict)
	if w := "1cols 1cols 0A000 2cols 0A000 0A000 2cols 2cols"; strings.Join(got, " ") != w {
		t.Fatalf("through the proxy %q, want %q as directly", got, w)
	}
}

// ddlSequenceSerial is ddlSequence without the transactions, for a pool of one.
func ddlSequenceSerial(t *testing.T, ctx context.Context, a, b *pgconn.PgConn, table string, between func()) []string {
	t.Helper()
	if _, err := simple(ctx, a, fmt.Sprintf("drop table if exists %[1]s; create table %[1]s (x int); insert into %[1]s values (1)", table)); err != nil {
		t.Fatal(err)
	}
	query := "select * from " + table
	var got []string
	exec := func(c *pgconn.PgConn) {
		res := c.ExecPrepared(ctx, "s", nil, nil, nil).Read()
		if res.Err != nil {
			got = append(got, sqlState(res.Err))
		} else {
			got = append(got, fmt.Sprintf("%dcols", len(res.FieldDescriptions)))
		}
	}
	prepare := func(c *pgconn.PgConn) {
		if _, err := c.Prepare(ctx, "s", query, nil); err != nil {
			got = append(got, "prepare "+sqlState(err))
		}
	}
	reprepare := func(c *pgconn.PgConn) {
		if err := c.Deallocate(ctx, "s"); err != nil {
			t.Fatal(err)
		}
		prepare(c)
	}
	prepare(a)
	prepare(b)
	exec(a)
	exec(b)
	if _, err := simple(ctx, a, "alter table "+table+" add column y int default 2"); err != nil {
		t.Fatal(err)
	}
	exec(a)
	reprepare(a)
	exec(a)
	between()
	exec(b)
	exec(b)
	reprepare(b)
	exec(b)
	exec(a)
	return got
}

// TestTxModePgxRecoversAfterDDL: pgx's statement cache through the proxy after ALTER TABLE: the
// first query may fail with 0A000, after which pgx prepares the statement again and the next
// attempt works, for each client.
func TestTxModePgxRecoversAfterDDL(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	setup := h.connect(t, ctx, h.superURL())
	if _, err := setup.Exec(ctx, "drop table if exists pstmt_pgx; create table pstmt_pgx (id int); insert into pstmt_pgx values (1)"); err != nil {
		t.Fatal(err)
	}
	clients := []*pgx.Conn{h.connect(t, ctx, h.superURL()), h.connect(t, ctx, h.superURL())}
	query := func(c *pgx.Conn) (int, error) {
		rows, err := c.Query(ctx, "select * from pstmt_pgx where id = $1", 1)
		if err != nil {
			return 0, err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return 0, err
			}
			n = len(v)
		}
		return n, rows.Err()
	}
	for _, c := range clients {
		if n, err := query(c); err != nil || n != 1 {
			t.Fatalf("before ALTER: %d columns, %v", n, err)
		}
	}
	if _, err := setup.Exec(ctx, "alter table pstmt_pgx add column extra text default 'x'"); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if _, err := query(c); err != nil && sqlState(err) != "0A000" {
			t.Fatalf("client %d, first query after ALTER: %v, want success or 0A000", i, err)
		}
		if n, err := query(c); err != nil || n != 2 {
			t.Fatalf("client %d, second query after ALTER: %d columns, %v; want 2", i, n, err)
		}
	}
}

// TestTxModeDroppedTableFailsAtParseAgain: once a Bind of a shared statement fails because its
// table is gone, a new Parse of it gets the error at the Parse, as directly, although the
// statement was valid before.
func TestTxModeDroppedTableFailsAtParseAgain(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	a, b := h.pgconnect(t, ctx, ""), h.pgconnect(t, ctx, "")
	if _, err := simple(ctx, a, "drop table if exists pstmt_dropped; create table pstmt_dropped (x int)"); err != nil {
		t.Fatal(err)
	}
	const query = "select * from pstmt_dropped"
	if _, err := a.Prepare(ctx, "s", query, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := simple(ctx, a, "drop table pstmt_dropped"); err != nil {
		t.Fatal(err)
	}
	if res := a.ExecPrepared(ctx, "s", nil, nil, nil).Read(); sqlState(res.Err) != "42P01" {
		t.Fatalf("statement of the dropped table: %v, want 42P01", res.Err)
	}
	if got := exchange(t, ctx, b, &pgproto3.Parse{Name: "s", Query: query}, nil); got != "E:42P01 Z" {
		t.Fatalf("Parse of the dropped table's statement: %q, want an error at the Parse", got)
	}
}

// TestTxModeSkippedCloseKeepsStatement: when the server skips the Close of a statement the
// proxy evicted (an earlier request of its batch failed), the statement is still prepared
// there, and the proxy does not prepare it again (which would fail with 42P05).
func TestTxModeSkippedCloseKeepsStatement(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.MaxPreparedStatements = 1 })
	ctx := ctxTimeout(t, 30*time.Second)
	a := h.pgconnect(t, ctx, "")
	for _, name := range []string{"p1", "p2"} {
		if _, err := a.Prepare(ctx, name, "select '"+name+"'", nil); err != nil {
			t.Fatal(err)
		}
	}
	// p2 is prepared on the server connection; binding p1 after the failing request prepares
	// p1 and closes p2, both of which the server skips.
	got := exchange(t, ctx, a,
		&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "p1"}, &pgproto3.Execute{}, nil)
	if got != "parsed E:22012 Z" {
		t.Fatalf("failing batch: %q", got)
	}
	for _, name := range []string{"p2", "p1", "p2"} {
		res := a.ExecPrepared(ctx, name, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != name {
			t.Fatalf("%s after the failed batch: %v %q", name, res.Err, res.Rows)
		}
	}
}

// TestTxModeResultTypeCheckedWherePreparedLater: a statement prepared again on a server
// connection after DDL changed its result type (here: evicted there before the ALTER TABLE) is
// not run with the new result type, which a driver would decode with the row description it
// cached (pgx does, without describing the portal), but fails with 0A000 as it would directly.
func TestTxModeResultTypeCheckedWherePreparedLater(t *testing.T) {
	h := newTxHarness(t, 1, func(_ *pool.Config, c *Config) { c.MaxPreparedStatements = 1 })
	ctx := ctxTimeout(t, 30*time.Second)
	a, b := h.pgconnect(t, ctx, ""), h.pgconnect(t, ctx, "")
	px := h.connect(t, ctx, h.superURL())
	if _, err := simple(ctx, a, "drop table if exists pstmt_later; create table pstmt_later (id int); insert into pstmt_later values (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s", "select * from pstmt_later", nil); err != nil {
		t.Fatal(err)
	}
	exec := func(c *pgconn.PgConn, name string) string {
		res := c.ExecPrepared(ctx, name, nil, nil, nil).Read()
		if res.Err != nil {
			return sqlState(res.Err)
		}
		return fmt.Sprintf("%dcols", len(res.FieldDescriptions))
	}
	query := func() (int, error) {
		rows, err := px.Query(ctx, "select * from pstmt_later where id = $1", 1)
		if err != nil {
			return 0, err
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return 0, err
			}
			n = len(v)
		}
		return n, rows.Err()
	}
	if got := exec(a, "s"); got != "1cols" {
		t.Fatalf("before ALTER: %s", got)
	}
	if n, err := query(); err != nil || n != 1 {
		t.Fatalf("pgx before ALTER: %d, %v", n, err)
	}
	// Room for one statement: this one evicts the others from the server connection.
	if _, err := b.Prepare(ctx, "evict", "select 'evict'", nil); err != nil {
		t.Fatal(err)
	}
	if got := exec(b, "evict"); got != "1cols" {
		t.Fatalf("evicting statement: %s", got)
	}
	if _, err := simple(ctx, b, "alter table pstmt_later add column extra text default 'x'"); err != nil {
		t.Fatal(err)
	}
	if got := exec(a, "s"); got != "0A000" {
		t.Fatalf("statement prepared before ALTER, used after it: %s, want 0A000 as directly", got)
	}
	if got := exec(a, "s"); got != "0A000" {
		t.Fatalf("again: %s, want 0A000 as directly", got)
	}
	if n, err := query(); err != nil && sqlState(err) != "0A000" || err == nil && n != 2 {
		t.Fatalf("pgx after ALTER: %d columns, %v; want 0A000 or 2 columns", n, err)
	}
	if n, err := query(); err != nil || n != 2 {
		t.Fatalf("pgx again: %d columns, %v; want 2", n, err)
	}
	if err := a.Deallocate(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s", "select * from pstmt_later", nil); err != nil {
		t.Fatal(err)
	}
	if got := exec(a, "s"); got != "2cols" {
		t.Fatalf("prepared again after ALTER: %s, want 2cols", got)
	}
}

// TestTxModeExtendedDiscardForgetsStatements: DISCARD ALL and DEALLOCATE ALL sent with the
// extended protocol drop the client's statements, as on a direct connection (26000 after),
// not only the server connection's.
func TestTxModeExtendedDiscardForgetsStatements(t *testing.T) {
	h := newTxHarness(t, 1, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.pgconnect(t, ctx, "")
	for _, sql := range []string{"DISCARD ALL", "DEALLOCATE ALL"} {
		if _, err := c.Prepare(ctx, "kept", "select $1::text", nil); err != nil {
			t.Fatal(err)
		}
		if v, err := execPrepared(ctx, c, "kept", "x"); err != nil || v != "x" {
			t.Fatalf("before %s: %q, %v", sql, v, err)
		}
		if _, err := c.ExecParams(ctx, sql, nil, nil, nil, nil).Close(); err != nil {
			t.Fatalf("%s with the extended protocol: %v", sql, err)
		}
		if _, err := execPrepared(ctx, c, "kept", "x"); sqlState(err) != "26000" {
			t.Errorf("after %s with the extended protocol: %v, want 26000 (prepared statement does not exist)", sql, err)
		}
	}
}
