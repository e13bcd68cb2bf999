package statuspage

import (
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgsidecar/pgsidecar/api"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestStatusPageInChromium opens /status in a real headless Chromium against a running
// sidecar and checks that live values appear, and that a database outage shows as such.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromiumPath(t)
	cluster.RequireControl(t)
	apiCfg := api.DefaultConfig()
	apiCfg.StreamInterval, apiCfg.Window = 100*time.Millisecond, 2*time.Second
	s := startSidecar(t, testConfig(t), apiCfg)
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
	if !strings.Contains(st.SlowSQL, "SELECT pg_sleep($1)") {
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

	// The top statements table: SELECT 1 ran 20 times; clicking its row shows its histogram,
	// and the table keeps updating as the statement runs again.
	row := func(st pageState, text string) (string, []string) {
		for _, r := range st.Statements {
			if len(r.Cells) == 8 && r.Cells[0] == text {
				return r.Fingerprint, r.Cells
			}
		}
		return "", nil
	}
	fingerprint, cells := row(st, "SELECT $1")
	if fingerprint == "" || cells[1] != "select" || cells[2] != "20" || cells[3] != "0" {
		t.Fatalf("statements table: %+v", st.Statements)
	}
	if _, cells := row(st, "SELECT * FROM no_such_table"); cells == nil || cells[3] != "1" {
		t.Errorf("statements table lacks the failing statement with its error: %+v", st.Statements)
	}
	if st.Histogram.Shown {
		t.Errorf("a histogram shows before any row was clicked: %+v", st.Histogram)
	}
	if _, err := chromedp.Run(browser, chromedp.Click(chromedp.CSS(`#statements tr[data-fingerprint="`+fingerprint+`"]`))); err != nil {
		t.Fatalf("clicking the statement's row: %v", err)
	}
	sum := func(c []int) (n int) {
		for _, v := range c {
			n += v
		}
		return n
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { st = read(); return st.Histogram.Shown && sum(st.Histogram.Counts) == 20 }) {
		t.Fatalf("clicking the row shows no histogram of its 20 calls: %+v", st.Histogram)
	}
	if !strings.Contains(st.Histogram.Title, fingerprint) || len(st.Histogram.Counts) != 16 {
		t.Errorf("histogram of %s: %+v", fingerprint, st.Histogram)
	}
	for range 5 {
		if err := s.query(t, "SELECT 2"); err != nil {
			t.Fatal(err)
		}
	}
	if !pgtest.WaitFor(30*time.Second, func() bool {
		st = read()
		_, cells := row(st, "SELECT $1")
		return cells != nil && cells[2] == "25" && sum(st.Histogram.Counts) == 25
	}) {
		t.Fatalf("the statements table or the histogram did not update: %+v %+v", st.Statements, st.Histogram)
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
	cfg := api.DefaultConfig()
	cfg.StreamInterval = 100 * time.Millisecond
	h2, err := api.New(s.m, cfg, api.WithGatherer(s.reg))
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
