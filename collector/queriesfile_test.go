package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestBadQueriesFiles checks the exact error for each invalid file in testdata/queries.
func TestBadQueriesFiles(t *testing.T) {
	dir := filepath.Join("testdata", "queries")
	cases := map[string]string{
		"unknown_key.yaml": `unknown_key.yaml:3: query pg_example: unknown key "cache_second" (known: query, metrics, cache_seconds, timeout, max_series, min_version, max_version, master, runonserver, every_sidecar)`,
		"bad_usage.yaml":   `bad_usage.yaml:7: query pg_example: column value: usage "GAUGES" is not one of LABEL, COUNTER, GAUGE, DISCARD, HISTOGRAM, MAPPEDMETRIC, DURATION`,
		"duplicate_metric.yaml": `duplicate_metric.yaml:9: query pg_example_cache: metric pg_example_cache_hits already defined at line 4
duplicate_metric.yaml:11: query "pg_example" defined twice (first at line 1)`,
		"no_metric_columns.yaml": `no_metric_columns.yaml:4: query pg_example: no metric columns (usage COUNTER, GAUGE, HISTOGRAM, MAPPEDMETRIC or DURATION)`,
		"syntax_error.yaml":      `syntax_error.yaml:3: did not find expected '-' indicator`,
		"bad_values.yaml": `bad_values.yaml:3: query pg_example: timeout must be a positive duration such as 2s or 500ms, not "5"
bad_values.yaml:4: query pg_example: cache_seconds must be a whole number of seconds, not "-1"
bad_values.yaml:5: query pg_example: max_series must be a whole number of at least 1, not "0"
bad_values.yaml:7: query pg_example: max_version must be a PostgreSQL version such as 13, 14.2 or 140002, not "fifteen"
bad_values.yaml:12: query pg_example: column value: unknown key "mapping" (known: usage, description, metric_mapping, pg_version)`,
	}
	for file, want := range cases {
		t.Run(file, func(t *testing.T) {
			_, _, err := loadQueries(filepath.Join(dir, file), builtinName)
			if err == nil {
				t.Fatal("no error")
			}
			got := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
			if got != want {
				t.Errorf("error:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestShippedQueriesFileIsValid loads the queries.yaml shipped at the repository root.
func TestShippedQueriesFileIsValid(t *testing.T) {
	qs, warnings, err := loadQueries(filepath.Join("..", DefaultQueriesFile), builtinName)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("shipped queries duplicate built-in metrics: %v", warnings)
	}
	if len(qs) < 2 {
		t.Errorf("shipped queries: %d, want at least 2", len(qs))
	}
	for _, q := range qs {
		if q.timeout <= 0 {
			t.Errorf("shipped query %s has no timeout", q.name)
		}
	}
}

func TestParseServerVersion(t *testing.T) {
	for _, c := range []struct {
		in    string
		upper bool
		want  int
	}{
		{"13", false, 130000}, {"13", true, 139999}, {"14.2", false, 140002}, {"14.2", true, 140002},
		{"170000", false, 170000}, {"9.6", false, 90600},
	} {
		got, err := parseServerVersion(c.in, c.upper)
		if err != nil || got != c.want {
			t.Errorf("parseServerVersion(%q, %v) = %d, %v; want %d", c.in, c.upper, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "x", "14.x", "-3", "0"} {
		if _, err := parseServerVersion(bad, false); err == nil {
			t.Errorf("parseServerVersion(%q): no error", bad)
		}
	}
}

// TestShippedQueriesRun runs the shipped queries.yaml against the test server.
func TestShippedQueriesRun(t *testing.T) {
	createDB(t, "shipped_t")
	e := newEnv(t, "shipped_t", func(c *Config) {
		only()(c)
		c.QueriesFile = filepath.Join("..", DefaultQueriesFile)
	})
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 1 {
		t.Errorf("queries success = %v; log:\n%s", got, e.log.String())
	}
	if got := s.value(t, "pg_stat_wal_bytes_total", nil); got <= 0 {
		t.Errorf("WAL bytes = %v", got)
	}
	for _, name := range []string{"pg_stat_replication", "pg_stat_wal"} {
		if got := s.value(t, "pgsidecar_custom_query_errors_total", map[string]string{"query": name}); got != 0 {
			t.Errorf("errors{%s} = %v", name, got)
		}
	}
	// The queries that built-in collectors replaced are gone.
	for _, name := range []string{"pg_long_running", "pg_locks", "pg_replication", "pg_table_bloat", "pg_database_wraparound"} {
		if vs := s.values("pgsidecar_custom_query_errors_total", map[string]string{"query": name}); len(vs) != 0 {
			t.Errorf("query %s still shipped", name)
		}
	}
}

// TestQueriesFileMustBeARegularFile checks that a FIFO, a device or an oversized file is refused
// at once: reading a FIFO waited for a writer forever, and /dev/zero ate memory until the
// process died.
func TestQueriesFileMustBeARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "queries.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(strings.Repeat("# padding\n", maxQueriesFileSize/10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		fifo:        "not a regular file (a named pipe)",
		"/dev/zero": "not a regular file (a character device)",
		dir:         "not a regular file (a directory)",
		big:         "larger than 4194304 bytes",
	} {
		errc := make(chan error, 1)
		go func() {
			_, _, err := loadQueries(path, builtinName)
			errc <- err
		}()
		select {
		case err := <-errc:
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("loadQueries(%s) = %v, want an error saying %q", path, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("loadQueries(%s) still reading after 10 s", path)
		}
	}
}

// TestPostgresExporterQueriesFile loads a queries file in postgres_exporter's format, with every
// usage and query key it had before its queries moved into collectors, and checks the series
// against those postgres_exporter 0.11.1 gives for it: HISTOGRAM, DURATION (as
// NAME_milliseconds), MAPPEDMETRIC numbers and unlisted numeric columns (untyped).
// postgres_exporter fails the whole scrape on this file's pg_database_size_bytes, which its
// pg_database collector exports too; here the built-in's series is kept and the file's left
// out with a warning.
func TestPostgresExporterQueriesFile(t *testing.T) {
	path := filepath.Join("testdata", "postgres_exporter_queries.yaml")
	_, warnings, err := loadQueries(path, builtinName)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "pg_database_size_bytes left out: a built-in collector exports it") ||
		!strings.Contains(warnings[1], "query pg_database left out") {
		t.Errorf("warnings %q, want pg_database_size_bytes and with it pg_database left out", warnings)
	}
	e := newEnv(t, "", func(c *Config) {
		c.QueriesFile = path
		c.Enabled = map[string]bool{"activity": false, "settings": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "queries"}); got != 1 {
		t.Errorf("queries success = %v, want 1:\n%s", got, e.log.String())
	}
	for _, c := range []struct {
		metric string
		typ    dto.MetricType
		labels map[string]string
		want   float64
	}{
		{"pg_replication_lag", dto.MetricType_GAUGE, nil, 0},
		{"pg_example_mode", dto.MetricType_GAUGE, nil, 1}, // through metric_mapping
		{"pg_example_wait_milliseconds", dto.MetricType_GAUGE, nil, 1500},
		{"pg_example_never_milliseconds", dto.MetricType_GAUGE, nil, -1},
		{"pg_example_unlisted", dto.MetricType_UNTYPED, nil, 7},
		{"pg_database_size_bytes", dto.MetricType_GAUGE, map[string]string{"datname": "postgres"}, -1},
	} {
		mf, ok := s.families[c.metric]
		if !ok {
			t.Errorf("%s missing", c.metric)
			continue
		}
		if mf.GetType() != c.typ {
			t.Errorf("%s type %v, want %v", c.metric, mf.GetType(), c.typ)
		}
		if c.want == -1 && c.metric == "pg_database_size_bytes" {
			if got := s.value(t, c.metric, c.labels); got <= 0 {
				t.Errorf("%s = %v", c.metric, got)
			}
			continue
		}
		if got := s.value(t, c.metric, c.labels); got != c.want {
			t.Errorf("%s = %v, want %v", c.metric, got, c.want)
		}
	}
	for _, absent := range []string{"pg_example_other_mode", "pg_example_unlisted_text", "pg_idle_seconds_bucket", "pg_idle_seconds_sum"} {
		if _, ok := s.families[absent]; ok {
			t.Errorf("%s exported", absent)
		}
	}
	h := s.families["pg_idle_seconds"]
	if h.GetType() != dto.MetricType_HISTOGRAM || len(h.GetMetric()) != 1 {
		t.Fatalf("pg_idle_seconds: %v", h)
	}
	m := h.GetMetric()[0]
	if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "application_name" || l[0].GetValue() != "app" {
		t.Errorf("pg_idle_seconds labels %v", l)
	}
	hist := m.GetHistogram()
	var buckets []string
	for _, b := range hist.GetBucket() {
		buckets = append(buckets, fmt.Sprintf("%g:%d", b.GetUpperBound(), b.GetCumulativeCount()))
	}
	if hist.GetSampleCount() != 4 || hist.GetSampleSum() != 41.5 || strings.Join(buckets, " ") != "1:2 5:3 30:4 +Inf:4" {
		t.Errorf("pg_idle_seconds count %d, sum %v, buckets %v; want 4, 41.5, [1:2 5:3 30:4 +Inf:4]", hist.GetSampleCount(), hist.GetSampleSum(), buckets)
	}
}
