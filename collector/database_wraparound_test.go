package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestDatabaseWraparound(t *testing.T) {
	createDB(t, "wraparound_t")
	e := newEnv(t, "", only("database_wraparound"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "database_wraparound")
	checkFamily(t, s, "pg_database_wraparound_age_datfrozenxid_seconds", dto.MetricType_GAUGE, "datname")
	checkFamily(t, s, "pg_database_wraparound_age_datminmxid_seconds", dto.MetricType_GAUGE, "datname")
	db := map[string]string{"datname": "wraparound_t"}
	want, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT age(datfrozenxid) FROM pg_database WHERE datname = 'wraparound_t'")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.value(t, "pg_database_wraparound_age_datfrozenxid_seconds", db); got > float64(want) || got < float64(want)-100 {
		t.Errorf("age_datfrozenxid = %v, server says %d", got, want)
	}
	// template0 does not accept connections and is left out, as upstream does.
	if vs := s.values("pg_database_wraparound_age_datfrozenxid_seconds", map[string]string{"datname": "template0"}); len(vs) != 0 {
		t.Errorf("template0 exported: %v", vs)
	}
	if DefaultEnabled("database_wraparound") {
		t.Error("database_wraparound is on by default; postgres_exporter has it off")
	}
}
