package api

import (
	"fmt"
	"testing"
)

// TestStatementsInPerformance: the top statements of the performance answer and of the live
// snapshot count every execution, and each one's histogram holds all its calls.
func TestStatementsInPerformance(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, nil)
	s.waitHealthy(t)
	const n = 7
	for i := range n {
		if err := s.query(t, fmt.Sprintf("SELECT %d + 2 AS api_statement", i)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(where string, list []Statement) {
		t.Helper()
		for _, st := range list {
			if st.Text != "SELECT $1 + $2 AS api_statement" {
				continue
			}
			var sum uint64
			for _, b := range st.Histogram {
				sum += b.Count
			}
			last := st.Histogram[len(st.Histogram)-1]
			if st.Calls != n || st.WindowCalls != n || sum != n || last.LeMs != nil || st.Histogram[0].LeMs == nil ||
				st.Operation != "select" || len(st.Fingerprint) != 16 || st.P99Ms <= 0 {
				t.Errorf("%s: %+v (histogram sums to %d)", where, st, sum)
			}
			return
		}
		t.Errorf("%s lacks the statement: %+v", where, list)
	}
	var perf PerformanceResponse
	s.getJSON(t, "/api/database/performance", 200, &perf)
	check("performance", perf.Statements)
	var live LiveSnapshot
	s.getJSON(t, "/api/database/live-metrics", 200, &live)
	check("live-metrics", live.Statements)
}
