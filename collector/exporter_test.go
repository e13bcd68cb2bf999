package collector

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// brokenCollector panics; it is registered off by default and only switched on in a test.
type brokenCollector struct{}

func (brokenCollector) Update(context.Context, *Scrape) error { panic("broken on purpose") }

// duplicateCollector emits the same series twice.
type duplicateCollector struct{ d *prometheus.Desc }

func (c duplicateCollector) Update(_ context.Context, s *Scrape) error {
	s.Gauge(c.d, 1, "a")
	s.Gauge(c.d, 2, "a")
	s.Gauge(c.d, 3, "b")
	s.Gauge(c.d, 4, "\xff") // invalid UTF-8
	return nil
}

func init() {
	register("test_broken", false, "test only", func(Options) Collector { return brokenCollector{} })
	register("test_duplicate", false, "test only", func(Options) Collector {
		return duplicateCollector{d: gaugeDesc("test_duplicate_value", "Test.", "k")}
	})
}

func TestBrokenCollectorAndDuplicatesKeepTheScrape(t *testing.T) {
	e := newEnv(t, "", func(c *Config) {
		c.Enabled = map[string]bool{"test_broken": true, "test_duplicate": true, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	if s.status != http.StatusOK {
		t.Fatalf("status %d", s.status)
	}
	for name, want := range map[string]float64{"test_broken": 0, "test_duplicate": 1, "activity": 1, "database": 1} {
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != want {
			t.Errorf("success{%s} = %v, want %v", name, got, want)
		}
	}
	if got := s.value(t, "test_duplicate_value", map[string]string{"k": "a"}); got != 1 {
		t.Errorf("first of the duplicates = %v, want 1 (the first one wins)", got)
	}
	if got := s.value(t, "test_duplicate_value", map[string]string{"k": "b"}); got != 3 {
		t.Errorf("other series = %v, want 3", got)
	}
	if got := s.value(t, "pgsidecar_collector_dropped_series_total", map[string]string{"reason": "duplicate"}); got != 1 {
		t.Errorf("dropped duplicates = %v, want 1", got)
	}
	if got := s.value(t, "pgsidecar_collector_dropped_series_total", map[string]string{"reason": "invalid"}); got != 1 {
		t.Errorf("dropped invalid = %v, want 1", got)
	}
	if !strings.Contains(e.log.String(), "broken on purpose") {
		t.Errorf("the panic was not logged:\n%s", e.log.String())
	}
	// A collector that keeps failing the same way is logged once, not on every scrape.
	e.scrape(t, 0, 20*time.Second)
	if n := strings.Count(e.log.String(), "broken on purpose"); n != 1 {
		t.Errorf("the same failure was logged %d times", n)
	}
}

func TestUnknownCollectorIsAnError(t *testing.T) {
	err := testConfig(func(c *Config) { c.Enabled = map[string]bool{"nope": true} }).Validate()
	if err == nil || !strings.Contains(err.Error(), `unknown collector "nope"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestCustomQueryValues(t *testing.T) {
	path := writeQueries(t, `
pg_custom:
  query: |
    SELECT * FROM (VALUES
      ('a', 1::int, 2.5::numeric, NULL::float8, true, interval '1 minute 30 seconds', 'x'),
      (NULL, 2::int, NULL::numeric, 4::float8, false, NULL::interval, '7')) AS t(name, n, num, maybe, flag, iv, txt)
  metrics:
    - name:
        usage: LABEL
        description: Name.
    - n:
        usage: COUNTER
        description: Integer.
    - num:
        usage: GAUGE
        description: Numeric.
    - maybe:
        usage: GAUGE
        description: Sometimes NULL.
    - flag:
        usage: GAUGE
        description: Boolean.
    - iv:
        usage: GAUGE
        description: Interval in seconds.
    - txt:
        usage: GAUGE
        description: Text; a number only in the second row.
pg_custom_div:
  query: SELECT 1 / (random() < 2)::int - 1 / 0 AS x
  metrics:
    - x:
        usage: GAUGE
pg_custom_syntax:
  query: SELEC 1 AS x
  timeout: 1s
  metrics:
    - x:
        usage: GAUGE
pg_custom_ok:
  query: SELECT 42 AS answer
  metrics:
    - answer:
        usage: GAUGE
        description: Still exported when another query has bad values.
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	a, b := map[string]string{"name": "a"}, map[string]string{"name": ""}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   []float64
	}{
		{"pg_custom_n", a, []float64{1}},
		{"pg_custom_n", b, []float64{2}}, // a NULL label is an empty label
		{"pg_custom_num", a, []float64{2.5}},
		{"pg_custom_num", b, nil}, // NULL: no sample, not 0
		{"pg_custom_maybe", a, nil},
		{"pg_custom_maybe", b, []float64{4}},
		{"pg_custom_flag", a, []float64{1}},
		{"pg_custom_flag", b, []float64{0}},
		{"pg_custom_iv", a, []float64{90}},
		{"pg_custom_txt", a, nil}, // 'x' is not a number
		{"pg_custom_txt", b, []float64{7}},
		{"pg_custom_ok_answer", nil, []float64{42}},
	} {
		got := s.values(c.metric, c.labels)
		if len(got) != len(c.want) || (len(got) == 1 && got[0] != c.want[0]) {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	if s.families["pg_custom_n"].GetType().String() != "COUNTER" {
		t.Errorf("pg_custom_n type %v", s.families["pg_custom_n"].GetType())
	}
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_custom"}); got != 1 {
		t.Errorf("errors{pg_custom} = %v, want 1", got)
	}
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_custom_ok"}); got != 0 {
		t.Errorf("errors{pg_custom_ok} = %v, want 0", got)
	}
	// Failing queries in the middle of the pipeline fail alone.
	for _, q := range []string{"pg_custom_div", "pg_custom_syntax"} {
		if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": q}); got != 1 {
			t.Errorf("errors{%s} = %v, want 1", q, got)
		}
	}
	for _, msg := range []string{"division by zero", `syntax error at or near \"SELEC\"`} {
		if !strings.Contains(e.log.String(), msg) {
			t.Errorf("log lacks %q:\n%s", msg, e.log.String())
		}
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 0 {
		t.Errorf("queries success = %v, want 0 while one query has bad values", got)
	}
	if !strings.Contains(e.log.String(), "column txt: a value of type text cannot be a metric value") {
		t.Errorf("no clear error in the log:\n%s", e.log.String())
	}
}

func TestCustomQueryCacheAndVersionBounds(t *testing.T) {
	path := writeQueries(t, `
pg_cached:
  query: SELECT nextval('cache_seq')::float8 AS n
  cache_seconds: 3600
  metrics:
    - n:
        usage: GAUGE
pg_uncached:
  query: SELECT nextval('cache_seq')::float8 AS n
  metrics:
    - n:
        usage: GAUGE
pg_future:
  query: SELECT this_does_not_exist_before_99()
  min_version: 99
  metrics:
    - x:
        usage: GAUGE
pg_past:
  query: SELECT this_did_not_exist_after_12()
  max_version: 12
  metrics:
    - x:
        usage: GAUGE
`)
	ctx := ctxTimeout(t, 10*time.Second)
	if err := cluster.Exec(ctx, "CREATE SEQUENCE cache_seq"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP SEQUENCE cache_seq") })
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	first := e.scrape(t, 0, 20*time.Second)
	second := e.scrape(t, 0, 20*time.Second)
	if a, b := first.value(t, "pg_cached_n", nil), second.value(t, "pg_cached_n", nil); a != b {
		t.Errorf("cached query ran again: %v then %v", a, b)
	}
	if a, b := first.value(t, "pg_uncached_n", nil), second.value(t, "pg_uncached_n", nil); a == b {
		t.Errorf("uncached query did not run again: %v then %v", a, b)
	}
	if got := second.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 1 {
		t.Errorf("queries success = %v: the out-of-range queries ran", got)
	}
}

func TestSlowCustomQueryMissesTheDeadlineOnly(t *testing.T) {
	path := writeQueries(t, `
pg_slow:
  query: SELECT 1 AS v FROM pg_sleep(60)
  metrics:
    - v:
        usage: GAUGE
`)
	// A long collection bound: only the scrape's own deadline ends its wait.
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Timeout = 2 * time.Minute
		only("activity", "database")(c) // few enough to finish well within the budget
	})
	// Prometheus' timeout of 2 s leaves the scrape 1.6 s, against a 60 s sleep. The client
	// waits 3 s more than Prometheus would, so that a stalled machine does not fail the test,
	// but a scrape that waits for the query does. It answers with what has finished.
	s := e.scrape(t, 2*time.Second, 5*time.Second)
	if s.status != http.StatusOK {
		t.Fatalf("status %d", s.status)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 0 {
		t.Errorf("queries success = %v, want 0", got)
	}
	for _, name := range []string{"activity", "database"} {
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != 1 {
			t.Errorf("%s success = %v, want 1", name, got)
		}
	}
	if got := s.value(t, "pg_up", map[string]string{"pool": "test"}); got != 1 {
		t.Errorf("pg_up = %v", got)
	}
	if len(s.values("pg_stat_activity_count", nil)) == 0 {
		t.Error("activity metrics missing")
	}
}

// TestCollectionDeadlineCancelsOnTheServer: a collection cut by its deadline (here a custom
// query whose own timeout is longer) has its statement canceled on the server, not left
// running, and the next collection works on a fresh connection.
func TestCollectionDeadlineCancelsOnTheServer(t *testing.T) {
	path := writeQueries(t, `
pg_slow:
  query: SELECT 1 AS v FROM pg_sleep(60)
  timeout: 10m
  metrics:
    - v:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Timeout = 1500 * time.Millisecond
		only("activity", "database")(c)
	})
	s := e.scrape(t, 0, 10*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 0 {
		t.Errorf("queries success = %v, want 0", got)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "activity"}); got != 1 {
		t.Errorf("activity success = %v, want 1", got)
	}
	ctx := ctxTimeout(t, 20*time.Second)
	if !pgtest.WaitFor(10*time.Second, func() bool {
		n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()")
		return err == nil && n == 0
	}) {
		t.Error("the timed-out query is still running on the server")
	}
	s = e.scrape(t, 0, 10*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "activity"}); got != 1 {
		t.Errorf("activity success after a timeout = %v", got)
	}
}

func TestPerQueryTimeout(t *testing.T) {
	path := writeQueries(t, `
pg_slow:
  query: SELECT 1 AS v FROM pg_sleep(30)
  timeout: 300ms
  metrics:
    - v:
        usage: GAUGE
pg_after:
  query: SELECT pg_backend_pid() AS pid, setting::float8 AS timeout_ms FROM pg_settings WHERE name = 'statement_timeout'
  metrics:
    - pid:
        usage: GAUGE
    - timeout_ms:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_slow"}); got != 1 {
		t.Errorf("errors{pg_slow} = %v, want 1", got)
	}
	if !strings.Contains(e.log.String(), "canceling statement due to statement timeout") {
		t.Errorf("the server did not cancel the query by its timeout:\n%s", e.log.String())
	}
	// The per-query timeout ended with its query: the session's own is back.
	if got := s.value(t, "pg_after_timeout_ms", nil); got != float64(DefaultTimeout.Milliseconds()) {
		t.Errorf("statement_timeout after the timed query = %v ms, want %v", got, DefaultTimeout.Milliseconds())
	}
	// The server canceled the statement cleanly: the next query ran on the same session.
	pid1 := s.value(t, "pg_after_pid", nil)
	s = e.scrape(t, 0, 20*time.Second)
	if pid2 := s.value(t, "pg_after_pid", nil); pid1 != pid2 {
		t.Errorf("the collector reconnected after a per-query timeout (pid %v then %v)", pid1, pid2)
	}
}

func TestConcurrentScrapesShareOneCollection(t *testing.T) {
	path := writeQueries(t, `
pg_shared:
  query: SELECT nextval('shared_seq')::float8 AS collection WHERE pg_advisory_xact_lock_shared(4242) IS NOT NULL
  metrics:
    - collection:
        usage: GAUGE
`)
	ctx := ctxTimeout(t, 60*time.Second)
	if err := cluster.Exec(ctx, "CREATE SEQUENCE shared_seq"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP SEQUENCE shared_seq") })
	// Small answers: fifty of them are encoded and parsed at once under the race detector.
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Timeout = 45 * time.Second
		c.Enabled = map[string]bool{"database": false, "settings": false}
	})
	// Each Gather of the registry is one encode of the whole answer, the memory that grew with
	// every concurrent scraper: count them.
	gathers := &gatherCounter{}
	e.reg.MustRegister(gathers)
	// Hold the lock so the first collection waits until every scrape has joined it.
	locker := openSession(t, "", "locker")
	if _, err := locker.Exec(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	const n = 50
	results := make([]scrape, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = e.scrape(t, 0, 50*time.Second) })
	}
	if !pgtest.WaitFor(30*time.Second, func() bool { return e.exp.waiting.Load() == n }) {
		t.Fatalf("only %d of %d scrapes waiting", e.exp.waiting.Load(), n)
	}
	// Past the bound of scrapes in flight, one more is refused at once.
	e.exp.maxInFlight.Store(n)
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(e.srv.URL); err != nil {
		t.Error(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("scrape %d of %d allowed: status %d, want 503", n+1, n, resp.StatusCode)
		}
	}
	// Sessions of earlier tests' exporters may take a moment to end on the server.
	var collectors int64
	if !pgtest.WaitFor(5*time.Second, func() bool {
		collectors, _ = cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar-collector'")
		return collectors == 1
	}) {
		t.Errorf("%d collector connections during %d scrapes, want 1", collectors, n)
	}
	if _, err := locker.Exec(ctx, "SELECT pg_advisory_unlock(4242)"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, s := range results {
		if s.status != http.StatusOK {
			t.Fatalf("scrape %d: status %d", i, s.status)
		}
		if got := s.value(t, "pg_shared_collection", nil); got != 1 {
			t.Errorf("scrape %d saw collection %v, want 1", i, got)
		}
	}
	runs, err := cluster.QueryInt(ctx, "SELECT last_value FROM shared_seq")
	if err != nil {
		t.Fatal(err)
	}
	if runs != 1 {
		t.Errorf("the database saw %d collections for %d concurrent scrapes, want 1", runs, n)
	}
	if got := results[0].value(t, "pgsidecar_collections_total", nil); got != 1 {
		t.Errorf("pgsidecar_collections_total = %v, want 1", got)
	}
	if n := gathers.n.Load(); n != 1 {
		t.Errorf("%d encodes for %d concurrent scrapes of one collection, want 1 shared", n, len(results))
	}
}

// gatherCounter counts the Gathers of the registry it is registered on.
type gatherCounter struct{ n atomic.Int64 }

func (g *gatherCounter) Describe(chan<- *prometheus.Desc) {}
func (g *gatherCounter) Collect(chan<- prometheus.Metric) { g.n.Add(1) }

func TestDatabaseDown(t *testing.T) {
	cluster.RequireControl(t)
	e := newEnv(t, "", func(c *Config) { c.Timeout = 30 * time.Second })
	if s := e.scrape(t, 0, 20*time.Second); s.value(t, "pg_up", nil) != 1 {
		t.Fatal("pg_up not 1 before the stop")
	}
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cluster.StartAgain(); err != nil {
			t.Errorf("starting the cluster again: %v", err)
		}
	})
	// Scrape timeout 3 s, far below the collection timeout flag (30 s): the answer must come
	// within it (the client allows 3 s more, for a stalled machine, far short of 30 s).
	s := e.scrape(t, 3*time.Second, 6*time.Second)
	if s.status != http.StatusOK {
		t.Fatalf("status %d", s.status)
	}
	if got := s.value(t, "pg_up", map[string]string{"pool": "test"}); got != 0 {
		t.Errorf("pg_up = %v, want 0", got)
	}
	for _, name := range []string{"activity", "database", "settings"} {
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != 0 {
			t.Errorf("%s success = %v, want 0", name, got)
		}
	}
	// The pool's own metrics still answer.
	for _, name := range []string{"pgsidecar_pool_connections", "pgsidecar_health_check_up", "pgsidecar_pool_max_connections"} {
		if len(s.values(name, nil)) == 0 {
			t.Errorf("%s missing while the database is down", name)
		}
	}
	if n := strings.Count(e.log.String(), "Collection cannot reach the database"); n != 1 {
		t.Errorf("unreachable logged %d times, want 1", n)
	}

	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		return e.scrape(t, 3*time.Second, 10*time.Second).value(t, "pg_up", nil) == 1
	}) {
		t.Error("pg_up never came back to 1")
	}
}

