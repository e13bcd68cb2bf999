package collector

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("process_idle", false, "How long server processes have been idle, by state and application_name",
		func(Options) Collector { return newProcessIdle() })
}

// processIdleBuckets are postgres_exporter's bucket bounds, in seconds.
var processIdleBuckets = []float64{1, 2, 5, 15, 30, 60, 90, 120, 300}

// processIdle exports postgres_exporter's pg_process_idle_seconds histogram: one per state
// (idle, idle in transaction, ...) and application_name of the idle backends. application_name
// is the client's to choose, so the series are bounded by max_connections, not by a list.
type processIdle struct {
	desc *prometheus.Desc
}

func newProcessIdle() *processIdle {
	return &processIdle{desc: histogramDesc("pg_process_idle_seconds", "Idle time of server processes, by state and application_name.",
		"state", "application_name")}
}

func (c *processIdle) Update(ctx context.Context, s *Scrape) error {
	const q = `SELECT state, COALESCE(application_name, ''),
  count(*)::float8,
  COALESCE(sum(extract(epoch FROM clock_timestamp() - state_change)), 0)::float8,
  array_agg(extract(epoch FROM clock_timestamp() - state_change)::float8)
FROM pg_stat_activity
WHERE state LIKE 'idle%' AND state_change IS NOT NULL AND pid <> pg_backend_pid()
GROUP BY 1, 2`
	return queryRows(ctx, s.Conn, q, func(r pgx.Rows) error {
		var state, app string
		var count, sum float64
		var ages []float64
		if err := r.Scan(&state, &app, &count, &sum, &ages); err != nil {
			return err
		}
		h := &histogramValue{count: uint64(count), sum: sum, buckets: make(map[float64]uint64, len(processIdleBuckets))}
		for _, le := range processIdleBuckets {
			for _, a := range ages {
				if a <= le {
					h.buckets[le]++
				}
			}
		}
		s.check(c.desc, TypeHistogram)
		s.sink.addHistogram(c.desc, h, []string{state, app})
		return nil
	})
}
