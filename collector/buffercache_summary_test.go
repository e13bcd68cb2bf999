package collector

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestBuffercacheSummaryQueryByVersion: pg_buffercache_summary() exists from PostgreSQL 16.
func TestBuffercacheSummaryQueryByVersion(t *testing.T) {
	c := newBuffercacheSummary()
	for _, v := range []int{130012, 140009, 150004} {
		if q := c.query(v); q != "" {
			t.Errorf("%d: query %q, want none", v, q)
		}
	}
	for _, v := range []int{160001, 170002} {
		if q := c.query(v); !strings.Contains(q, "pg_buffercache_summary()") || !strings.Contains(q, "(usagecount_avg)") {
			t.Errorf("%d: query %q", v, q)
		}
	}
}

func TestBuffercacheSummary(t *testing.T) {
	ctx := ctxTimeout(t, 10*time.Second)
	version, err := cluster.QueryInt(ctx, "SELECT current_setting('server_version_num')::int")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", only("buffercache_summary"))
	if version < 160000 {
		s := e.scrape(t, 0, 20*time.Second)
		collectorOK(t, s, "buffercache_summary")
		if _, ok := s.families["pg_buffercache_summary_buffers_used"]; ok {
			t.Error("exported before PostgreSQL 16")
		}
		return
	}
	if err := cluster.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_buffercache"); err != nil {
		t.Skipf("pg_buffercache is not available: %v", err)
	}
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "buffercache_summary")
	for _, name := range []string{"buffers_used", "buffers_unused", "buffers_dirty", "buffers_pinned", "usagecount_avg"} {
		checkFamily(t, s, "pg_buffercache_summary_"+name, dto.MetricType_GAUGE)
	}
	if got := s.value(t, "pg_buffercache_summary_buffers_used", nil); got < 1 {
		t.Errorf("buffers_used = %v", got)
	}
}
