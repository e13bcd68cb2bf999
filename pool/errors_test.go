package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestRetryableClassification(t *testing.T) {
	pg := func(code string) error { return &pgconn.PgError{Code: code, Message: "x"} }
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"serialization failure", pg("40001"), true},
		{"deadlock", pg("40P01"), true},
		{"too many connections", pg("53300"), true},
		{"admin shutdown", pg("57P01"), true},
		{"crash shutdown", pg("57P02"), true},
		{"cannot connect now", pg("57P03"), true},
		{"connection failure", pg("08006"), true},
		{"connection does not exist", pg("08003"), true},
		{"wrapped serialization failure", fmt.Errorf("tx: %w", pg("40001")), true},
		{"unique violation", pg("23505"), false},
		{"foreign key violation", pg("23503"), false},
		{"not null violation", pg("23502"), false},
		{"division by zero", pg("22012"), false},
		{"invalid text representation", pg("22P02"), false},
		{"syntax error", pg("42601"), false},
		{"undefined table", pg("42P01"), false},
		{"insufficient privilege", pg("42501"), false},
		{"invalid password", pg("28P01"), false},
		{"invalid authorization", pg("28000"), false},
		{"database does not exist", pg("3D000"), false},
		{"query canceled (statement_timeout)", pg("57014"), false},
		{"out of memory", pg("53200"), false},
		{"disk full", pg("53100"), false},
		{"context canceled", context.Canceled, false},
		{"deadline exceeded", fmt.Errorf("q: %w", context.DeadlineExceeded), false},
		{"unexpected EOF after send", io.ErrUnexpectedEOF, false},
		{"conn closed (how pgx reports a lost reply)", fmt.Errorf("exec: %w", pgconn.ErrConnClosed), false},
		{"plain error", errors.New("boom"), false},
		{"acquire timeout", fmt.Errorf("%w: the pool had no free connection within DB_CONNECTION_TIMEOUT (1s)", ErrAcquireTimeout), false},
	}
	for _, tc := range cases {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("%s: Retryable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestRetryableRealErrors(t *testing.T) {
	ctx := ctxTimeout(t, 10*time.Second)
	// A connect that never reached a server: safe to retry.
	_, err := pgconn.Connect(ctx, "postgres://u:p@127.0.0.1:1/db?connect_timeout=2")
	if err == nil {
		t.Fatal("connect to port 1 succeeded")
	}
	if !Retryable(err) || !IsConnectionError(err) || SQLState(err) != "08006" {
		t.Fatalf("refused connect: Retryable=%v IsConnectionError=%v SQLState=%q (%v)", Retryable(err), IsConnectionError(err), SQLState(err), err)
	}
	// A wrong password: a connect error, but retrying cannot help.
	_, err = pgconn.Connect(ctx, cluster.URLFor("postgres", "wrong-password", ""))
	if err == nil {
		t.Fatal("wrong password accepted")
	}
	if Retryable(err) || SQLState(err) != "28P01" {
		t.Fatalf("bad password: Retryable=%v SQLState=%q (%v)", Retryable(err), SQLState(err), err)
	}
	// A statement on a closed connection. pgx says SafeToRetry, but the same error is how it
	// reports a connection lost while a simple-protocol statement waited for its reply
	// (TestLostReplyIsNotRetried), when the statement may have run: not retried.
	c, err := pgconn.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close(ctx)
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	if !errors.Is(err, pgconn.ErrConnClosed) || !pgconn.SafeToRetry(err) {
		t.Logf("pgx no longer reports a closed connection as a SafeToRetry ErrConnClosed (%v); Retryable's special case may be revisited", err)
	}
	if err == nil || Retryable(err) || !IsConnectionError(err) {
		t.Fatalf("closed connection: Retryable=%v IsConnectionError=%v (%v)", Retryable(err), IsConnectionError(err), err)
	}
}

func TestRetryErrorKeepsCause(t *testing.T) {
	cause := &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key"}
	err := error(&RetryError{Attempts: 3, Err: fmt.Errorf("insert: %w", cause)})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("errors.As lost the cause: %v", err)
	}
	if got := err.Error(); got != "failed after 3 attempts: insert: ERROR: duplicate key (SQLSTATE 23505)" {
		t.Fatalf("message %q", got)
	}
}

