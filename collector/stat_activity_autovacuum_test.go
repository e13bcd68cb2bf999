package collector

import (
	"strings"
	"testing"
	"time"
)

// TestStatActivityAutovacuum checks the collector against the server; an autovacuum worker
// cannot be made to run on demand, so the relname parsing is checked on the query text alone.
func TestStatActivityAutovacuum(t *testing.T) {
	e := newEnv(t, "", only("stat_activity_autovacuum"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "stat_activity_autovacuum")
	var relname string
	expr := strings.Replace(newStatActivityAutovacuum().q.labels[0], "query", "$1::text", 1)
	err := openSession(t, "", "autovacuum-test").QueryRow(ctxTimeout(t, 10*time.Second),
		"SELECT "+expr, "autovacuum: VACUUM ANALYZE public.orders").Scan(&relname)
	if err != nil {
		t.Fatal(err)
	}
	if relname != "orders" {
		t.Errorf("relname %q, want orders", relname)
	}
}
