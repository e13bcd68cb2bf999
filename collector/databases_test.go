package collector

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDatabaseFilter(t *testing.T) {
	for _, c := range []struct {
		spec     string
		selected []string
		left     []string
	}{
		{"", []string{"app", "postgres", "x"}, nil},
		{"app", []string{"app"}, []string{"app2", "postgres"}},
		{"app_*, shop", []string{"app_1", "app_x", "shop"}, []string{"app", "shop2", "postgres"}},
		{"!postgres", []string{"app", "x"}, []string{"postgres"}},
		{"app_*,!app_test*", []string{"app_1"}, []string{"app_test", "app_test_2", "other"}},
	} {
		f, err := parseDatabaseFilter(c.spec)
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		for _, db := range c.selected {
			if !f.match(db) {
				t.Errorf("%q leaves %s out", c.spec, db)
			}
		}
		for _, db := range c.left {
			if f.match(db) {
				t.Errorf("%q selects %s", c.spec, db)
			}
		}
	}
	err := testConfig(func(c *Config) { c.Databases = "app,[x" }).Validate()
	if err == nil || !strings.Contains(err.Error(), "--collector.databases") || !strings.Contains(err.Error(), "[x") {
		t.Errorf("bad pattern: %v", err)
	}
}

// perDatabaseSetup makes the databases of the per-database tests, each with a table t, and a
// monitoring role that is not a superuser (superusers may connect anywhere). pd_revoked does
// not grant it CONNECT; pd_refuse admits no non-superuser connection, which only shows when
// connecting. It returns the role's URL for database db.
func perDatabaseSetup(t *testing.T, db string) string {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	for _, d := range []string{"pd_a", "pd_b", "pd_c", "pd_drop", "pd_revoked", "pd_refuse"} {
		createDB(t, d)
		c := openSession(t, d, "pd-setup")
		if _, err := c.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)"); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		"DROP ROLE IF EXISTS pd_monitor",
		"CREATE ROLE pd_monitor LOGIN PASSWORD 'pd-monitor-pw' IN ROLE pg_monitor",
		"REVOKE CONNECT ON DATABASE pd_revoked FROM PUBLIC",
		"ALTER DATABASE pd_refuse CONNECTION LIMIT 0",
	} {
		if err := cluster.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS pd_monitor") })
	return cluster.URLFor("pd_monitor", "pd-monitor-pw", db)
}

