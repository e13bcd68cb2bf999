package collector

import (
	"testing"
	"time"
)

// TestPerDatabaseCollectorsAfterPasswordReload: the connections the per-database collectors open
// to other databases log in with the password the pool took on a reload, as the pool's own do.
func TestPerDatabaseCollectorsAfterPasswordReload(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_a,pd_b"
		c.DatabasesMaxIdle = 0 // a new connection to pd_b at every scrape
	})
	if s := e.scrape(t, 0, 30*time.Second); s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": "pd_b"}) != 1 {
		t.Fatalf("pd_b not read before the rotation:\n%s", s.body)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	if err := cluster.Exec(ctx, "ALTER ROLE pd_monitor PASSWORD 'pd-monitor-pw-rotated'"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.ReloadPassword(cluster.URLFor("pd_monitor", "pd-monitor-pw-rotated", "pd_a")); err != nil {
		t.Fatal(err)
	}
	s := e.scrape(t, 0, 30*time.Second)
	if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": "pd_b"}); got != 1 {
		t.Fatalf("pd_b after the password reload: success %v\nlogs:\n%s", got, e.log.String())
	}
}
