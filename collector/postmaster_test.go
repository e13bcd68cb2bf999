package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestPostmaster(t *testing.T) {
	e := newEnv(t, "", only("postmaster"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "postmaster")
	checkFamily(t, s, "pg_postmaster_start_time_seconds", dto.MetricType_GAUGE)
	want, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT floor(extract(epoch FROM pg_postmaster_start_time()))::bigint")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.value(t, "pg_postmaster_start_time_seconds", nil); got < float64(want) || got >= float64(want+1) {
		t.Errorf("start_time_seconds = %v, server started at %d", got, want)
	}
}
