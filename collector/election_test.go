package collector

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/faultproxy"
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

// leads scrapes e and reports whether it says it runs the server-wide collectors.
func leads(t *testing.T, e *env) bool {
	t.Helper()
	return e.scrape(t, 0, 20*time.Second).value(t, "pgsidecar_collector_leader", nil) == 1
}

// TestElectionPartition cuts the leader off the server (a black hole in between, connections
// open): the server ends the leader's idle election session after the lease, so the sidecar
// still in touch takes over, and the cut-off leader, whose poll timed out, no longer claims
// the role.
func TestElectionPartition(t *testing.T) {
	cluster.RequireControl(t)
	fp, err := faultproxy.Start(fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fp.Close() })
	auto := func(c *Config) {
		only("database")(c)
		c.Scope = ScopeAuto
		c.ElectionInterval = 200 * time.Millisecond
		c.Timeout = time.Second // a collection stuck in the black hole ends soon
	}
	far := newEnvURL(t, strings.Replace(cluster.URL(""), fmt.Sprintf(":%d/", cluster.Port()), fmt.Sprintf(":%d/", fp.Port()), 1), auto)
	if !pgtest.WaitFor(10*time.Second, func() bool { return leads(t, far) }) {
		t.Fatalf("the only sidecar does not lead:\n%s", far.log.String())
	}
	near := newEnv(t, "", auto)
	if leads(t, near) {
		t.Fatal("two leaders")
	}
	fp.SetMode(faultproxy.BlackHole)
	cut := time.Now()
	// The server ends the cut-off session after the lease (5 × 200ms), freeing the lock.
	if !pgtest.WaitFor(5*time.Second, func() bool { return leads(t, near) }) {
		t.Fatalf("no takeover within 5s of the partition:\n%s", near.log.String())
	}
	t.Logf("takeover %s after the partition", time.Since(cut).Round(10*time.Millisecond))
	if leads(t, far) {
		t.Fatalf("the cut-off leader still claims the role:\n%s", far.log.String())
	}
}

// TestElectionKeyFollowsTheConfiguration runs two exporters with different collectors on one
// server: their keys differ, so each leads, rather than one's collectors going missing.
func TestElectionKeyFollowsTheConfiguration(t *testing.T) {
	withCollectors := func(names ...string) func(*Config) {
		return func(c *Config) {
			only(names...)(c)
			c.Scope = ScopeAuto
			c.ElectionInterval = 200 * time.Millisecond
		}
	}
	a := newEnv(t, "", withCollectors("database"))
	b := newEnv(t, "", withCollectors("database", "locks"))
	if !pgtest.WaitFor(10*time.Second, func() bool { return leads(t, a) && leads(t, b) }) {
		t.Fatal("differently configured exporters share a leader")
	}
}

// TestElectionWithoutItsDatabase gives the election up when its database does not exist: the
// exporter collects as with ScopeAll, and says why.
func TestElectionWithoutItsDatabase(t *testing.T) {
	e := newEnv(t, "", func(c *Config) {
		only("database")(c)
		c.Scope = ScopeAuto
		c.ElectionDatabase = "no_such_election_db"
	})
	if !leads(t, e) || !strings.Contains(e.log.String(), "Collector election given up") ||
		!strings.Contains(e.log.String(), "no_such_election_db") {
		t.Fatalf("the election was not given up:\n%s", e.log.String())
	}
}

// TestElectionKeyFollowsThePoolDatabase: without discovery, the per-database collectors read
// only the pool's database, so exporters on different databases each lead; with discovery
// (and no filter) one leader reads them all.
func TestElectionKeyFollowsThePoolDatabase(t *testing.T) {
	createDB(t, "elect_other")
	for _, discover := range []bool{false, true} {
		cfg := func(c *Config) {
			only("database", "stat_user_tables")(c)
			c.Scope = ScopeAuto
			c.ElectionInterval = 200 * time.Millisecond
			c.Discover = discover
		}
		a, b := newEnv(t, "", cfg), newEnv(t, "elect_other", cfg)
		if !pgtest.WaitFor(10*time.Second, func() bool { return leads(t, a) || leads(t, b) }) {
			t.Fatal("no leader")
		}
		time.Sleep(500 * time.Millisecond)
		if both := leads(t, a) && leads(t, b); both == discover {
			t.Fatalf("discover %v: both lead: %v", discover, both)
		}
		a.exp.Close()
		b.exp.Close()
	}
}
