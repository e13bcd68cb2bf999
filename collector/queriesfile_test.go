package collector

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestBadQueriesFiles checks the exact error for each invalid file in testdata/queries.
func TestBadQueriesFiles(t *testing.T) {
	dir := filepath.Join("..", "testdata", "queries")
	cases := map[string]string{
		"unknown_key.yaml": `unknown_key.yaml:3: query pg_example: unknown key "cache_second" (known: query, metrics, cache_seconds, timeout, min_version, max_version, master)`,
		"bad_usage.yaml":   `bad_usage.yaml:7: query pg_example: column value: usage "GAUGES" is not one of LABEL, COUNTER, GAUGE, DISCARD`,
		"duplicate_metric.yaml": `duplicate_metric.yaml:9: query pg_example_cache: metric pg_example_cache_hits already defined at line 4
duplicate_metric.yaml:11: query "pg_example" defined twice (first at line 1)`,
		"no_metric_columns.yaml": `no_metric_columns.yaml:4: query pg_example: no metric columns (usage COUNTER or GAUGE)`,
		"syntax_error.yaml":      `syntax_error.yaml:3: did not find expected '-' indicator`,
		"builtin_name.yaml":      `builtin_name.yaml:4: query pg_stat_activity: metric pg_stat_activity_count is already exported by a built-in collector`,
		"bad_values.yaml": `bad_values.yaml:3: query pg_example: timeout must be a positive duration such as 2s or 500ms, not "5"
bad_values.yaml:4: query pg_example: cache_seconds must be a whole number of seconds, not "-1"
bad_values.yaml:6: query pg_example: max_version must be a PostgreSQL version such as 13, 14.2 or 140002, not "fifteen"
bad_values.yaml:7: query pg_example: runonserver is not supported; use min_version and max_version
bad_values.yaml:11: query pg_example: column value: unknown key "mapping" (known: usage, description)`,
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
	if len(qs) < 5 {
		t.Errorf("shipped queries: %d, want at least 5", len(qs))
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
