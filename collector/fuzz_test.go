package collector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseQueries feeds arbitrary YAML to the queries.yaml parser: it must not panic, every
// error must name the file, and every accepted query must export at least one metric.
func FuzzParseQueries(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/queries/*.yaml")
	seeds = append(seeds, "../queries.yaml")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("pg_x:\n  query: SELECT 1 AS v\n  metrics:\n    - v: {usage: GAUGE, description: v}\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("- a\n- b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		qs, _, err := parseQueries("fuzz.yaml", data, builtinName)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, q := range qs {
			metrics := 0
			for _, c := range q.columns {
				if c.usage == "COUNTER" || c.usage == "GAUGE" {
					metrics++
				}
			}
			if q.name == "" || q.sql == "" || metrics == 0 {
				t.Fatalf("accepted a query that exports nothing: %+v", q)
			}
		}
	})
}
