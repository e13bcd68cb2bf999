package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestDemo runs what `make demo` runs, for a short while: a throwaway cluster, the real binary
// with its proxy, and the POS traffic. While it runs, the sidecar must show proxied queries,
// top statements and a healthy pool; then everything must stop cleanly.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo runs for 15 seconds after its setup")
	}
	bin := build(t, "github.com/pgsidecar/pgsidecar")
	t.Setenv("DATABASE_URL", "")
	listen, appMetrics, proxyAddr := testutil.FreeAddr(t), testutil.FreeAddr(t), testutil.FreeAddr(t)
	done := make(chan error, 1)
	go func() { done <- run(bin, listen, appMetrics, proxyAddr, 2, 15*time.Second, true) }()

	want := map[string]func(string) bool{
		"/metrics": func(body string) bool {
			return hasPositive(body, `pgsidecar_query_duration_seconds_count{`, `pool="default"`) &&
				strings.Contains(body, "pg_stat_statements_calls_total{")
		},
		"/api/database/health": func(body string) bool {
			var h struct{ Status string }
			return json.Unmarshal([]byte(body), &h) == nil && h.Status == "healthy"
		},
		"/status": func(body string) bool { return strings.Contains(body, "<html") },
	}
	// Poll until everything showed or the demo ended; the bounds only catch a hang.
	pending := maps.Clone(want)
	last := map[string]string{}
	hang := time.After(3 * time.Minute)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var runErr error
	finished := false
	for len(pending) > 0 && !finished {
		select {
		case runErr = <-done:
			finished = true
		case <-hang:
			t.Fatal("the demo neither produced its data nor stopped within 3 minutes")
		case <-tick.C:
			for path, check := range pending {
				body, err := get("http://" + listen + path)
				if err == nil && check(body) {
					delete(pending, path)
				} else if last[path] = body; err != nil {
					last[path] = err.Error()
				}
			}
		}
	}
	for path := range pending {
		t.Errorf("%s never showed what the demo should produce; last answer:\n%.2000s", path, last[path])
	}
	if !finished {
		select {
		case runErr = <-done:
		case <-hang:
			t.Fatal("demo did not stop after its duration")
		}
	}
	if runErr != nil {
		t.Fatalf("demo: %v", runErr)
	}
}

// build compiles a package's command into a temporary directory and returns its path.
// TestDemoDoesNotLinkTesting: the demo is a program, not a test; linking the testing package
// would register its flags and pull test-only code into it (internal/pgtest does).
func TestDemoDoesNotLinkTesting(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || strings.HasSuffix(pkg, "/internal/pgtest") {
			t.Errorf("the demo links %s", pkg)
		}
	}
}

func build(t *testing.T, pkg string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command(goTool, "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// hasPositive reports whether a sample line starting with prefix and containing label has a
// value above zero.
func hasPositive(body, prefix, label string) bool {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, prefix) || !strings.Contains(line, label) {
			continue
		}
		f := strings.Fields(line)
		if v := f[len(f)-1]; v != "0" {
			return true
		}
	}
	return false
}

func get(url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestDemoAsCommand runs the demo as `make demo` does, as its own command in its own process
// group: Ctrl-C (SIGINT to the whole group, as a terminal sends it) must stop the traffic, the
// sidecar and the throwaway cluster in order and exit 0; and a DATABASE_URL without a password
// (trust authentication) must run without the proxy, which could not check clients.
func TestDemoAsCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL clusters")
	}
	sidecar, demo := build(t, "github.com/pgsidecar/pgsidecar"), build(t, "github.com/pgsidecar/pgsidecar/examples/demo")
	start := func(t *testing.T, dsn string, args ...string) (*exec.Cmd, *testutil.LogBuffer, string, chan error) {
		listen := testutil.FreeAddr(t)
		args = append([]string{"--sidecar", sidecar, "--listen", listen, "--app-metrics", testutil.FreeAddr(t),
			"--proxy", testutil.FreeAddr(t), "--workers", "2", "--quiet"}, args...)
		cmd := exec.Command(demo, args...)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var out testutil.LogBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		})
		return cmd, &out, listen, exited
	}
	wait := func(t *testing.T, exited chan error, out *testutil.LogBuffer) {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("demo: %v\n%s", err, out.String())
			}
		case <-time.After(3 * time.Minute): // only catches a hang
			t.Fatalf("demo did not stop\n%s", out.String())
		}
	}

	t.Run("ctrl-c", func(t *testing.T) {
		cmd, out, listen, exited := start(t, "")
		// Wait for proxied traffic to be measured, so Ctrl-C lands in the middle of it.
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		hang := time.After(3 * time.Minute)
		for busy := false; !busy; {
			select {
			case err := <-exited:
				t.Fatalf("demo ended before Ctrl-C: %v\n%s", err, out.String())
			case <-hang:
				t.Fatalf("no proxied traffic\n%s", out.String())
			case <-tick.C:
				body, err := get("http://" + listen + "/metrics")
				busy = err == nil && hasPositive(body, `pgsidecar_query_duration_seconds_count{`, `pool="default"`)
			}
		}
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		wait(t, exited, out)
		log := out.String()
		for _, want := range []string{"demo: stopping:", "demo: pgsidecar stopped", "demo: throwaway cluster stopped and removed"} {
			if !strings.Contains(log, want) {
				t.Errorf("output lacks %q:\n%s", want, log)
			}
		}
		_, data, ok := strings.Cut(log, "(data in ")
		data, _, _ = strings.Cut(data, ")")
		if !ok || data == "" {
			t.Fatalf("output does not say where the cluster's data is:\n%s", log)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("cluster data %s still there after Ctrl-C (stat: %v)", data, err)
		}
		if c, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
			c.Close()
			t.Errorf("the sidecar still listens on %s after Ctrl-C", listen)
		}
	})

	t.Run("no password", func(t *testing.T) {
		c, err := pgtest.Start(pgtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The unix socket is trusted; the URL has no password.
		dsn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.Dir(), c.Port())
		_, out, _, exited := start(t, dsn, "--duration", "5s")
		wait(t, exited, out)
		if log := out.String(); !strings.Contains(log, "no proxy, all traffic goes direct") || !strings.Contains(log, "demo: stopping:") {
			t.Errorf("output does not say the demo ran without the proxy:\n%s", log)
		}
	})
}
