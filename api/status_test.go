package api

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// chromiumPath finds Debian's chromium. On a Debian machine as root it is required (make test
// installs it); elsewhere the browser test skips with a clear message.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if _, err := os.Stat("/etc/debian_version"); err == nil && os.Geteuid() == 0 {
		t.Fatal("chromium is not installed: run scripts/deps.sh (apt-get install chromium)")
	}
	t.Skip("chromium not found; install it (Debian: apt-get install chromium) to run the status page test")
	return ""
}

// pageState is what the test reads from the page.
type pageState struct {
	Snapshots   int    `json:"snapshots"`
	Status      string `json:"status"`
	PoolName    string `json:"poolName"`
	Utilization string `json:"utilization"`
	Used        string `json:"used"`
	Max         string `json:"max"`
	P50         string `json:"p50"`
	P99         string `json:"p99"`
	Total       string `json:"total"`
	ErrorRate   string `json:"errorRate"`
	Banner      string `json:"banner"`
	SlowSQL     string `json:"slowSql"`
	Lines       int    `json:"lines"`
	Styled      bool   `json:"styled"`
	Foreign     []string
}

const readPage = `(() => {
  const t = id => document.getElementById(id).textContent;
  return {
    snapshots: Number(document.body.getAttribute("data-snapshots") || 0),
    status: t("status"), poolName: t("pool-name"), utilization: t("utilization"),
    used: t("used"), max: t("max"), p50: t("p50"), p99: t("p99"), total: t("total"),
    errorRate: t("error-rate-total"), banner: t("banner"), slowSql: t("slow"),
    lines: document.querySelectorAll("svg.chart polyline").length,
    styled: getComputedStyle(document.getElementById("status")).color === "rgb(255, 255, 255)",
    Foreign: performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith(location.origin)),
  };
})()`

// newBrowser starts a headless Chromium with a fresh profile, closed at test end. The flags
// keep it from reaching out to the network, which is closed in CI and would stall it.
func newBrowser(t *testing.T, bin string) context.Context {
	t.Helper()
	profile, err := os.MkdirTemp("", "api-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(profile) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	t.Cleanup(cancelAlloc)
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	return browser
}

func readPageState(t *testing.T, browser context.Context) pageState {
	t.Helper()
	p, err := chromedp.Run(browser, chromedp.Evaluate[pageState](readPage))
	if err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	return p
}

// TestStatusPageInChromium opens /status in a real headless Chromium against a running
// sidecar and checks that live values appear, and that a database outage shows as such.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromiumPath(t)
	cluster.RequireControl(t)
	s := startSidecar(t, testConfig(t), false, func(c *Config) { c.StreamInterval = 100 * time.Millisecond; c.Window = 2 * time.Second })
	s.waitHealthy(t)
	for range 20 {
		if err := s.query(t, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.query(t, "SELECT pg_sleep(1.05)"); err != nil {
		t.Fatal(err)
	}
	if err := s.query(t, "SELECT * FROM no_such_table"); err == nil {
		t.Fatal("query of a missing table succeeded")
	}

	browser := newBrowser(t, bin)
	resp, err := chromedp.Run(browser, chromedp.NavigateResponse(s.srv.URL+"/status"))
	if err != nil {
		t.Fatalf("opening /status in chromium: %v", err)
	}
	if resp == nil || resp.Status != http.StatusOK {
		t.Fatalf("/status answered %+v", resp)
	}

	var st pageState
	read := func() pageState { return readPageState(t, browser) }
	// Live values: several snapshots arrived and the page shows this pool's real figures.
	if !pgtest.WaitFor(60*time.Second, func() bool { st = read(); return st.Snapshots >= 3 && st.Total == "22" }) {
		t.Fatalf("no live values on the page: %+v", st)
	}
	if st.Status != "healthy" || st.PoolName != "pool api" || st.Used != "0" || st.Max != "4" || st.Banner != "" {
		t.Errorf("page state: %+v", st)
	}
	if !regexp.MustCompile(`^\d+(\.\d+)?%$`).MatchString(st.Utilization) ||
		!strings.HasSuffix(st.P50, "ms") || !strings.HasSuffix(st.P99, "s") || st.ErrorRate != "4.55%" {
		t.Errorf("figures on the page: %+v", st)
	}
	if !strings.Contains(st.SlowSQL, "SELECT pg_sleep(1.05)") {
		t.Errorf("slow query list: %q", st.SlowSQL)
	}
	if !st.Styled {
		t.Error("the page's style block was not applied")
	}
	if st.Lines < 5 {
		t.Errorf("%d chart lines drawn, want 5 (utilisation, three percentiles, errors)", st.Lines)
	}
	if len(st.Foreign) > 0 {
		t.Errorf("the page loaded outside resources: %v", st.Foreign)
	}
	seen := st.Snapshots
	if !pgtest.WaitFor(30*time.Second, func() bool { return read().Snapshots >= seen+3 }) {
		t.Fatalf("the page stopped updating at %d snapshots", seen)
	}

	// The database goes away: the page must say so and keep updating.
	t.Cleanup(func() { _ = cluster.StartAgain() })
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	_ = s.query(t, "SELECT 1")
	if !pgtest.WaitFor(60*time.Second, func() bool {
		st = read()
		return st.Status == "unhealthy" && strings.Contains(st.Banner, "Database down")
	}) {
		t.Fatalf("the page does not show the outage: %+v", st)
	}
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	// Back up; the first check after a restart may be slow enough to count as degraded.
	if !pgtest.WaitFor(60*time.Second, func() bool {
		st = read()
		return (st.Status == "healthy" || st.Status == "degraded") && !strings.Contains(st.Banner, "Database down")
	}) {
		t.Fatalf("the page does not show the recovery: %+v", st)
	}

	// The sidecar goes away (its streams end, new ones are refused) and comes back: the page
	// says it lost the sidecar, then reconnects by itself.
	// A browser's EventSource gives up for good after an error answer; the page must start
	// a new one, so wait until it has been refused twice.
	var refused atomic.Int32
	old := s.mux.Load()
	counting := http.NewServeMux()
	counting.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/database/live-metrics" {
			refused.Add(1)
		}
		old.ServeHTTP(w, r)
	})
	s.mux.Store(counting)
	s.h.Close()
	if !pgtest.WaitFor(60*time.Second, func() bool {
		st = read()
		return strings.Contains(st.Banner, "Sidecar unreachable") && refused.Load() >= 2
	}) {
		t.Fatalf("the page does not show the lost stream or does not retry (%d attempts): %+v", refused.Load(), st)
	}
	seen = st.Snapshots
	cfg := DefaultConfig()
	cfg.StreamInterval = 100 * time.Millisecond
	h2, err := New(s.m, cfg, WithGatherer(s.reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h2.Close)
	mux := http.NewServeMux()
	h2.Register(mux)
	s.mux.Store(mux)
	if !pgtest.WaitFor(60*time.Second, func() bool {
		st = read()
		return st.Snapshots > seen && !strings.Contains(st.Banner, "unreachable")
	}) {
		t.Fatalf("the page did not reconnect: %+v", st)
	}
}
