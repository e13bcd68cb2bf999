package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestArchiverCounters(t *testing.T) {
	e := newEnv(t, "", func(c *Config) { c.Enabled = map[string]bool{"activity": false, "settings": false, "database": false} })
	s := e.scrape(t, 0, 20*time.Second)
	for name, typ := range map[string]dto.MetricType{
		"pg_stat_archiver_archived_count": dto.MetricType_COUNTER,
		"pg_stat_archiver_failed_count":   dto.MetricType_COUNTER,
	} {
		mf := s.families[name]
		if mf == nil || mf.GetType() != typ || len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Fatalf("%s: %v, want one unlabelled %v", name, mf, typ)
		}
	}
	archived0 := s.value(t, "pg_stat_archiver_archived_count", nil)

	c := openSession(t, "", "archiver-test")
	ctx := ctxTimeout(t, 30*time.Second)
	var mode string
	if err := c.QueryRow(ctx, "SHOW archive_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode == "off" {
		t.Skip("archive_mode is off on this server")
	}
	// A segment switch only happens after WAL was written since the last one.
	for _, sql := range []string{"CREATE TABLE archiver_t ()", "DROP TABLE archiver_t", "SELECT pg_switch_wal()"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if !waitScrape(t, e, func(s scrape) bool {
		vs := s.values("pg_stat_archiver_archived_count", nil)
		return len(vs) == 1 && vs[0] >= archived0+1 && len(s.values("pg_stat_archiver_last_archive_age", nil)) == 1
	}, &s) {
		t.Fatalf("archived segment never counted:\n%s", s.body)
	}
	if mf := s.families["pg_stat_archiver_last_archive_age"]; mf.GetType() != dto.MetricType_GAUGE {
		t.Errorf("last_archive_age type %v, want gauge", mf.GetType())
	}
	if age := s.value(t, "pg_stat_archiver_last_archive_age", nil); age < 0 || age > 60 {
		t.Errorf("last_archive_age = %v s just after archiving", age)
	}
	if got := s.value(t, "pg_stat_archiver_failed_count", nil); got != 0 {
		t.Errorf("failed_count = %v with an archive command that always succeeds", got)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "archiver"}); got != 1 {
		t.Errorf("archiver success = %v", got)
	}
}