func TestPerDatabaseCollectors(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables", "statio_user_tables", "statio_user_indexes")(c)
		c.Databases = "pd_*"
		c.DatabasesMaxIdle = 0
	})
	// Just before each other database is visited: count the collector's sessions outside the
	// pool's database (none kept idle here, so at most the one in use), and drop pd_drop once
	// it was listed.
	var mu sync.Mutex
	var visited []string
	maxSide := int64(0)
	e.exp.beforeDatabase = func(db string) {
		ctx := ctxTimeout(t, 30*time.Second)
		n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar-collector' AND datname <> 'pd_a'")
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		visited = append(visited, db)
		maxSide = max(maxSide, n)
		mu.Unlock()
		if db == "pd_drop" {
			if err := cluster.Exec(ctx, "DROP DATABASE pd_drop WITH (FORCE)"); err != nil {
				t.Error(err)
			}
		}
	}
	s := e.scrape(t, 0, 30*time.Second)
	if s.status != 200 || s.value(t, "pg_up", nil) != 1 {
		t.Fatalf("status %d:\n%s", s.status, s.body)
	}
	mu.Lock()
	slices.Sort(visited) // visited several at a time
	if got := strings.Join(visited, ","); got != "pd_b,pd_c,pd_drop,pd_refuse" {
		t.Errorf("visited %s, want the other selected databases the role may connect to", got)
	}
	if maxSide > 1 {
		t.Errorf("%d side connections open at once, want at most 1", maxSide)
	}
	mu.Unlock()
	for _, c := range []string{"stat_user_tables", "statio_user_tables", "statio_user_indexes"} {
		collectorOK(t, s, c) // a dropped or refusing database does not fail the collectors
	}
	for _, db := range []string{"pd_a", "pd_b", "pd_c"} {
		tbl := map[string]string{"datname": db, "schemaname": "public", "relname": "t"}
		if vs := s.values("pg_stat_user_tables_n_tup_ins", tbl); len(vs) != 1 || vs[0] != 10 {
			t.Errorf("%s: n_tup_ins %v, want [10]", db, vs)
		}
		if vs := s.values("pg_statio_user_tables_heap_blocks_hit", tbl); len(vs) != 1 {
			t.Errorf("%s: heap_blocks_hit %v", db, vs)
		}
		if vs := s.values("pg_statio_user_indexes_idx_blks_hit_total", map[string]string{"datname": db, "indexrelname": "t_pkey"}); len(vs) != 1 {
			t.Errorf("%s: idx_blks_hit_total %v", db, vs)
		}
		if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": db}); got != 1 {
			t.Errorf("%s: database success %v", db, got)
		}
	}
	for _, db := range []string{"pd_drop", "pd_revoked", "pd_refuse", "postgres"} {
		if vs := s.values("pg_stat_user_tables_n_tup_ins", map[string]string{"datname": db}); len(vs) != 0 {
			t.Errorf("%s: series exported: %v", db, vs)
		}
	}
	if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": "pd_refuse"}); got != 0 {
		t.Errorf("pd_refuse: database success %v, want 0", got)
	}
	for _, db := range []string{"pd_drop", "pd_revoked"} {
		if vs := s.values("pgsidecar_collector_database_success", map[string]string{"datname": db}); len(vs) != 0 {
			t.Errorf("%s: database success %v, want no series", db, vs)
		}
	}
	// The refusal is logged once, not on every scrape.
	e.scrape(t, 0, 30*time.Second)
	if n := strings.Count(e.log.String(), "Collector cannot connect to a database"); n != 1 || !strings.Contains(e.log.String(), "pd_refuse") {
		t.Errorf("refusal logged %d times:\n%s", n, e.log.String())
	}
	if n := e.exp.side.open(); n != 0 {
		t.Errorf("%d side connections kept with --collector.databases.max-idle=0", n)
	}
}

// TestPerDatabaseIdleConnections: connections to other databases are kept for the next scrape,
// up to max-idle of them, and close after the idle timeout.
func TestPerDatabaseIdleConnections(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_*"
		c.DatabasesMaxIdle = 2
		c.DatabasesIdleTimeout = 8 * time.Second
	})
	ctx := ctxTimeout(t, 30*time.Second)
	sessions := func() string {
		conn := openSession(t, "", "pd-count")
		var got string
		err := conn.QueryRow(ctx, `SELECT COALESCE(string_agg(datname || ':' || pid, ',' ORDER BY datname), '')
			FROM pg_stat_activity WHERE application_name = 'pgsidecar-collector' AND datname <> 'pd_a'`).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	e.scrape(t, 0, 30*time.Second)
	first := sessions()
	if n := e.exp.side.open(); n != 2 || !strings.HasPrefix(first, "pd_b:") || !strings.Contains(first, ",pd_c:") || strings.Count(first, ",") != 1 {
		t.Fatalf("kept %d connections (%s), want pd_b's and pd_c's (the first two visited)", n, first)
	}
	e.scrape(t, 0, 30*time.Second)
	if again := sessions(); again != first {
		t.Errorf("sessions %s after the second scrape, want the same backends %s", again, first)
	}
	if !waitForCond(20*time.Second, func() bool { return sessions() == "" && e.exp.side.open() == 0 }) {
		t.Errorf("connections still open after the idle timeout: %s", sessions())
	}
}

func TestPerDatabaseExclusion(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_*,!pd_a,!pd_c"
	})
	s := e.scrape(t, 0, 30*time.Second)
	collectorOK(t, s, "stat_user_tables")
	var got []string
	for _, m := range s.families["pg_stat_user_tables_n_tup_ins"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "datname" {
				got = append(got, l.GetValue())
			}
		}
	}
	if strings.Join(got, ",") != "pd_a,pd_b,pd_drop" {
		t.Errorf("databases %v, want pd_a (the pool's own, always read), pd_b and pd_drop (pd_c is excluded, pd_refuse refuses)", got)
	}
}

