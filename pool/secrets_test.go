package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// leakPW is the password of the errors test: every character URL and DSN handling tends to get
// wrong, and a tail no error text has by chance.
const leakPW = "Zq9:p@ss/w%rd-Leak7"

// leakForms are the shapes leakPW could show up in.
var leakForms = []string{leakPW, url.QueryEscape(leakPW), url.PathEscape(leakPW),
	strings.TrimPrefix(url.UserPassword("", leakPW).String(), ":"), "Leak7"}

// assertScrubbed fails the test when any form of leakPW is in text.
func assertScrubbed(t *testing.T, what, text string) {
	t.Helper()
	for _, f := range leakForms {
		if strings.Contains(text, f) {
			t.Errorf("%s shows the password (%q): %s", what, f, text)
			return
		}
	}
}

// assertErrScrubbed checks err in every way a caller might print it.
func assertErrScrubbed(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	for _, verb := range []string{"%v", "%+v", "%s", "%q", "%#v"} {
		assertScrubbed(t, what+" "+verb, fmt.Sprintf(verb, err))
	}
	var ae *AcquireError
	if errors.As(err, &ae) && ae.Cause != nil {
		assertScrubbed(t, what+" (AcquireError.Cause)", fmt.Sprintf("%+v", ae.Cause))
	}
	var re *RetryError
	if errors.As(err, &re) {
		assertScrubbed(t, what+" (RetryError.Err)", fmt.Sprintf("%+v", re.Err))
	}
}

// echo is a statement whose error quotes the password: the server echoes the bad input.
const echo = "SELECT '" + leakPW + "'::int"

// TestErrorsNeverShowThePassword walks the error paths of the pool that the bad-input and fault
// suites reach, with the password in DATABASE_URL (as URL, as key=value DSN and in PGPASSWORD),
// and looks for it in every error, Health, the logs, the metrics, Config and the slow query list.
func TestErrorsNeverShowThePassword(t *testing.T) {
	ctx := ctxTimeout(t, 3*time.Minute)
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS leaky; CREATE ROLE leaky LOGIN PASSWORD '"+leakPW+"' CONNECTION LIMIT 2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS leaky") })
	good := cluster.URLFor("leaky", leakPW, "postgres")
	u, _ := url.Parse(good)
	port := u.Port()

	t.Run("bad DSN", func(t *testing.T) {
		for _, dsn := range []string{
			"postgres://leaky:" + leakPW + "@127.0.0.1:notaport/postgres",
			"postgres://leaky:" + leakPW + "@127.0.0.1:" + port + "/postgres?sslmode=bogus",
			"host=127.0.0.1 password='" + leakPW,
			"host=127.0.0.1 port=" + leakPW + " password=" + leakPW,
			"postgres:/leaky:" + leakPW + "@127.0.0.1/postgres",
			leakPW,
		} {
			cfg := testConfig(t)
			cfg.DatabaseURL = dsn
			_, err := New(cfg, WithLogger(discardLogger()))
			assertErrScrubbed(t, "New("+dsn+")", err)
		}
	})

	for _, v := range []struct{ name, dsn, pgpassword string }{
		{"url", good, ""},
		{"keyvalue", fmt.Sprintf("host=127.0.0.1 port=%s user=leaky password='%s' dbname=postgres sslmode=disable", port, leakPW), ""},
		{"pgpassword", fmt.Sprintf("postgres://leaky@127.0.0.1:%s/postgres?sslmode=disable", port), leakPW},
	} {
		t.Run(v.name, func(t *testing.T) {
			if v.pgpassword != "" {
				t.Setenv("PGPASSWORD", v.pgpassword)
			}
			cfg := testConfig(t)
			cfg.DatabaseURL = v.dsn
			cfg.MinConns, cfg.MaxConns = 1, 1
			cfg.RetryAttempts = 2
			cfg.ConnectTimeout = 500 * time.Millisecond
			cfg.SlowQueryThreshold = time.Nanosecond
			h := newManager(t, cfg)
			// Every check is slower than the 1 ns slow query threshold: degraded, not healthy.
			if !pgtest.WaitFor(30*time.Second, func() bool { return h.m.Health().Status == StatusDegraded }) {
				t.Fatalf("pool never connected: %+v", h.m.Health())
			}
			walkErrorPaths(ctx, t, h)
			assertScrubbed(t, "Config().DatabaseURL", h.m.Config().DatabaseURL)
			for _, q := range h.m.SlowQueries() {
				assertScrubbed(t, "slow query", q.SQL)
			}
			assertScrubbed(t, "logs", h.log.String())
			var metrics bytes.Buffer
			mfs, err := h.reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if _, err := expfmt.MetricFamilyToText(&metrics, mf); err != nil {
					t.Fatal(err)
				}
			}
			assertScrubbed(t, "metrics", metrics.String())
		})
	}

	t.Run("wrong password and unreachable", func(t *testing.T) {
		for name, dsn := range map[string]string{
			"wrong password": cluster.URLFor("postgres", leakPW, "postgres"),
			"unreachable":    "postgres://leaky:" + url.PathEscape(leakPW) + "@127.0.0.1:1/postgres?sslmode=disable",
		} {
			cfg := testConfig(t)
			cfg.DatabaseURL = dsn
			cfg.ConnectTimeout = 500 * time.Millisecond
			h := newManager(t, cfg)
			_, err := h.m.Acquire(ctx)
			var ae *AcquireError
			if !errors.As(err, &ae) || ae.Cause == nil || !ae.Opening {
				t.Errorf("%s: Acquire = %v, want an AcquireError with the connection error", name, err)
			}
			assertErrScrubbed(t, name+": Acquire", err)
			_, err = h.m.Warmup(ctx, 1)
			assertErrScrubbed(t, name+": Warmup", err)
			assertErrScrubbed(t, name+": ExecuteWithRetry", h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
				_, err := h.m.Pool().Exec(ctx, "SELECT 1")
				return err
			}))
			_, err = h.m.NewMonitorPool(MonitorOptions{})
			if err != nil {
				assertErrScrubbed(t, name+": NewMonitorPool", err)
			}
			if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().LastError != "" }) {
				t.Fatalf("%s: no health error", name)
			}
			assertScrubbed(t, name+": Health().LastError", h.m.Health().LastError)
			assertScrubbed(t, name+": logs", h.log.String())
		}
	})

	t.Run("database stopped", func(t *testing.T) {
		cluster.RequireControl(t)
		cfg := testConfig(t)
		cfg.DatabaseURL = good
		cfg.MinConns, cfg.MaxConns = 1, 2
		cfg.ConnectTimeout = 500 * time.Millisecond
		h := newManager(t, cfg)
		h.waitHealthy(t)
		if err := cluster.Stop("fast"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := cluster.StartAgain(); err != nil {
				t.Fatal(err)
			}
		}()
		assertErrScrubbed(t, "ExecuteWithRetry", h.m.ExecuteWithRetry(ctx, func(ctx context.Context) error {
			_, err := h.m.Pool().Exec(ctx, "SELECT 1")
			return err
		}))
		_, err := h.m.Acquire(ctx)
		assertErrScrubbed(t, "Acquire", err)
		if !pgtest.WaitFor(10*time.Second, func() bool { return h.m.Health().Status == StatusUnhealthy }) {
			t.Fatal("never unhealthy")
		}
		assertScrubbed(t, "Health().LastError", h.m.Health().LastError)
		assertScrubbed(t, "logs", h.log.String())
	})
}

