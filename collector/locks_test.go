package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestLocks(t *testing.T) {
	createDB(t, "locks_t")
	c := openSession(t, "locks_t", "locks-test")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{"CREATE TABLE t (id int)", "BEGIN", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, "", only("locks"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "locks")
	series := checkFamily(t, s, "pg_locks_count", dto.MetricType_GAUGE, "datname", "mode")
	if got := s.value(t, "pg_locks_count", map[string]string{"datname": "locks_t", "mode": "accessexclusivelock"}); got != 1 {
		t.Errorf("accessexclusivelock in locks_t = %v, want 1", got)
	}
	// Every mode of every database has a series, 0 when no lock of it is held.
	if got := s.value(t, "pg_locks_count", map[string]string{"datname": "locks_t", "mode": "sireadlock"}); got != 0 {
		t.Errorf("sireadlock = %v, want 0", got)
	}
	if n := len(s.values("pg_locks_count", map[string]string{"datname": "locks_t"})); n != 9 {
		t.Errorf("%d modes for locks_t, want 9 (of %d series)", n, len(series))
	}
}
