package collector

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBadQueriesFiles checks the exact error for each invalid file in testdata/queries.
func TestBadQueriesFiles(t *testing.T) {
	dir := filepath.Join("testdata", "queries")
	cases := map[string]string{
		"unknown_key.yaml": `unknown_key.yaml:3: query pg_example: unknown key "cache_second" (known: query, metrics, cache_seconds, timeout, max_series, min_version, max_version, master)`,
		"bad_usage.yaml":   `bad_usage.yaml:7: query pg_example: column value: usage "GAUGES" is not one of LABEL, COUNTER, GAUGE, DISCARD`,
		"duplicate_metric.yaml": `duplicate_metric.yaml:9: query pg_example_cache: metric pg_example_cache_hits already defined at line 4
duplicate_metric.yaml:11: query "pg_example" defined twice (first at line 1)`,
		"no_metric_columns.yaml": `no_metric_columns.yaml:4: query pg_example: no metric columns (usage COUNTER or GAUGE)`,
		"syntax_error.yaml":      `syntax_error.yaml:3: did not find expected '-' indicator`,
		"builtin_name.yaml":      `builtin_name.yaml:4: query pg_stat_activity: metric pg_stat_activity_count is already exported by a built-in collector`,
		"bad_values.yaml": `bad_values.yaml:3: query pg_example: timeout must be a positive duration such as 2s or 500ms, not "5"
bad_values.yaml:4: query pg_example: cache_seconds must be a whole number of seconds, not "-1"
bad_values.yaml:5: query pg_example: max_series must be a whole number of at least 1, not "0"
bad_values.yaml:7: query pg_example: max_version must be a PostgreSQL version such as 13, 14.2 or 140002, not "fifteen"
bad_values.yaml:8: query pg_example: runonserver is not supported; use min_version and max_version
bad_values.yaml:12: query pg_example: column value: unknown key "mapping" (known: usage, description)`,
	}
	for file, want := range cases {
		t.Run(file, func(t *testing.T) {
			_, err := loadQueries(filepath.Join(dir, file), builtinName)
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
	qs, err := loadQueries(filepath.Join("..", DefaultQueriesFile), builtinName)
	if err != nil {
		t.Fatal(err)
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
			_, err := loadQueries(path, builtinName)
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