func TestReload(t *testing.T) {
	good := `
pg_reload:
  query: SELECT 1 AS first
  metrics:
    - first:
        usage: GAUGE
`
	path := writeQueries(t, good)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	if s.value(t, "pgsidecar_queries_last_reload_successful", nil) != 1 || s.value(t, "pg_reload_first", nil) != 1 {
		t.Fatalf("initial load:\n%s", s.body)
	}
	ts := s.value(t, "pgsidecar_queries_last_reload_success_timestamp_seconds", nil)
	if ts <= 0 {
		t.Errorf("reload timestamp %v", ts)
	}

	writeFile(t, path, "pg_reload:\n  query: SELECT 2 AS second\n  metrics:\n    - second:\n        usage: GAUGE\n  bogus: 1\n")
	err := e.exp.Reload()
	if err == nil || !strings.Contains(err.Error(), `queries.yaml:6: query pg_reload: unknown key "bogus"`) {
		t.Fatalf("bad reload error: %v", err)
	}
	s = e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pgsidecar_queries_last_reload_successful", nil); got != 0 {
		t.Errorf("last reload successful = %v after a bad reload", got)
	}
	if got := s.value(t, "pg_reload_first", nil); got != 1 {
		t.Errorf("the old queries are not kept after a bad reload: %v", got)
	}
	if got := s.value(t, "pgsidecar_queries_last_reload_success_timestamp_seconds", nil); got != ts {
		t.Errorf("success timestamp moved on a failed reload")
	}

	writeFile(t, path, strings.ReplaceAll(good, "first", "second"))
	if err := e.exp.Reload(); err != nil {
		t.Fatal(err)
	}
	s = e.scrape(t, 0, 20*time.Second)
	if s.value(t, "pgsidecar_queries_last_reload_successful", nil) != 1 || s.value(t, "pg_reload_second", nil) != 1 ||
		len(s.values("pg_reload_first", nil)) != 0 {
		t.Errorf("good reload not applied:\n%s", s.body)
	}
}

