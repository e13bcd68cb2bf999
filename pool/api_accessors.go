package pool

// QueryHistogram reads the pool's query histograms and error counters once.
func (m *Manager) QueryHistogram() QueryHistogram {
	h, _, _ := m.metrics.read()
	return h
}