// TestPerDatabaseFilterKeepsThePoolsDatabase: a --collector.databases that selects nothing (a
// typo, or '!*') still reads the pool's own database, and says at the first collection which
// patterns match no database, and again only when that changes.
func TestPerDatabaseFilterKeepsThePoolsDatabase(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	for _, spec := range []string{"nonexistent", "!*"} {
		e := newEnvURL(t, url, func(c *Config) {
			only("stat_user_tables")(c)
			c.Databases = spec
		})
		s := e.scrape(t, 0, 30*time.Second)
		collectorOK(t, s, "stat_user_tables")
		if vs := s.values("pg_stat_user_tables_n_tup_ins", map[string]string{"datname": "pd_a", "relname": "t"}); len(vs) != 1 {
			t.Errorf("%s: the pool's own database was not read: %v", spec, vs)
		}
		if vs := s.values("pg_stat_user_tables_n_tup_ins", map[string]string{"datname": "pd_b"}); len(vs) != 0 {
			t.Errorf("%s: pd_b read", spec)
		}
		if spec == "nonexistent" {
			e.scrape(t, 0, 30*time.Second)
			if n := strings.Count(e.log.String(), "patterns match no database"); n != 1 || !strings.Contains(e.log.String(), "patterns=nonexistent") {
				t.Errorf("the unmatched pattern logged %d times over two scrapes, want once:\n%s", n, e.log.String())
			}
			ctx := ctxTimeout(t, 30*time.Second)
			if err := cluster.Exec(ctx, "CREATE DATABASE nonexistent"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE IF EXISTS nonexistent WITH (FORCE)") })
			e.scrape(t, 0, 30*time.Second)
			if !strings.Contains(e.log.String(), "patterns all match a database again") {
				t.Errorf("the change was not logged:\n%s", e.log.String())
			}
		}
	}
}

// TestPerDatabaseDeadline: a database that takes too long does not hold the scrape past its
// deadline; the databases not reached in time count as failed.
func TestPerDatabaseDeadline(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_a,pd_b,pd_c"
	})
	e.exp.beforeDatabase = func(db string) {
		if db == "pd_b" {
			time.Sleep(6 * time.Second)
		}
	}
	start := time.Now()
	s := e.scrape(t, 2*time.Second, 10*time.Second) // a 1.6 s collection budget
	// Without the deadline the scrape would wait for pd_b's 6 s; allow for a loaded machine.
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("scrape took %v with a 2 s scrape timeout", d)
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "stat_user_tables"}); got != 0 {
		t.Errorf("stat_user_tables success = %v after running out of time", got)
	}
	if got := s.value(t, "pg_exporter_last_scrape_error", nil); got != 1 {
		t.Errorf("last_scrape_error = %v", got)
	}
}

func waitForCond(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// TestPerDatabaseKeptConnectionEndedByTheServer: the connection kept to another database blocks
// a plain DROP DATABASE (documented); ending it from the server (pg_terminate_backend, or DROP
// DATABASE WITH (FORCE)) costs the next scrape nothing: it opens a new one.
func TestPerDatabaseKeptConnectionEndedByTheServer(t *testing.T) {
	createDB(t, "kept_t")
	ctx := ctxTimeout(t, 30*time.Second)
	c := openSession(t, "kept_t", "kept-setup")
	if _, err := c.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "kept_t"
	})
	s := e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": "kept_t"}); got != 1 || e.exp.side.open() != 1 {
		t.Fatalf("kept_t success %v, %d connections kept", got, e.exp.side.open())
	}
	err := cluster.Exec(ctx, "DROP DATABASE kept_t")
	if err == nil || !strings.Contains(err.Error(), "is being accessed by other users") {
		t.Fatalf("DROP DATABASE beside the kept connection: %v, want it refused (as documented)", err)
	}
	if err := cluster.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'kept_t' AND application_name = 'pgsidecar-collector'"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the FATAL reaches the kept connection
	s = e.scrape(t, 0, 20*time.Second)
	if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": "kept_t"}); got != 1 {
		t.Errorf("kept_t success after its connection was terminated = %v, want 1:\n%s", got, e.log.String())
	}
	collectorOK(t, s, "stat_user_tables")
	if err := cluster.Exec(ctx, "DROP DATABASE kept_t WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	s = e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "stat_user_tables")
	if vs := s.values("pgsidecar_collector_database_success", map[string]string{"datname": "kept_t"}); len(vs) != 0 {
		t.Errorf("a dropped database still reported: %v", vs)
	}
}