func TestNewFailsOnBadQueriesFile(t *testing.T) {
	path := writeQueries(t, "pg_x:\n  query: SELECT 1 AS v\n  metrics: []\n")
	discard := WithLogger(slog.New(slog.DiscardHandler))
	_, err := newExporter(nil, "x", testConfig(func(c *Config) { c.QueriesFile = path }), discard)
	if err == nil || !strings.Contains(err.Error(), "queries.yaml:3: query pg_x: no metric columns") {
		t.Fatalf("err = %v", err)
	}
	_, err = newExporter(nil, "x", testConfig(func(c *Config) { c.QueriesFile = path + ".missing" }), discard)
	if !errors.Is(err, errNotExist) {
		t.Fatalf("missing file: err = %v", err)
	}
}

func TestScrapeTimeout(t *testing.T) {
	for _, c := range []struct {
		header string
		want   time.Duration
	}{
		{"", 5 * time.Second},
		{"10", 9500 * time.Millisecond},
		{"2", 1600 * time.Millisecond},
		{"0.5", 400 * time.Millisecond},
		{"nonsense", 5 * time.Second},
		{"-1", 5 * time.Second},
		{"+Inf", 5 * time.Second},
		{"NaN", 5 * time.Second},
		{"9.3e9", 3600*time.Second - 500*time.Millisecond},
		{"1e308", 3600*time.Second - 500*time.Millisecond},
		{"0.001", 80 * time.Millisecond},
	} {
		if got := scrapeTimeout(c.header, 5*time.Second); got != c.want {
			t.Errorf("scrapeTimeout(%q) = %v, want %v", c.header, got, c.want)
		}
	}
}

