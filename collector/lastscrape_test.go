package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestLastScrapeSeries checks postgres_exporter's own series, which its mixin alerts on.
func TestLastScrapeSeries(t *testing.T) {
	e := newEnv(t, "", only("roles"))
	s := e.scrape(t, 0, 20*time.Second)
	checkFamily(t, s, "pg_exporter_last_scrape_error", dto.MetricType_GAUGE)
	checkFamily(t, s, "pg_exporter_last_scrape_duration_seconds", dto.MetricType_GAUGE)
	checkFamily(t, s, "pg_exporter_scrapes_total", dto.MetricType_COUNTER)
	if got := s.value(t, "pg_exporter_last_scrape_error", nil); got != 0 {
		t.Errorf("last_scrape_error = %v after a clean collection", got)
	}
	if got := s.value(t, "pg_exporter_last_scrape_duration_seconds", nil); got <= 0 || got > 20 {
		t.Errorf("last_scrape_duration_seconds = %v", got)
	}
	n := s.value(t, "pg_exporter_scrapes_total", nil)
	if n < 1 {
		t.Errorf("scrapes_total = %v", n)
	}
	if got := e.scrape(t, 0, 20*time.Second).value(t, "pg_exporter_scrapes_total", nil); got != n+1 {
		t.Errorf("scrapes_total = %v after one more scrape, want %v", got, n+1)
	}

	broken := newEnv(t, "", only("roles", "test_broken"))
	if got := broken.scrape(t, 0, 20*time.Second).value(t, "pg_exporter_last_scrape_error", nil); got != 1 {
		t.Errorf("last_scrape_error = %v with a failing collector", got)
	}
}
