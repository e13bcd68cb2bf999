package statuspage

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
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
	Statements  []struct {
		Fingerprint string   `json:"fingerprint"`
		Cells       []string `json:"cells"`
	} `json:"statements"`
	Histogram struct {
		Shown  bool   `json:"shown"`
		Title  string `json:"title"`
		Counts []int  `json:"counts"`
	} `json:"histogram"`
	Lines   int  `json:"lines"`
	Styled  bool `json:"styled"`
	Foreign []string
}

const readPage = `(() => {
  const t = id => document.getElementById(id).textContent;
  return {
    snapshots: Number(document.body.getAttribute("data-snapshots") || 0),
    status: t("status"), poolName: t("pool-name"), utilization: t("utilization"),
    used: t("used"), max: t("max"), p50: t("p50"), p99: t("p99"), total: t("total"),
    errorRate: t("error-rate-total"), banner: t("banner"), slowSql: t("slow"),
    statements: [...document.querySelectorAll("#statements tr[data-fingerprint]")].map(tr => ({
      fingerprint: tr.getAttribute("data-fingerprint"), cells: [...tr.cells].map(c => c.textContent) })),
    histogram: { shown: document.getElementById("statement-histogram").className === "shown",
      title: t("histogram-fingerprint"),
      counts: [...document.querySelectorAll("#chart-histogram rect")].map(r => Number(r.getAttribute("data-count"))) },
    lines: document.querySelectorAll("svg.chart polyline").length,
    styled: getComputedStyle(document.getElementById("status")).color === "rgb(255, 255, 255)",
    Foreign: performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith(location.origin)),
  };
})()`

// newBrowser starts a headless Chromium with a fresh profile, closed at test end. The flags
// keep it from reaching out to the network, which is closed in CI and would stall it.
func newBrowser(t *testing.T, bin string) context.Context {
	t.Helper()
	profile, err := os.MkdirTemp("", "statuspage-chromium-")
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
