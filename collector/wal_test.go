package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestWAL(t *testing.T) {
	e := newEnv(t, "", only("wal"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "wal")
	checkFamily(t, s, "pg_wal_segments", dto.MetricType_GAUGE)
	checkFamily(t, s, "pg_wal_size_bytes", dto.MetricType_GAUGE)
	segments := s.value(t, "pg_wal_segments", nil)
	size := s.value(t, "pg_wal_size_bytes", nil)
	if segments < 1 {
		t.Fatalf("segments = %v", segments)
	}
	segSize, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
	if err != nil {
		t.Fatal(err)
	}
	if size != segments*float64(segSize) {
		t.Errorf("size_bytes = %v, want %v segments × %d", size, segments, segSize)
	}
}