// hangup stands in for SIGHUP.
type hangup struct{}

func (hangup) String() string { return "hangup" }
func (hangup) Signal()        {}

func TestReloadEndpointAndSignal(t *testing.T) {
	path := writeQueries(t, "pg_r:\n  query: SELECT 1 AS one\n  metrics:\n    - one:\n        usage: GAUGE\n")
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	srv := httptest.NewServer(e.exp.ReloadHandler())
	t.Cleanup(srv.Close)
	post := func() (int, string) {
		resp, err := http.Post(srv.URL, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if resp, err := http.Get(srv.URL); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	writeFile(t, path, "pg_r:\n  query: SELECT 1 AS one\n  metrics:\n    - one:\n        usage: GAUGE\n        help: no\n")
	if code, body := post(); code != http.StatusInternalServerError || !strings.Contains(body, `queries.yaml:6: query pg_r: column one: unknown key "help"`) {
		t.Errorf("bad file: %d %q", code, body)
	}
	writeFile(t, path, "pg_r:\n  query: SELECT 2 AS two\n  metrics:\n    - two:\n        usage: GAUGE\n")
	if code, body := post(); code != http.StatusOK {
		t.Errorf("good file: %d %q", code, body)
	}
	if got := e.scrape(t, 0, 20*time.Second).value(t, "pg_r_two", nil); got != 2 {
		t.Errorf("pg_r_two = %v after the reload", got)
	}

	// A signal reloads too.
	sigs := make(chan os.Signal)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.exp.ReloadOn(ctx, sigs) }()
	defer func() { cancel(); <-done }()
	writeFile(t, path, "pg_r:\n  query: SELECT 3 AS three\n  metrics:\n    - three:\n        usage: GAUGE\n")
	sigs <- hangup{}
	if !pgtest.WaitFor(5*time.Second, func() bool {
		return len(e.scrape(t, 0, 20*time.Second).values("pg_r_three", nil)) == 1
	}) {
		t.Error("the signal did not reload the file")
	}
	if !strings.Contains(e.log.String(), `msg="Reloading custom queries" signal=hangup`) {
		t.Errorf("reload not logged:\n%s", e.log.String())
	}
}

// TestErrorsHideThePassword: an error quoting the connection password is logged without it.
func TestErrorsHideThePassword(t *testing.T) {
	path := writeQueries(t, "pg_pw:\n  query: SELECT '"+pgtest.SuperuserPassword+"'::int AS x\n  metrics:\n    - x:\n        usage: GAUGE\n")
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "database": false, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_pw"}); got != 1 {
		t.Fatalf("errors = %v, want 1", got)
	}
	logs := e.log.String()
	if !strings.Contains(logs, "invalid input syntax for type integer") || !strings.Contains(logs, "xxxxx") {
		t.Errorf("the error is not logged, scrubbed:\n%s", logs)
	}
	if strings.Contains(logs, pgtest.SuperuserPassword) || strings.Contains(s.body, pgtest.SuperuserPassword) {
		t.Errorf("the password leaked:\n%s", logs)
	}
}