// walkErrorPaths runs every exported error-returning method of a healthy pool of one connection
// into an error.
func walkErrorPaths(ctx context.Context, t *testing.T, h *harness) {
	m := h.m
	exec := func(sql string) func(ctx context.Context) error {
		return func(ctx context.Context) error { _, err := m.Pool().Exec(ctx, sql); return err }
	}
	assertErrScrubbed(t, "ExecuteWithRetry", m.ExecuteWithRetry(ctx, exec(echo)))
	_, err := ExecuteWithRetryValue(ctx, m, func(ctx context.Context) (int, error) {
		var n int
		return n, m.Pool().QueryRow(ctx, echo).Scan(&n)
	})
	assertErrScrubbed(t, "ExecuteWithRetryValue", err)
	assertErrScrubbed(t, "Transaction", m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, echo)
		return err
	}, TxOptions{}))
	for _, r := range BatchExecute(ctx, m, []func(ctx context.Context) (int, error){
		func(ctx context.Context) (int, error) { return 0, exec(echo)(ctx) },
	}, 1) {
		assertErrScrubbed(t, "BatchExecute", r.Err)
	}
	_, err = m.ExecPipeline(ctx, []Statement{{SQL: "SELECT 1"}, {SQL: echo}})
	assertErrScrubbed(t, "ExecPipeline", err)
	_, err = m.Warmup(ctx, 2)
	assertErrScrubbed(t, "Warmup out of range", err)

	side, err := m.NewMonitorPool(MonitorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = side.Exec(ctx, echo)
	assertErrScrubbed(t, "ScrubError of a monitor pool query", m.ScrubError(err))
	side.Close() // its connection counts against the role's limit

	// The only connection is taken: acquire timeouts.
	held, err := m.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Acquire(ctx)
	var ae *AcquireError
	if !errors.As(err, &ae) || ae.Cause != nil || ae.Opening {
		t.Errorf("Acquire on a busy pool = %v, want an AcquireError without a cause", err)
	}
	assertErrScrubbed(t, "Acquire (busy)", err)
	assertErrScrubbed(t, "ExecuteWithRetry (busy)", m.ExecuteWithRetry(ctx, exec("SELECT 1")))
	assertErrScrubbed(t, "Transaction (busy)", m.Transaction(ctx, func(context.Context, pgx.Tx) error { return nil },
		TxOptions{MaxWait: 100 * time.Millisecond}))
	_, err = m.ExecPipeline(ctx, []Statement{{SQL: "SELECT 1"}})
	assertErrScrubbed(t, "ExecPipeline (busy)", err)

	// The server is full: no new connection for the role (53300) and the pool's own closed.
	if err := cluster.Exec(ctx, "ALTER ROLE leaky CONNECTION LIMIT 0"); err != nil {
		t.Fatal(err)
	}
	held.Conn().Close(ctx)
	held.Release()
	_, err = m.Acquire(ctx)
	if SQLState(err) != "53300" {
		t.Errorf("Acquire while the server is full = %v (SQLSTATE %s), want 53300", err, SQLState(err))
	}
	assertErrScrubbed(t, "Acquire (server full)", err)
	assertErrScrubbed(t, "ExecuteWithRetry (server full)", m.ExecuteWithRetry(ctx, exec("SELECT 1")))
	if err := cluster.Exec(ctx, "ALTER ROLE leaky CONNECTION LIMIT 2"); err != nil {
		t.Fatal(err)
	}

	// Transaction timeout.
	assertErrScrubbed(t, "Transaction timeout", m.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT pg_sleep(5), '"+leakPW+"'")
		return err
	}, TxOptions{Timeout: 100 * time.Millisecond}))

	assertScrubbed(t, "Health().LastError", m.Health().LastError)
}
