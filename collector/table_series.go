package collector

import (
	"slices"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The per-table collectors emit most of a scrape's series: 29 for each table, all with the
// same labels. Their samples share one set of label pairs per row instead of building one per
// sample as prometheus.NewConstMetric does, which made building them the largest part of the
// sidecar's own work in a scrape (with the allocations the garbage collector then scans).

// tableMetric is one sample of a per-table series.
type tableMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value float64
	// labels are sorted by name and shared with the other samples of the row; nobody writes
	// to them once built (the registry only reads a Write's labels).
	labels []*dto.LabelPair
}

func (m *tableMetric) Desc() *prometheus.Desc { return m.desc }

func (m *tableMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	v := m.value
	switch m.typ {
	case prometheus.CounterValue:
		out.Counter = &dto.Counter{Value: &v}
	case prometheus.GaugeValue:
		out.Gauge = &dto.Gauge{Value: &v}
	default:
		out.Untyped = &dto.Untyped{Value: &v}
	}
	return nil
}

// labelOrder returns the indexes of names in sorted order, the order label pairs are in.
func labelOrder(names []string) []int {
	order := make([]int, len(names))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case names[a] < names[b]:
			return -1
		case names[a] > names[b]:
			return 1
		}
		return 0
	})
	return order
}

// rowLabels builds a row's label pairs in the order given, or returns nil when a value is not
// valid UTF-8 (which the exposition formats cannot carry).
func rowLabels(names []string, order []int, values []string) []*dto.LabelPair {
	pairs := make([]dto.LabelPair, len(order))
	out := make([]*dto.LabelPair, len(order))
	for i, j := range order {
		if !utf8.ValidString(values[j]) {
			return nil
		}
		name, value := names[j], values[j]
		pairs[i] = dto.LabelPair{Name: &name, Value: &value}
		out[i] = &pairs[i]
	}
	return out
}

// addRow adds the samples of one table's row. They need no duplicate check: a table is one
// row of its database's statistics, and each database is read once.
func (k *sink) addRow(ms []prometheus.Metric, table string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, m := range ms {
		k.metrics = append(k.metrics, m)
		k.tables = append(k.tables, table)
	}
}

// invalidRow counts the n samples of a row left out for a label value that is not UTF-8.
func (k *sink) invalidRow(n int, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.invalid += n
	k.lastErr = err
}
