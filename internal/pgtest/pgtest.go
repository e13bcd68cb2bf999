// Package pgtest runs a test package against a throwaway PostgreSQL cluster (internal/pgcluster)
// and adds what only tests need: Main for TestMain, with a goroutine leak check, skips for tests
// that must control the server, and polling for "eventually" assertions.
//
// Set TEST_DATABASE_URL to use an existing server instead: tests that need to stop or restart
// the server then skip.
package pgtest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgcluster"
)

// SuperuserPassword is the password of the cluster's superuser "postgres". Tests that check secret
// handling use passwords of their own.
const SuperuserPassword = pgcluster.SuperuserPassword

// Options tune a cluster. The zero value is a sensible test server.
type Options struct {
	// MaxConnections sets max_connections (default 100).
	MaxConnections int
	// Settings are extra postgresql.conf lines, e.g. "log_min_duration_statement = 0".
	Settings []string
	// CheckLeaks makes Main fail the package when goroutines are left after its tests passed.
	CheckLeaks bool
}

// Cluster is a running throwaway PostgreSQL server, or an external one from TEST_DATABASE_URL,
// with the helpers tests use.
type Cluster struct {
	*pgcluster.Cluster
}

// Start initialises and starts a cluster, or wraps TEST_DATABASE_URL when set.
func Start(opts Options) (*Cluster, error) {
	c, err := pgcluster.Start(pgcluster.Options{MaxConnections: opts.MaxConnections, Settings: opts.Settings})
	if err != nil {
		return nil, err
	}
	return &Cluster{c}, nil
}

// URLEnv is set by Main to the cluster's superuser URL, for code that cannot reach the package's
// cluster variable (godoc examples in an external test package).
const URLEnv = "PGTEST_DATABASE_URL"

// Main runs a test package's tests against one cluster (none when fuzzing) and removes it afterwards, also when tests
// fail. Use it from TestMain: os.Exit(pgtest.Main(m, &cluster, pgtest.Options{})).
func Main(m *testing.M, out **Cluster, opts Options) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing (go test -fuzz) runs only fuzz targets, which need no database; a cluster
		// per fuzz worker would only slow it down.
		return m.Run()
	}
	c, err := Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	*out = c
	os.Setenv(URLEnv, c.URL(""))
	code := m.Run()
	c.Close()
	if code == 0 && opts.CheckLeaks {
		// Every pool, server and stream a test started must be gone with it.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	return code
}

// RequireControl skips the test when the cluster cannot be stopped and started (TEST_DATABASE_URL).
func (c *Cluster) RequireControl(t testing.TB) {
	t.Helper()
	if c.External() {
		t.Skip("pgtest: TEST_DATABASE_URL is set; this fault test needs a server it can stop and start")
	}
}

// Sessions counts the server sessions whose application_name is app, failing t on error.
func (c *Cluster) Sessions(t testing.TB, app string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
	if err != nil {
		t.Fatalf("counting sessions of %s: %v", app, err)
	}
	return n
}

// WaitFor polls cond every 20ms until it returns true or the timeout passes. It reports whether
// cond became true; tests use it for "eventually" assertions without fixed sleeps.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
