package proxy

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// pgxSkip lists pgx pgconn tests that cannot pass through any pooler: they terminate the
// server backend by the process ID the client got, which is the pooler's cancel key, not the
// backend's (the test then waits for its 120 s deadline).
const pgxSkip = "^TestConnCopyFromConnectionTerminated$"

// TestPgxSuite builds pgx's pgconn tests and runs them with PGX_TEST_DATABASE pointing at the
// proxy.
func TestPgxSuite(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	ctx := ctxTimeout(t, 170*time.Second)
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.MaxConns = 10 })
	bin := filepath.Join(t.TempDir(), "pgconn.test")
	build := exec.CommandContext(ctx, goBin, "test", "-c", "-o", bin, "github.com/jackc/pgx/v5/pgconn")
	build.WaitDelay = 5 * time.Second
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building pgx's pgconn tests: %v\n%s", err, out)
	}
	out, err := runTool(t, ctx, []string{"PGX_TEST_DATABASE=" + h.superURL()}, bin, "-test.skip", pgxSkip,
		"-test.count", "1", "-test.timeout", "120s", "-test.v")
	passed := strings.Count(out, "--- PASS: Test")
	if err != nil || passed < 100 {
		t.Fatalf("pgx pgconn tests through the proxy: %v, %d passed\n%s", err, passed, failures(out))
	}
	t.Logf("%d pgx pgconn tests and subtests passed through the proxy (%d skipped for lack of other test servers)",
		passed, strings.Count(out, "--- SKIP: Test"))
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
