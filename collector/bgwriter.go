package collector

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("bgwriter", true, "Background writer and checkpoint counters from pg_stat_bgwriter",
		func(Options) Collector { return newBgwriter() })
}

// bgwriterColumn is one pg_stat_bgwriter column and the counter it becomes.
type bgwriterColumn struct {
	expr   string // SQL giving the value
	metric string
	help   string
	// before17 marks the columns PostgreSQL 17 moved to pg_stat_checkpointer or pg_stat_io.
	before17 bool
}

// bgwriterColumns follows postgres_exporter's stat_bgwriter collector: every series is a
// counter, times stay in milliseconds and stats_reset is a Unix time in whole seconds (0 when
// never reset).
var bgwriterColumns = []bgwriterColumn{
	{expr: "checkpoints_timed", metric: "checkpoints_timed_total", before17: true,
		help: "Number of scheduled checkpoints that have been performed."},
	{expr: "checkpoints_req", metric: "checkpoints_req_total", before17: true,
		help: "Number of requested checkpoints that have been performed."},
	{expr: "checkpoint_write_time", metric: "checkpoint_write_time_total", before17: true,
		help: "Time spent in the portion of checkpoint processing where files are written to disk, in milliseconds."},
	{expr: "checkpoint_sync_time", metric: "checkpoint_sync_time_total", before17: true,
		help: "Time spent in the portion of checkpoint processing where files are synchronized to disk, in milliseconds."},
	{expr: "buffers_checkpoint", metric: "buffers_checkpoint_total", before17: true,
		help: "Number of buffers written during checkpoints."},
	{expr: "buffers_clean", metric: "buffers_clean_total",
		help: "Number of buffers written by the background writer."},
	{expr: "maxwritten_clean", metric: "maxwritten_clean_total",
		help: "Number of times the background writer stopped a cleaning scan because it had written too many buffers."},
	{expr: "buffers_backend", metric: "buffers_backend_total", before17: true,
		help: "Number of buffers written directly by a backend."},
	{expr: "buffers_backend_fsync", metric: "buffers_backend_fsync_total", before17: true,
		help: "Number of times a backend had to execute its own fsync call."},
	{expr: "buffers_alloc", metric: "buffers_alloc_total",
		help: "Number of buffers allocated."},
	{expr: "COALESCE(floor(extract(epoch FROM stats_reset)), 0)", metric: "stats_reset_total",
		help: "Time at which these statistics were last reset, in seconds since the Unix epoch."},
}

type bgwriter struct {
	descs []*prometheus.Desc // parallel to bgwriterColumns
}

func newBgwriter() *bgwriter {
	c := &bgwriter{}
	for _, col := range bgwriterColumns {
		d := counterDesc("pg_stat_bgwriter_"+col.metric, col.help)
		if col.before17 {
			d = before(170000, d)
		}
		c.descs = append(c.descs, d)
	}
	return c
}

// bgwriterColumnsFor lists the columns pg_stat_bgwriter has on the server version.
func bgwriterColumnsFor(version int) []int {
	var idx []int
	for i, col := range bgwriterColumns {
		if !col.before17 || version < 170000 {
			idx = append(idx, i)
		}
	}
	return idx
}

// bgwriterQuery is the pg_stat_bgwriter query for a server version.
func bgwriterQuery(version int) string {
	var exprs []string
	for _, i := range bgwriterColumnsFor(version) {
		exprs = append(exprs, "("+bgwriterColumns[i].expr+")::float8")
	}
	return "SELECT " + strings.Join(exprs, ", ") + "\nFROM pg_stat_bgwriter"
}

func (c *bgwriter) Update(ctx context.Context, s *Scrape) error {
	cols := bgwriterColumnsFor(s.Version)
	vals := make([]*float64, len(cols))
	dest := make([]any, len(cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := s.Conn.QueryRow(ctx, bgwriterQuery(s.Version)).Scan(dest...); err != nil {
		return err
	}
	for j, i := range cols {
		v := 0.0 // a missing value reads 0, as in postgres_exporter
		if vals[j] != nil {
			v = *vals[j]
		}
		s.Counter(c.descs[i], v)
	}
	return nil
}
