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

// TestStatementDetail: /api/database/statements gives a statement's sidecar figures beside its
// pg_stat_statements rows, joined by query id, and refuses a malformed fingerprint.
func TestStatementDetail(t *testing.T) {
	s := startSidecar(t, testConfig(t), true, nil)
	s.waitHealthy(t)
	for _, sql := range []string{"CREATE EXTENSION IF NOT EXISTS pg_stat_statements", "SELECT pg_stat_statements_reset()"} {
		if err := s.query(t, sql); err != nil {
			t.Fatal(err)
		}
	}
	const n = 5
	for i := range n {
		if err := s.query(t, fmt.Sprintf("SELECT %d + 3 AS api_statement_detail", i)); err != nil {
			t.Fatal(err)
		}
	}
	var fp string
	for _, st := range s.h.statements(0) {
		if st.Text == "SELECT $1 + $2 AS api_statement_detail" {
			fp = st.Fingerprint
		}
	}
	if fp == "" {
		t.Fatal("statement not measured")
	}
	var d StatementDetailResponse
	s.getJSON(t, "/api/database/statements?fingerprint="+fp, 200, &d)
	if d.Sidecar == nil || d.Sidecar.Calls != n {
		t.Errorf("sidecar figures %+v, want %d calls", d.Sidecar, n)
	}
	var calls float64
	for _, r := range d.Server {
		calls += r.Calls
		if r.QueryID == "" || r.Database == "" || r.RowsPerCall != 1 {
			t.Errorf("server row %+v", r)
		}
	}
	if calls < n {
		t.Errorf("server rows %+v count %v calls, want at least %d", d.Server, calls, n)
	}
	var e map[string]any
	s.getJSON(t, "/api/database/statements?fingerprint=nope", 400, &e)
}
