package collector

import (
	"strings"
	"testing"
	"time"
)

// TestCheckpointerQueryByVersion checks the version choice: pg_stat_checkpointer exists from
// PostgreSQL 17; before, the bgwriter collector exports the same counters.
func TestCheckpointerQueryByVersion(t *testing.T) {
	c := newCheckpointer()
	for _, v := range []int{130012, 140009, 150004, 160001} {
		if q := c.query(v); q != "" {
			t.Errorf("%d: query %q, want none", v, q)
		}
	}
	for _, v := range []int{170002, 180000} {
		q := c.query(v)
		for _, col := range []string{"(num_timed)", "(num_requested)", "(restartpoints_done)", "(buffers_written)", "stats_reset", "FROM pg_stat_checkpointer"} {
			if !strings.Contains(q, col) {
				t.Errorf("%d: query lacks %s", v, col)
			}
		}
	}
}

func TestCheckpointerOnOlderServers(t *testing.T) {
	// On by default (postgres_exporter has it off): from PostgreSQL 17 the checkpoint alert and
	// panels need its series, and before 17 it costs no query.
	if !DefaultEnabled("checkpointer") {
		t.Error("checkpointer is off by default; PostgreSQL 17's checkpoint counters would be missing")
	}
	e := newEnv(t, "", only("checkpointer"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "checkpointer")
	version, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT current_setting('server_version_num')::int")
	if err != nil {
		t.Fatal(err)
	}
	if version < 170000 {
		for name := range s.families {
			if strings.HasPrefix(name, "pg_stat_checkpointer_") {
				t.Errorf("%s exported before PostgreSQL 17", name)
			}
		}
	}
}
