package proxy

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// pgxSuites are pgx's own test packages that run through the proxy, with the tests that cannot
// pass through any pooler skipped: they terminate the server backend by the process ID the
// client got at login, which is the pooler's cancel key rather than the backend's.
var pgxSuites = []struct {
	pkg, bin, skip string
	min            int // passes expected at least, so that a suite that skips everything fails
}{
	// TestCancelRequestContextWatcherHandler's stress cases need each cancel to land within 1 s
	// (its DeadlineDelay) with ten of them in parallel: a timing test, which a loaded 2-core
	// machine under -race fails through any relay. The proxy's own tests cover cancellation.
	{"github.com/jackc/pgx/v5/pgconn", "pgconn.test", "^(TestConnCopyFromConnectionTerminated|TestCancelRequestContextWatcherHandler)$", 400},
	{"github.com/jackc/pgx/v5", "pgx.test", "^(TestFatalRxError|TestFatalTxError)$", 600},
}

// pgxSkipTransactionMode are the tests skipped in transaction mode, which see what transaction
// mode changes on purpose: two look for their prepared statement by name in
// pg_prepared_statements, where it has the proxy's name; TestBeginTxFatalErrorKillsConn ends its
// server backend and expects FATAL and a closed connection, where the client keeps its session
// with an in-band ERROR (serverloss.go).
const pgxSkipTransactionMode = "|^(TestPrepareHandlesTimeoutBetweenParseAndDescribe|TestPrepareWithDigestedNameHandlesTimeoutBetweenParseAndDescribe|TestBeginTxFatalErrorKillsConn)$"

// TestPgxSuite builds pgx's pgconn and pgx tests and runs them with PGX_TEST_DATABASE pointing
// at the proxy: hundreds of protocol cases (extended protocol modes, pipelines, batches, COPY,
// LISTEN/NOTIFY, cancellation, large objects, errors) from a client we did not write.
func TestPgxSuite(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	ctx := ctxTimeout(t, 400*time.Second)
	// The types and extensions pgx's test setup creates.
	for _, sql := range []string{"create extension if not exists hstore", "create extension if not exists ltree",
		"create domain uint64 as numeric(20,0)"} {
		if err := cluster.Exec(ctx, sql); err != nil && sqlState(err) != "42710" {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	dir := t.TempDir()
	args := []string{"test", "-c", "-o", dir + "/"}
	for _, s := range pgxSuites {
		args = append(args, s.pkg)
	}
	build := exec.CommandContext(ctx, goBin, args...)
	build.WaitDelay = 5 * time.Second
	if out, err := build.CombinedOutput(); err != nil {
		// pgx's test dependencies come from the module proxy; without it there is nothing of
		// ours to test here.
		t.Skipf("cannot build pgx's tests (module proxy unreachable?): %v\n%s", err, out)
	}
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			// Session pooling: every open client holds a server connection, and the two
			// suites run side by side, some tests with several connections each. Room for 40,
			// and a longer wait for one, so that a slow machine (sessions released late) does
			// not exhaust the pool. Transaction pooling shares 10.
			h := newHarness(t, func(pc *pool.Config, c *Config) {
				pc.MaxConns = 40
				pc.ConnectTimeout = 20 * time.Second
				c.PoolMode = mode
				if mode == PoolTransaction {
					pc.MaxConns = 10
				}
			})
			for _, s := range pgxSuites {
				skip := s.skip
				if mode == PoolTransaction {
					skip += pgxSkipTransactionMode
				}
				t.Run(filepath.Base(s.pkg), func(t *testing.T) {
					t.Parallel()
					out, err := runTool(t, ctx, []string{"PGX_TEST_DATABASE=" + h.superURL()}, filepath.Join(dir, s.bin),
						"-test.skip", skip, "-test.count", "1", "-test.timeout", "150s", "-test.v")
					passed := strings.Count(out, "--- PASS: Test")
					if err != nil || passed < s.min {
						t.Fatalf("%s tests through the proxy: %v, %d passed\n%s", s.pkg, err, passed, failures(out))
					}
					t.Logf("%d %s tests and subtests passed through the proxy (%d skipped for lack of other test servers)",
						passed, s.pkg, strings.Count(out, "--- SKIP: Test"))
				})
			}
		})
	}
}

// failures keeps the lines of a verbose go test output that explain failures.
func failures(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "=== ") || strings.Contains(l, "--- PASS") || strings.Contains(l, "--- SKIP") {
			continue
		}
		keep = append(keep, l)
	}
	return lastLines(strings.Join(keep, "\n"), 150)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
