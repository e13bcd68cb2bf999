package testutil

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// ExemplarTraces returns the trace_id of every exemplar of the histograms of family name whose
// labels include want: those on classic buckets and those kept with native buckets, sorted,
// each once.
func ExemplarTraces(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) []string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if labelValue(m, k) != v {
					continue metrics
				}
			}
			h := m.GetHistogram()
			for _, b := range h.GetBucket() {
				if e := b.GetExemplar(); e != nil {
					for _, l := range e.GetLabel() {
						if l.GetName() == "trace_id" {
							out = append(out, l.GetValue())
						}
					}
				}
			}
			for _, e := range h.GetExemplars() {
				for _, l := range e.GetLabel() {
					if l.GetName() == "trace_id" {
						out = append(out, l.GetValue())
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
