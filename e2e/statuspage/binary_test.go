package statuspage

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgsidecar/pgsidecar/api"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestBinaryLandingPageToStatus runs the real pgsidecar binary: the landing page links to
// /status, a browser following the link gets live values, the collectors feed
// detailed-metrics, and SIGTERM stops the binary promptly while the page holds a stream open.
func TestBinaryLandingPageToStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	chromium := chromiumPath(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "pgsidecar")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("..", "..") // the main module, built as `make build` does
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	addr := testutil.FreeAddr(t)
	base := "http://" + addr
	logs := &testutil.LogBuffer{}
	cmd := exec.Command(bin, "--web.listen-address="+addr, "--db.metrics-log-interval=0")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+cluster.URL(""), "DB_MIN_CONNECTIONS=2", "DB_MAX_CONNECTIONS=4")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if !pgtest.WaitFor(60*time.Second, func() bool { code, _ := get("/readyz"); return code == http.StatusOK }) {
		code, body := get("/readyz")
		t.Fatalf("/readyz never became 200 (%d %s); logs:\n%s", code, body, logs.String())
	}
	if code, body := get("/"); code != 200 || !strings.Contains(body, `href="/status"`) {
		t.Fatalf("landing page has no link to /status: %d\n%s", code, body)
	}
	code, body := get("/api/database/detailed-metrics")
	var det api.DetailedMetricsResponse
	if code != 200 || json.Unmarshal([]byte(body), &det) != nil || det.Up == nil || !*det.Up ||
		det.Database == nil || det.Database.SizeBytes == nil || *det.Database.SizeBytes <= 0 {
		t.Fatalf("detailed-metrics from the binary's collectors: %d %s", code, body)
	}

	browser := newBrowser(t, chromium)
	if _, err := chromedp.Run(browser, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("opening the landing page: %v", err)
	}
	if _, err := chromedp.Run(browser, chromedp.Click(`a[href="/status"]`)); err != nil {
		t.Fatalf("following the Status link: %v", err)
	}
	var st pageState
	if !pgtest.WaitFor(60*time.Second, func() bool {
		// The new page must be there and parsed: right after the click, location already says
		// /status while its elements do not exist yet.
		ready, err := chromedp.Run(browser, chromedp.Evaluate[bool](`location.pathname === "/status" && document.readyState === "complete"`))
		if err != nil || !ready {
			return false
		}
		st = readPageState(t, browser)
		return st.Snapshots >= 2
	}) {
		t.Fatalf("no live values after following the link: %+v", st)
	}
	if st.Status != string(pool.StatusHealthy) || st.PoolName != "pool default" || st.Max != "4" {
		t.Errorf("status page of the binary: %+v", st)
	}

	// Shut down with the page's stream open: the stream must not hold up the server.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		if cmd.ProcessState.ExitCode() != 0 {
			t.Errorf("exit code %d; logs:\n%s", cmd.ProcessState.ExitCode(), logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the binary did not stop after SIGTERM; logs:\n%s", logs.String())
	}
	if l := logs.String(); strings.Contains(l, "did not stop cleanly") || strings.Contains(l, pgtest.SuperuserPassword) {
		t.Errorf("shutdown logs:\n%s", l)
	}
}
