package pool

import "time"

// QueryHistogram reads the pool's query histograms and error counters once.
func (m *Manager) QueryHistogram() QueryHistogram {
	h, _, _ := m.metrics.read()
	return h
}

// Started is when the Manager was created; uptimes count from it.
func (m *Manager) Started() time.Time { return m.started }

// HistogramQuantile estimates quantile q (0..1) from cumulative counts over QueryBuckets, the
// way PromQL's histogram_quantile does, in seconds. It returns 0 when total is 0.
func HistogramQuantile(q float64, cumulative []uint64, total uint64) float64 {
	if total == 0 || len(cumulative) != len(QueryBuckets) {
		return 0
	}
	return bucketQuantile(q, cumulative, total)
}
