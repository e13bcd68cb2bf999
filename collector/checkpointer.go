package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	// On by default: from PostgreSQL 17 the checkpoint alert and panels read its series, and
	// before 17 it sends no query.
	register("checkpointer", true, "Checkpoint and restartpoint counters from pg_stat_checkpointer (PostgreSQL 17 and later; before, the bgwriter collector has them)",
		func(Options) Collector { return newCheckpointer() })
}

// checkpointer reads pg_stat_checkpointer, which PostgreSQL 17 split off pg_stat_bgwriter,
// under postgres_exporter's stat_checkpointer names. Before 17 it exports nothing: the same
// counters come from the bgwriter collector there.
type checkpointer struct {
	q rowQuery
}

func newCheckpointer() *checkpointer {
	d := func(name, help string) *prometheus.Desc {
		return since(170000, desc("pg_stat_checkpointer_"+name, help))
	}
	return &checkpointer{q: rowQuery{
		cols: []column{
			counter("num_timed", d("num_timed_total", "Number of scheduled checkpoints due to timeout.")),
			counter("num_requested", d("num_requested_total", "Number of requested checkpoints that have been performed.")),
			counter("restartpoints_timed", d("restartpoints_timed_total",
				"Number of scheduled restartpoints due to timeout or after a failed attempt to perform it.")),
			counter("restartpoints_req", d("restartpoints_req_total", "Number of requested restartpoints.")),
			counter("restartpoints_done", d("restartpoints_done_total", "Number of restartpoints that have been performed.")),
			counter("write_time", d("write_time_total",
				"Time spent in the portion of checkpoints and restartpoints where files are written to disk, in milliseconds.")),
			counter("sync_time", d("sync_time_total",
				"Time spent in the portion of checkpoints and restartpoints where files are synchronized to disk, in milliseconds.")),
			counter("buffers_written", d("buffers_written_total", "Number of buffers written during checkpoints and restartpoints.")),
			counter(epoch("stats_reset"), d("stats_reset_total",
				"Time at which these statistics were last reset, in seconds since the Unix epoch.")),
		},
		from: "FROM pg_stat_checkpointer",
	}}
}

// checkpointerQuery is the query for a server version, "" before PostgreSQL 17.
func (c *checkpointer) query(version int) string {
	if version < 170000 {
		return ""
	}
	return c.q.sql()
}

func (c *checkpointer) Update(ctx context.Context, s *Scrape) error {
	if c.query(s.Version) == "" {
		return nil
	}
	return c.q.run(ctx, s)
}
