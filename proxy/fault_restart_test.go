package proxy

import (
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

var abortedRE = regexp.MustCompile(`client \d+ (?:script \d+ )?aborted`)

// TestRestartWithoutPauseUnderPgbench: pgbench -S, 32 clients over 4 server connections, PostgreSQL
// restarted (fast) in the middle of the run: at most the 4 clients with a statement in flight
// see an error, with the simple protocol and with prepared statements.
func TestRestartWithoutPauseUnderPgbench(t *testing.T) {
	cluster.RequireControl(t)
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Skip("pgbench not installed (scripts/deps.sh installs it)")
	}
	ctx := ctxTimeout(t, 150*time.Second)
	if err := cluster.Exec(ctx, "create database restart_bench"); err != nil && sqlState(err) != "42P04" {
		t.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable"}
	if out, err := runToolB(ctx, env, "", pgbench, "-i", "-q", "-s", "1", "-h", "127.0.0.1",
		"-p", strconv.Itoa(cluster.Port()), "-U", "postgres", "restart_bench"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []string{"simple", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			h := newTxHarness(t, 4, func(pc *pool.Config, _ *Config) {
				pc.DatabaseURL = cluster.URL("restart_bench")
				pc.ConnectTimeout = 30 * time.Second
			})
			outc := make(chan string, 1)
			go func() {
				out, _ := runToolB(ctx, env, "", pgbench, "-S", "-n", "-M", mode, "-c", "32", "-j", "2", "-T", "8",
					"-h", "127.0.0.1", "-p", strconv.Itoa(h.port), "-U", "postgres", "restart_bench")
				outc <- out
			}()
			time.Sleep(3 * time.Second)
			// Down for a moment, as a restart with a checkpoint to write is: new connections are
			// refused, then get 57P03 while the server starts.
			if err := cluster.Stop("fast"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if err := cluster.StartAgain(); err != nil {
				t.Fatal(err)
			}
			out := <-outc
			aborted := len(abortedRE.FindAllString(out, -1))
			t.Logf("-M %s: %d of 32 clients aborted\n%s", mode, aborted, out)
			if aborted > 4 {
				t.Errorf("%d clients aborted, want at most 4\n%s", aborted, out)
			}
			if regexp.MustCompile(`aborted .*FATAL`).MatchString(out) {
				t.Errorf("a client got the server's FATAL rather than an in-band ERROR:\n%s", out)
			}
			if !regexp.MustCompile(`number of transactions actually processed: [1-9]`).MatchString(out) {
				t.Errorf("no transaction processed:\n%s", out)
			}
		})
	}
}
