package collector

import (
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestElectionInProcess runs two exporters with ScopeAuto on one server: one collects, the
// other exports pg_up only; closing the leader (its session ends) hands the role over within
// a few polls.
func TestElectionInProcess(t *testing.T) {
	auto := func(c *Config) {
		only("database")(c)
		c.Scope = ScopeAuto
		c.ElectionInterval = 200 * time.Millisecond
	}
	a, b := newEnv(t, "", auto), newEnv(t, "", auto)
	collects := func(e *env) bool {
		s := e.scrape(t, 0, 20*time.Second)
		leads := s.value(t, "pgsidecar_collector_leader", nil) == 1
		if got := len(s.values("pg_stat_database_xact_commit", nil)) > 0; got != leads {
			t.Fatalf("pg_stat_database series: %v, leader: %v", got, leads)
		}
		if s.value(t, "pg_up", nil) != 1 {
			t.Fatal("pg_up is not 1")
		}
		return leads
	}
	var leader, follower *env
	if !pgtest.WaitFor(10*time.Second, func() bool {
		ca, cb := collects(a), collects(b)
		switch {
		case ca && !cb:
			leader, follower = a, b
		case cb && !ca:
			leader, follower = b, a
		}
		return leader != nil
	}) {
		t.Fatal("not exactly one leader")
	}
	leader.exp.Close()
	if !pgtest.WaitFor(5*time.Second, func() bool { return collects(follower) }) {
		t.Fatalf("the follower did not take over:\n%s", follower.log.String())
	}
}
