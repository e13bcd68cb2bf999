package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestReplicationOnAPrimary(t *testing.T) {
	e := newEnv(t, "", only("replication"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "replication")
	for name, want := range map[string]float64{
		"pg_replication_is_replica": 0, "pg_replication_lag_seconds": 0, "pg_replication_last_replay_seconds": 0,
	} {
		checkFamily(t, s, name, dto.MetricType_GAUGE)
		if got := s.value(t, name, nil); got != want {
			t.Errorf("%s = %v on a primary, want %v", name, got, want)
		}
	}
}
