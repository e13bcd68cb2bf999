package collector

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestBgwriterCounters(t *testing.T) {
	version, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT current_setting('server_version_num')::int")
	if err != nil {
		t.Fatal(err)
	}
	// PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer (the checkpointer
	// collector's); pg_stat_bgwriter keeps the background writer's own.
	requested, buffers := "pg_stat_bgwriter_checkpoints_req_total", "pg_stat_bgwriter_buffers_checkpoint_total"
	if version >= 170000 {
		requested, buffers = "pg_stat_checkpointer_num_requested_total", "pg_stat_checkpointer_buffers_written_total"
	}
	e := newEnv(t, "", func(c *Config) { c.Enabled = map[string]bool{"activity": false, "settings": false, "database": false} })
	before := e.scrape(t, 0, 20*time.Second)
	req0 := before.value(t, requested, nil)

	c := openSession(t, "", "bgwriter-test")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{"CREATE TABLE bgwriter_t AS SELECT g FROM generate_series(1, 10000) g", "CHECKPOINT", "DROP TABLE bgwriter_t"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var s scrape
	if !waitScrape(t, e, func(s scrape) bool {
		vs := s.values(requested, nil)
		return len(vs) == 1 && vs[0] >= req0+1
	}, &s) {
		t.Fatalf("requested checkpoint never counted:\n%s", s.body)
	}
	if got := s.value(t, buffers, nil); got < 1 {
		t.Errorf("%s = %v after a checkpoint of dirty buffers", buffers, got)
	}
	// postgres_exporter's names: all counters, no labels, stats_reset as a Unix time.
	for _, i := range bgwriterColumnsFor(int(version)) {
		name := "pg_stat_bgwriter_" + bgwriterColumns[i].metric
		mf := s.families[name]
		if mf == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if mf.GetType() != dto.MetricType_COUNTER || len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Errorf("%s: type %v, %d series, want one unlabelled counter", name, mf.GetType(), len(mf.GetMetric()))
		}
	}
	if got := s.value(t, "pg_stat_bgwriter_stats_reset_total", nil); got != 0 && (got < 1e9 || got > float64(time.Now().Unix()) || got != float64(int64(got))) {
		t.Errorf("stats_reset_total = %v, want a Unix time in whole seconds or 0", got)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "bgwriter"}); got != 1 {
		t.Errorf("bgwriter success = %v", got)
	}
}

// TestBgwriterQueryByVersion checks the column choice for each supported major version:
// PostgreSQL 17 moved the checkpoint and backend columns out of pg_stat_bgwriter.
func TestBgwriterQueryByVersion(t *testing.T) {
	checkpointCols := []string{"(checkpoints_timed)", "(checkpoints_req)", "(checkpoint_write_time)",
		"(checkpoint_sync_time)", "(buffers_checkpoint)", "(buffers_backend)", "(buffers_backend_fsync)"}
	for _, c := range []struct {
		version     int
		checkpoints bool
	}{
		{130012, true}, {140009, true}, {150004, true}, {160001, true}, {170002, false}, {180000, false},
	} {
		q := bgwriterQuery(c.version)
		for _, col := range []string{"(buffers_clean)", "(maxwritten_clean)", "(buffers_alloc)", "stats_reset"} {
			if !strings.Contains(q, col) {
				t.Errorf("%d: query lacks %s", c.version, col)
			}
		}
		for _, col := range checkpointCols {
			if strings.Contains(q, col) != c.checkpoints {
				t.Errorf("%d: %s present = %v, want %v", c.version, col, !c.checkpoints, c.checkpoints)
			}
		}
		if n := len(bgwriterColumnsFor(c.version)); c.checkpoints && n != 11 || !c.checkpoints && n != 4 {
			t.Errorf("%d: %d columns", c.version, n)
		}
	}
}
