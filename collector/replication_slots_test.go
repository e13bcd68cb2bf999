package collector

import (
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestReplicationSlots(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	// A physical slot that reserves WAL at once, so it has a restart_lsn and retains WAL.
	if err := cluster.Exec(ctx, "SELECT pg_create_physical_replication_slot('collector_slot', true)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Exec(context.Background(), "SELECT pg_drop_replication_slot('collector_slot')")
	})
	c := openSession(t, "", "slots-test")
	for _, sql := range []string{"CREATE TABLE slots_t AS SELECT g FROM generate_series(1, 10000) g", "DROP TABLE slots_t"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, "", only("replication_slots"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "replication_slots")
	byDB := map[string]string{"slot_name": "collector_slot", "database": ""}
	byType := map[string]string{"slot_name": "collector_slot", "slot_type": "physical"}
	checkFamily(t, s, "pg_replication_slots_active", dto.MetricType_GAUGE, "slot_name", "database")
	checkFamily(t, s, "pg_replication_slots_pg_wal_lsn_diff", dto.MetricType_GAUGE, "slot_name", "database")
	checkFamily(t, s, "pg_replication_slots_slot_current_wal_lsn", dto.MetricType_GAUGE, "slot_name", "slot_type")
	checkFamily(t, s, "pg_replication_slots_slot_is_active", dto.MetricType_GAUGE, "slot_name", "slot_type")
	checkFamily(t, s, "pg_replication_slots_wal_status", dto.MetricType_GAUGE, "slot_name", "slot_type", "wal_status")
	if got := s.value(t, "pg_replication_slots_active", byDB); got != 0 {
		t.Errorf("active = %v for a slot nobody uses", got)
	}
	if got := s.value(t, "pg_replication_slots_slot_is_active", byType); got != 0 {
		t.Errorf("slot_is_active = %v", got)
	}
	if got := s.value(t, "pg_replication_slots_pg_wal_lsn_diff", byDB); got <= 0 {
		t.Errorf("pg_wal_lsn_diff = %v after writing WAL past the slot", got)
	}
	if got := s.value(t, "pg_replication_slots_slot_current_wal_lsn", byType); got <= 0 {
		t.Errorf("slot_current_wal_lsn = %v", got)
	}
	if got := s.value(t, "pg_replication_slots_wal_status", map[string]string{"slot_name": "collector_slot", "wal_status": "reserved"}); got != 1 {
		t.Errorf("wal_status{reserved} = %v", got)
	}
	// confirmed_flush_lsn is exported for active slots only, as upstream does.
	if vs := s.values("pg_replication_slots_slot_confirmed_flush_lsn", byType); len(vs) != 0 {
		t.Errorf("slot_confirmed_flush_lsn exported for an inactive slot: %v", vs)
	}
}
