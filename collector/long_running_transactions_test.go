package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestLongRunningTransactions(t *testing.T) {
	e := newEnv(t, "", only("long_running_transactions"))
	before := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, before, "long_running_transactions")
	n0 := before.value(t, "pg_long_running_transactions", nil)

	c := openSession(t, "", "long-tx-test")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{"BEGIN", "SELECT txid_current()"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	s := e.scrape(t, 0, 20*time.Second)
	checkFamily(t, s, "pg_long_running_transactions", dto.MetricType_GAUGE)
	checkFamily(t, s, "pg_long_running_transactions_oldest_timestamp_seconds", dto.MetricType_GAUGE)
	if got := s.value(t, "pg_long_running_transactions", nil); got != n0+1 {
		t.Errorf("transactions = %v, want %v", got, n0+1)
	}
	if got := s.value(t, "pg_long_running_transactions_oldest_timestamp_seconds", nil); got < 1 {
		t.Errorf("oldest = %v s for a transaction open more than a second", got)
	}
}