// TestTwoConnections: with --collector.max-connections=2 the collectors share two sessions.
func TestTwoConnections(t *testing.T) {
	path := writeQueries(t, "pg_two:\n  query: SELECT 1 AS one FROM pg_sleep(0.2)\n  metrics:\n    - one:\n        usage: GAUGE\n")
	e := newEnv(t, "", func(c *Config) { c.MaxConns = 2; c.QueriesFile = path })
	for range 2 {
		s := e.scrape(t, 0, 20*time.Second)
		for _, name := range []string{"activity", "database", "settings", "queries"} {
			if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != 1 {
				t.Errorf("%s success = %v", name, got)
			}
		}
		var sessions float64
		for _, v := range s.values("pg_stat_activity_count", map[string]string{"application_name": "pgsidecar-collector"}) {
			sessions += v
		}
		if sessions < 1 || sessions > 2 {
			t.Errorf("collector sessions = %v, want 1 or 2", sessions)
		}
	}
	if n := e.exp.pool.Stat().MaxConns(); n != 2 {
		t.Errorf("side pool max connections = %d, want 2", n)
	}
}

// TestScrapeJoiningALongerCollection: a scrape with a short timeout joins a collection that
// takes longer. It answers at its own deadline with what has finished (pg_up from the
// collection, which reached the database), and the collection goes on for the scrapes that
// wait longer: the short deadline cuts nothing for them.
func TestScrapeJoiningALongerCollection(t *testing.T) {
	path := writeQueries(t, `
pg_slow:
  query: SELECT 1 AS v FROM pg_sleep(3)
  metrics:
    - v:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Timeout = 2 * time.Minute
		c.Enabled = map[string]bool{"settings": false}
	})
	before := e.exp.collections.Load()
	long := make(chan scrape, 1)
	go func() { long <- e.scrape(t, 20*time.Second, 30*time.Second) }()
	if !pgtest.WaitFor(10*time.Second, func() bool { return e.exp.collections.Load() > before }) {
		t.Fatal("the long scrape's collection did not start")
	}
	short := e.scrape(t, time.Second, 4*time.Second) // answers at about 1 s; the sleep takes 3
	if got := short.value(t, "pg_up", map[string]string{"pool": "test"}); got != 1 {
		t.Errorf("short scrape: pg_up = %v, want 1", got)
	}
	if got := short.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 0 {
		t.Errorf("short scrape: queries success = %v, want 0 (it got no results)", got)
	}
	if got := short.value(t, "pg_scrape_collector_success", map[string]string{"collector": "activity"}); got != 1 {
		t.Errorf("short scrape: activity success = %v, want 1 (it finished before the deadline)", got)
	}
	ls := <-long
	if got := ls.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 1 {
		t.Errorf("long scrape: queries success = %v, want 1", got)
	}
	if got := ls.value(t, "pg_up", map[string]string{"pool": "test"}); got != 1 {
		t.Errorf("long scrape: pg_up = %v, want 1", got)
	}
	if e.exp.collections.Load() != before+1 {
		t.Errorf("%d collections for two overlapping scrapes, want 1", e.exp.collections.Load()-before)
	}
	if strings.Contains(e.log.String(), "cannot reach") {
		t.Errorf("logged the database as unreachable:\n%s", e.log.String())
	}
}

// TestScrapeTimeoutHeaderDoesNotDecideOthers: a scraper's header, absurd or tiny, decides only
// its own answer. A header beyond time.Duration's range is clamped, not read as negative; a
// client looping with a tiny one does not cut the collection a normal scrape shares.
func TestScrapeTimeoutHeaderDoesNotDecideOthers(t *testing.T) {
	path := writeQueries(t, `
pg_half:
  query: SELECT 1 AS v FROM pg_sleep(0.5)
  metrics:
    - v:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		only("activity")(c)
	})
	for _, header := range []string{"9.3e9", "1e308"} {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL, nil)
		req.Header.Set(scrapeTimeoutHeader, header)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`pg_up{pool="test"} 1`, `pg_scrape_collector_success{collector="queries"} 1`, "pg_half_v 1"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("header %s: no %s in the answer", header, want)
			}
		}
	}
	// A client loops with a 0.2 s header while a normal scrape shares the collection.
	stop := make(chan struct{})
	var looped sync.WaitGroup
	looped.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.scrape(t, 200*time.Millisecond, 5*time.Second)
		}
	})
	for range 3 {
		time.Sleep(50 * time.Millisecond) // let the loop start the collection first
		s := e.scrape(t, 0, 10*time.Second)
		if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 1 {
			t.Errorf("a normal scrape beside a looping 0.2 s scraper: queries success = %v, want 1", got)
		}
	}
	close(stop)
	looped.Wait()
}

