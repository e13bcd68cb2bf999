package api

import (
	"cmp"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// registrySnapshot is one Gather of the registry, indexed by metric name. The collectors own
// the pg_* names; the API only reads them, and treats a missing name as "unknown".
type registrySnapshot struct {
	at   time.Time
	fams map[string]*dto.MetricFamily
}

// gather reads the registry, or returns the last read while it is younger than maxAge. A
// partial failure (one collector erroring) still yields the other families, as on /metrics.
// Concurrent callers wait for one read rather than each starting their own.
func (h *Handler) gather() *registrySnapshot {
	if h.gatherer == nil {
		return nil
	}
	h.gatherMu.Lock()
	defer h.gatherMu.Unlock()
	if g := h.gathered; g != nil && time.Since(g.at) < h.maxAge {
		return g
	}
	start := time.Now()
	mfs, err := h.gatherer.Gather()
	if err != nil {
		h.log.Debug("Gathering collector metrics incomplete", "error", err.Error())
	}
	s := &registrySnapshot{at: start, fams: make(map[string]*dto.MetricFamily, len(mfs))}
	for _, mf := range mfs {
		s.fams[mf.GetName()] = mf
	}
	h.gathered = s
	return s
}

func sampleValue(m *dto.Metric) (float64, bool) {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

func labelMap(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// each calls fn for every sample of name.
func (s *registrySnapshot) each(name string, fn func(labels map[string]string, v float64)) {
	mf := s.fams[name]
	if mf == nil {
		return
	}
	for _, m := range mf.GetMetric() {
		if v, ok := sampleValue(m); ok {
			fn(labelMap(m), v)
		}
	}
}

// value sums the samples of name whose labels include match; ok is false when none exist.
func (s *registrySnapshot) value(name string, match map[string]string) (sum float64, ok bool) {
	s.each(name, func(l map[string]string, v float64) {
		for k, want := range match {
			if l[k] != want {
				return
			}
		}
		sum += v
		ok = true
	})
	return sum, ok
}

func (s *registrySnapshot) opt(name string, match map[string]string) *float64 {
	if v, ok := s.value(name, match); ok {
		return &v
	}
	return nil
}

func (s *registrySnapshot) fillDetailed(r *DetailedMetricsResponse) {
	at := s.at.UTC()
	r.CollectedAt = &at
	if v, ok := s.value("pg_up", nil); ok {
		up := v >= 1
		r.Up = &up
	}
	s.each("pg_static", func(l map[string]string, _ float64) {
		if r.Version == nil {
			r.Version = optString(l["version"])
			r.ShortVersion = optString(l["short_version"])
		}
	})

	var names []string
	seen := map[string]bool{}
	for _, n := range []string{"pg_database_size_bytes", "pg_stat_database_xact_commit", "pg_stat_database_blks_hit"} {
		s.each(n, func(l map[string]string, _ float64) {
			if d := l["datname"]; d != "" && !seen[d] {
				seen[d] = true
				names = append(names, d)
			}
		})
	}
	slices.Sort(names)
	r.Databases = make([]DatabaseStats, 0, len(names))
	for _, d := range names {
		db := s.database(d)
		r.Databases = append(r.Databases, db)
		if d == r.CurrentDatabase {
			r.Database = &db
		}
	}

	if _, ok := s.fams["pg_stat_activity_count"]; ok {
		r.SessionsByState = map[string]float64{}
		s.each("pg_stat_activity_count", func(l map[string]string, v float64) {
			st := l["state"]
			if st == "" {
				st = "unknown"
			}
			r.SessionsByState[st] += v
		})
	}
	r.Connections = ServerConnections{
		Current:        s.opt("pg_server_connections", nil),
		Max:            s.opt("pg_settings_max_connections", nil),
		Utilization:    s.opt("pg_server_connection_utilization_ratio", nil),
		IdleInTx:       s.opt("pg_stat_activity_idle_in_transaction_sessions", nil),
		WaitingOnLocks: s.opt("pg_stat_activity_waiting_on_locks_sessions", nil),
	}
	if u := r.Connections.Utilization; u != nil {
		*u = ratio(*u)
	}
}

func (s *registrySnapshot) database(name string) DatabaseStats {
	m := map[string]string{"datname": name}
	db := DatabaseStats{
		Name:       name,
		SizeBytes:  s.opt("pg_database_size_bytes", m),
		BlocksHit:  s.opt("pg_stat_database_blks_hit", m),
		BlocksRead: s.opt("pg_stat_database_blks_read", m),
		Commits:    s.opt("pg_stat_database_xact_commit", m),
		Rollbacks:  s.opt("pg_stat_database_xact_rollback", m),
		Deadlocks:  s.opt("pg_stat_database_deadlocks", m),
		TempBytes:  s.opt("pg_stat_database_temp_bytes", m),
		TempFiles:  s.opt("pg_stat_database_temp_files", m),
		Backends:   s.opt("pg_stat_database_numbackends", m),
	}
	if db.BlocksHit != nil && db.BlocksRead != nil && *db.BlocksHit+*db.BlocksRead > 0 {
		r := ratio(*db.BlocksHit / (*db.BlocksHit + *db.BlocksRead))
		db.CacheHitRatio = &r
	}
	return db
}

// topStatements returns the statements with the most total execution time, or nil when the
// collectors export no pg_stat_statements figures.
func (s *registrySnapshot) topStatements(limit int) []TopStatement {
	if _, ok := s.fams["pg_stat_statements_seconds_total"]; !ok {
		return nil
	}
	type key struct{ user, db, id string }
	byKey := map[key]*TopStatement{}
	get := func(l map[string]string) *TopStatement {
		k := key{l["user"], l["datname"], l["queryid"]}
		t := byKey[k]
		if t == nil {
			t = &TopStatement{QueryID: k.id, Database: k.db, User: k.user}
			byKey[k] = t
		}
		return t
	}
	s.each("pg_stat_statements_seconds_total", func(l map[string]string, v float64) { get(l).TotalSeconds = v })
	s.each("pg_stat_statements_calls_total", func(l map[string]string, v float64) { get(l).Calls = v })
	s.each("pg_stat_statements_rows_total", func(l map[string]string, v float64) { get(l).Rows = v })
	out := make([]TopStatement, 0, len(byKey))
	for _, t := range byKey {
		if t.Calls > 0 {
			t.MeanMs = round3(t.TotalSeconds * 1000 / t.Calls)
		}
		t.TotalSeconds = round3(t.TotalSeconds*1000) / 1000
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b TopStatement) int {
		if c := cmp.Compare(b.TotalSeconds, a.TotalSeconds); c != 0 {
			return c
		}
		return cmp.Compare(a.QueryID, b.QueryID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}