// TestPerDatabaseVisitsAtOnce: the other databases are visited at once, yet no more side
// connections exist than the ceiling counts (--collector.databases.max-idle + 1), and the one
// kept is the first database listed's, whichever worker finished first.
func TestPerDatabaseVisitsAtOnce(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.Databases = "pd_b,pd_c,pd_drop"
		c.DatabasesMaxIdle = 1
	})
	var mu sync.Mutex
	inHook, mostInHook, mostSide := 0, 0, int64(0)
	count := func() {
		n, err := cluster.QueryInt(ctxTimeout(t, 10*time.Second),
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar-collector' AND datname <> 'pd_a'")
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		mostSide = max(mostSide, n)
		mu.Unlock()
	}
	e.exp.beforeDatabase = func(db string) {
		mu.Lock()
		inHook++
		mostInHook = max(mostInHook, inHook)
		mu.Unlock()
		for range 5 { // while the other worker holds its connection
			count()
			time.Sleep(40 * time.Millisecond)
		}
		mu.Lock()
		inHook--
		mu.Unlock()
	}
	for range 2 {
		s := e.scrape(t, 0, 30*time.Second)
		collectorOK(t, s, "stat_user_tables")
		for _, db := range []string{"pd_b", "pd_c", "pd_drop"} {
			if got := s.value(t, "pgsidecar_collector_database_success", map[string]string{"datname": db}); got != 1 {
				t.Errorf("%s: database success %v", db, got)
			}
		}
		ctx := ctxTimeout(t, 10*time.Second)
		kept, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar-collector' AND datname = 'pd_b'")
		if err != nil {
			t.Fatal(err)
		}
		if n := e.exp.side.open(); n != 1 || kept != 1 {
			t.Errorf("%d connections kept, %d of them to pd_b: want pd_b's alone", n, kept)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if mostInHook != 3 {
		t.Errorf("at most %d databases visited at once, want all 3", mostInHook)
	}
	if mostSide > 2 {
		t.Errorf("%d side connections at once, want at most max-idle + 1 = 2", mostSide)
	}
}

// TestSidePoolBound: with max-idle 1, one kept connection and one in use are all there may
// be; a third database waits for one of them, here until its deadline.
func TestSidePoolBound(t *testing.T) {
	url := perDatabaseSetup(t, "pd_a")
	e := newEnvURL(t, url, func(c *Config) {
		only("stat_user_tables")(c)
		c.DatabasesMaxIdle = 1
	})
	p := e.exp.side
	ctx := ctxTimeout(t, 10*time.Second)
	b, err := p.get(ctx, "pd_b")
	if err != nil {
		t.Fatal(err)
	}
	p.put(b, "pd_b", true)
	c, err := p.get(ctx, "pd_c")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if d, err := p.get(short, "pd_drop"); err == nil {
		closeConn(d)
		t.Fatal("a third side connection was opened with max-idle 1")
	}
	p.put(c, "pd_c", false)
	d, err := p.get(ctx, "pd_drop")
	if err != nil {
		t.Fatalf("once pd_c's connection closed: %v", err)
	}
	p.put(d, "pd_drop", false)
	if b2, err := p.get(ctx, "pd_b"); err != nil {
		t.Fatal(err)
	} else {
		p.put(b2, "pd_b", true)
	}
	if n := p.open(); n != 1 {
		t.Errorf("%d connections kept, want pd_b's", n)
	}
}
