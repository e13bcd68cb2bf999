package main

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestDemo runs what `make demo` runs, for a short while: a throwaway cluster, the real binary
// with its proxy, and the POS traffic. While it runs, the sidecar must show proxied queries,
// top statements and a healthy pool; then everything must stop cleanly.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo runs for 15 seconds after its setup")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	bin := filepath.Join(t.TempDir(), "pgsidecar")
	if out, err := exec.Command(goTool, "build", "-o", bin, "github.com/pgsidecar/pgsidecar").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
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
