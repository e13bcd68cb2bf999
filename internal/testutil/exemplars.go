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
	for _, m := range matching(mfs, name, want) {
		h := m.GetHistogram()
		exemplars := slices.Clone(h.GetExemplars())
		for _, b := range h.GetBucket() {
			if e := b.GetExemplar(); e != nil {
				exemplars = append(exemplars, e)
			}
		}
		for _, e := range exemplars {
			for _, l := range e.GetLabel() {
				if l.GetName() == "trace_id" {
					out = append(out, l.GetValue())
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
