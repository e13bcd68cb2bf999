package collector

import (
	"strings"
	"testing"
	"time"
)

// TestStatWalReceiverOnAPrimary: a primary has no WAL receiver, so the collector succeeds with
// nothing to export. (The test cluster has no replica to check the values against.)
func TestStatWalReceiverOnAPrimary(t *testing.T) {
	e := newEnv(t, "", only("stat_wal_receiver"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "stat_wal_receiver")
	for name := range s.families {
		if strings.HasPrefix(name, "pg_stat_wal_receiver_") {
			t.Errorf("%s exported on a primary", name)
		}
	}
	// The query itself must be valid on this server, though it returns no row here.
	q := newStatWalReceiver().q.sql()
	if err := cluster.Exec(ctxTimeout(t, 10*time.Second), q); err != nil {
		t.Errorf("query fails: %v\n%s", err, q)
	}
}