func TestClassifyOperation(t *testing.T) {
	cases := map[string]string{
		"SELECT 1":                                  "select",
		"  select * from t":                         "select",
		"-- comment\nINSERT INTO t VALUES (1)":      "insert",
		"/* a /* nested */ comment */ UPDATE t SET": "update",
		"(SELECT 1) UNION (SELECT 2)":               "select",
		"delete from t":                             "delete",
		"WITH x AS (SELECT 1) SELECT * FROM x":      "with",
		"begin":                                     "begin",
		"START TRANSACTION":                         "begin",
		"commit":                                    "commit",
		"END":                                       "commit",
		"ROLLBACK":                                  "rollback",
		"abort":                                     "rollback",
		"SAVEPOINT a":                               "savepoint",
		"RELEASE SAVEPOINT a":                       "savepoint",
		"copy t from stdin":                         "copy",
		"CREATE TABLE t()":                          "create",
		"ALTER TABLE t":                             "alter",
		"DROP TABLE t":                              "drop",
		"TRUNCATE t":                                "truncate",
		"SET statement_timeout = 0":                 "set",
		"RESET ALL":                                 "set",
		"SHOW server_version":                       "show",
		"EXPLAIN ANALYZE SELECT 1":                  "explain",
		"call p()":                                  "call",
		"LOCK TABLE t":                              "lock",
		"LISTEN ch":                                 "listen",
		"NOTIFY ch":                                 "notify",
		"PREPARE s AS SELECT 1":                     "prepare",
		"EXECUTE s":                                 "execute",
		"VACUUM":                                    "vacuum",
		"ANALYZE t":                                 "analyze",
		"DISCARD ALL":                               "discard",
		"FETCH 10 FROM c":                           "fetch",
		"MERGE INTO t USING s ON true":              "merge",
		"VALUES (1)":                                "select",
		"GRANT ALL ON t TO u":                       "other",
		"":                                          "other",
		"   ":                                       "other",
		"-- only a comment":                         "other",
		"/* unterminated":                           "other",
		"selectx":                                   "other",
		"SELECTING":                                 "other",
		"supercalifragilistic":                      "other",
		"Ωmega":                                     "other",
		";SELECT 1":                                 "select",
	}
	for sql, want := range cases {
		if got := ClassifyOperation(sql).String(); got != want {
			t.Errorf("ClassifyOperation(%q) = %q, want %q", sql, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { ClassifyOperation("  /* c */ SELECT 1") }); n != 0 {
		t.Errorf("ClassifyOperation allocates %v times", n)
	}
}

func FuzzClassifyOperation(f *testing.F) {
	for _, s := range []string{"SELECT 1", "/* x */ insert", "-- c\nupdate", "((select", "/*/**/", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		op := ClassifyOperation(sql)
		if op >= numOperations {
			t.Fatalf("operation %d out of range", op)
		}
	})
}

func TestBucketQuantile(t *testing.T) {
	// 100 samples, all in the (0.005, 0.01] bucket.
	cum := make([]uint64, len(queryBuckets))
	for i, b := range queryBuckets {
		if b >= 0.01 {
			cum[i] = 100
		}
	}
	p := bucketQuantile(0.5, cum, 100)
	if p <= 0.005 || p > 0.01 {
		t.Fatalf("p50 = %v, want within (0.005, 0.01]", p)
	}
}

// TestClosedPoolAndNestedRetryErrors: after Close, Acquire and the helpers fail at once with
// ErrClosed ("pool closed"), not after DB_CONNECTION_TIMEOUT; a retried operation inside another
// reads "failed after" once.
func TestClosedPoolAndNestedRetryErrors(t *testing.T) {
	cfg := testConfig(t)
	cfg.ConnectTimeout = 5 * time.Second
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 30*time.Second)

	inner := errors.New("inner failure")
	err := h.m.Transaction(ctx, func(ctx context.Context, _ pgx.Tx) error {
		return h.m.Transaction(ctx, func(context.Context, pgx.Tx) error { return inner }, TxOptions{})
	}, TxOptions{})
	if !errors.Is(err, inner) || strings.Count(err.Error(), "failed after") != 1 {
		t.Errorf("nested Transaction: %q, want the inner failure with one \"failed after\"", err)
	}
	err = h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
		return h.m.ExecuteWithRetry(ctx, func(context.Context) error { return inner })
	})
	if !errors.Is(err, inner) || strings.Count(err.Error(), "failed after") != 1 {
		t.Errorf("nested ExecuteWithRetry: %q, want the inner failure with one \"failed after\"", err)
	}

	h.m.Close()
	start := time.Now()
	c, err := h.m.Acquire(ctx)
	if c != nil {
		c.Release()
	}
	if d := time.Since(start); d > time.Second || !errors.Is(err, ErrClosed) || err.Error() != "pool closed" {
		t.Errorf("Acquire after Close: %v after %v, want \"pool closed\" at once", err, d)
	}
	start = time.Now()
	err = h.m.Transaction(ctx, func(context.Context, pgx.Tx) error { return nil }, TxOptions{})
	if d := time.Since(start); d > time.Second || !errors.Is(err, ErrClosed) {
		t.Errorf("Transaction after Close: %v after %v, want ErrClosed at once", err, d)
	}
}