// TestHugeLabelSet: a query whose label comes from an unbounded column fails on its own, with
// an error that says what to do, and exports nothing; queries within their limit still export.
func TestHugeLabelSet(t *testing.T) {
	path := writeQueries(t, `
pg_huge:
  query: SELECT g::text AS id, 1 AS v FROM generate_series(1, 20000) g
  metrics:
    - id:
        usage: LABEL
    - v:
        usage: GAUGE
pg_capped:
  query: SELECT g::text AS id, 1 AS v FROM generate_series(1, 6) g
  max_series: 5
  metrics:
    - id:
        usage: LABEL
    - v:
        usage: GAUGE
pg_within:
  query: SELECT g::text AS id, 1 AS v FROM generate_series(1, 5) g
  max_series: 5
  metrics:
    - id:
        usage: LABEL
    - v:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) { c.QueriesFile = path; c.Enabled = map[string]bool{"settings": false} })
	s := e.scrape(t, 0, 20*time.Second)
	if s.status != http.StatusOK {
		t.Fatalf("status %d", s.status)
	}
	for query, limit := range map[string]string{"pg_huge": "10000", "pg_capped": "5"} {
		if n := len(s.values(query+"_v", nil)); n != 0 {
			t.Errorf("%s exported %d series over its limit", query, n)
		}
		if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": query}); got != 1 {
			t.Errorf("errors{%s} = %v, want 1", query, got)
		}
		if want := "more than " + limit + " series (max_series)"; !strings.Contains(e.log.String(), want) {
			t.Errorf("log does not say %q for %s:\n%s", want, query, e.log.String())
		}
	}
	if n := len(s.values("pg_within_v", nil)); n != 5 {
		t.Errorf("pg_within exported %d series, want 5", n)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "activity"}); got != 1 {
		t.Errorf("activity success = %v", got)
	}
}

// TestCustomHistogramValidated: a HISTOGRAM row Prometheus would misread (a NaN or unordered
// bound, counts that decrease or pass _count) is rejected and counted against its query; a
// last bound of +Inf is the _count bucket. Rows of one query that repeat a label set (NULL
// beside ” too) keep the first row, and the query counts as failed and is logged once.
func TestCustomHistogramValidated(t *testing.T) {
	hist := func(name, labels, bounds, counts, count string) string {
		return name + `:
  query: SELECT ` + labels + ` AS k, ARRAY[` + bounds + `]::float8[] AS h, ARRAY[` + counts + `]::int8[] AS h_bucket, 7.5 AS h_sum, ` + count + ` AS h_count
  metrics:
    - k:
        usage: LABEL
    - h:
        usage: HISTOGRAM
`
	}
	path := writeQueries(t, hist("pg_hnan", "'a'", "1, 2, 'NaN'", "3, 1, 5", "5")+
		hist("pg_hdecreasing", "'a'", "1, 2, 3", "3, 1, 5", "5")+
		hist("pg_hunordered", "'a'", "2, 1", "1, 2", "2")+
		hist("pg_hover", "'a'", "1, 2", "1, 9", "5")+
		hist("pg_hinf", "'a'", "1, 'Infinity'", "2, 5", "5")+
		`pg_hrows:
  query: SELECT * FROM (VALUES ('good', ARRAY[1, 2]::float8[], ARRAY[1, 2]::int8[], 1.5, 2),
                               ('bad', ARRAY[1, 2]::float8[], ARRAY[2, 1]::int8[], 1.5, 2)) v(k, h, h_bucket, h_sum, h_count)
  metrics:
    - k:
        usage: LABEL
    - h:
        usage: HISTOGRAM
pg_dup:
  query: SELECT * FROM (VALUES (NULL::text, 1), ('', 2), ('x', 3), ('x', 4)) v(k, v)
  metrics:
    - k:
        usage: LABEL
    - v:
        usage: GAUGE
`)
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		only("activity")(c)
	})
	s := e.scrape(t, 0, 20*time.Second)
	for _, q := range []string{"pg_hnan", "pg_hdecreasing", "pg_hunordered", "pg_hover", "pg_hrows", "pg_dup"} {
		if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": q}); got != 1 {
			t.Errorf("errors{%s} = %v, want 1", q, got)
		}
	}
	if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": "pg_hinf"}); got != 0 {
		t.Errorf("errors{pg_hinf} = %v, want 0:\n%s", got, e.log.String())
	}
	for _, name := range []string{"pg_hnan_h", "pg_hdecreasing_h", "pg_hunordered_h", "pg_hover_h"} {
		if _, ok := s.families[name]; ok {
			t.Errorf("%s exported", name)
		}
	}
	if strings.Contains(s.body, `le="NaN"`) {
		t.Error(`le="NaN" exported`)
	}
	if mf := s.families["pg_hrows_h"]; len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetLabel()[0].GetValue() != "good" {
		t.Errorf("pg_hrows_h: %v, want the good row only", mf)
	}
	if mf := s.families["pg_hinf_h"]; len(mf.GetMetric()) != 1 {
		t.Errorf("pg_hinf_h: %v", mf)
	} else {
		h := mf.GetMetric()[0].GetHistogram()
		b := h.GetBucket()
		if h.GetSampleCount() != 5 || len(b) != 2 || b[0].GetUpperBound() != 1 || b[0].GetCumulativeCount() != 2 ||
			!math.IsInf(b[1].GetUpperBound(), 1) || b[1].GetCumulativeCount() != 5 {
			t.Errorf("pg_hinf_h = %v, want le=1 at 2 and one le=+Inf at the count of 5", h)
		}
	}
	if got := s.value(t, "pg_dup_v", map[string]string{"k": ""}); got != 1 {
		t.Errorf(`pg_dup_v{k=""} = %v, want the first row's 1`, got)
	}
	if got := s.value(t, "pg_dup_v", map[string]string{"k": "x"}); got != 3 {
		t.Errorf(`pg_dup_v{k="x"} = %v, want the first row's 3`, got)
	}
	e.scrape(t, 0, 20*time.Second)
	if n := strings.Count(e.log.String(), `msg="Custom query failed" query=pg_dup`); n != 1 {
		t.Errorf("duplicate label sets logged %d times over two scrapes, want once:\n%s", n, e.log.String())
	}
}
