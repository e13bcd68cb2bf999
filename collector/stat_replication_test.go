package collector

import (
	"context"
	"os/exec"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestStatReplication streams WAL to a real pg_receivewal, a WAL sender without replay, so the
// position has a sample and the replay lag none.
func TestStatReplication(t *testing.T) {
	bin, err := exec.LookPath("pg_receivewal")
	if err != nil {
		t.Skip("pg_receivewal not installed (PostgreSQL's client tools)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	recv := exec.CommandContext(ctx, bin, "-d", cluster.URL("")+"&application_name=stat_repl_test", "-D", t.TempDir(), "--no-loop")
	recv.WaitDelay = 5 * time.Second
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = recv.Wait() })

	e := newEnv(t, "", only("stat_replication"))
	labels := map[string]string{"application_name": "stat_repl_test", "slot_name": ""}
	var s scrape
	if !waitScrape(t, e, func(s scrape) bool {
		return len(s.values("pg_stat_replication_pg_current_wal_lsn_bytes", labels)) == 1
	}, &s) {
		t.Fatalf("no WAL sender series for pg_receivewal:\n%s", s.body)
	}
	collectorOK(t, s, "stat_replication")
	checkFamily(t, s, "pg_stat_replication_pg_current_wal_lsn_bytes", dto.MetricType_GAUGE, "application_name", "client_addr", "pid", "slot_name", "state")
	want, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second), "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.value(t, "pg_stat_replication_pg_current_wal_lsn_bytes", labels); got <= 0 || got > float64(want) {
		t.Errorf("pg_current_wal_lsn_bytes = %v, server at %d", got, want)
	}
	if got := s.values("pg_stat_replication_pg_wal_lsn_diff", labels); len(got) != 0 {
		t.Errorf("pg_wal_lsn_diff for a receiver that replays nothing: %v", got)
	}
	for _, l := range s.families["pg_stat_replication_pg_current_wal_lsn_bytes"].GetMetric()[0].GetLabel() {
		if l.GetName() == "state" && l.GetValue() != "streaming" && l.GetValue() != "startup" && l.GetValue() != "catchup" {
			t.Errorf("state label %q", l.GetValue())
		}
	}
}
