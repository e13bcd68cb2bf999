package pool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// QueryHistogram is the query duration histogram summed over operations. Two readings taken a
// while apart give the latency of just the queries in between, which is what live views show.
type QueryHistogram struct {
	Cumulative []uint64 // cumulative counts per bound of QueryBuckets
	Count      uint64
	SumSeconds float64
	Errors     uint64
}

// QueryHistogram reads the pool's query histograms and error counters once.
func (m *Manager) QueryHistogram() QueryHistogram {
	h := QueryHistogram{Cumulative: make([]uint64, len(QueryBuckets))}
	for op := range numOperations {
		var pb dto.Metric
		if err := m.metrics.queryObservers[op].(prometheus.Metric).Write(&pb); err != nil {
			continue
		}
		hist := pb.GetHistogram()
		h.Count += hist.GetSampleCount()
		h.SumSeconds += hist.GetSampleSum()
		for i, b := range hist.GetBucket() {
			if i < len(h.Cumulative) {
				h.Cumulative[i] += b.GetCumulativeCount()
			}
		}
	}
	ch := make(chan prometheus.Metric, 64)
	go func() { m.metrics.queryErrors.Collect(ch); close(ch) }()
	for c := range ch {
		var pb dto.Metric
		if c.Write(&pb) == nil {
			h.Errors += uint64(pb.GetCounter().GetValue())
		}
	}
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
