// Package e2e proves pgsidecar's alert rules and dashboards against the real thing: the
// pgsidecar binary on a throwaway PostgreSQL cluster, with traffic through its proxy, scraped by
// a real Prometheus server that loads the rules.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/e2e/inspect"
	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/mixin"
)

// traffic runs n statements through the sidecar's proxy; every errorEvery-th one fails with
// division by zero (SQLSTATE 22012). It returns how many failed.
func traffic(ctx context.Context, t *testing.T, s *sidecar, n, errorEvery int) int {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.proxyURL())
	if err != nil {
		t.Fatalf("connecting through the proxy: %v", pgconnScrub(err))
	}
	defer conn.Close(context.Background())
	failed := 0
	for i := 1; i <= n; i++ {
		if errorEvery > 0 && i%errorEvery == 0 {
			_, err := conn.Exec(ctx, "SELECT 1/0")
			var pe *pgconn.PgError
			if !asPgError(err, &pe) || pe.Code != "22012" {
				t.Fatalf("SELECT 1/0 through the proxy: want SQLSTATE 22012, got %v", err)
			}
			failed++
			continue
		}
		var err error
		switch i % 3 {
		case 0:
			var c int64
			err = conn.QueryRow(ctx, "SELECT count(*) FROM e2e_items").Scan(&c)
		case 1:
			_, err = conn.Exec(ctx, "INSERT INTO e2e_items (id, n) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING", i)
		case 2:
			_, err = conn.Exec(ctx, "UPDATE e2e_items SET n = n + 1 WHERE id = $1", i-1)
		}
		if err != nil {
			t.Fatalf("query %d through the proxy: %v", i, err)
		}
	}
	return failed
}

func asPgError(err error, pe **pgconn.PgError) bool { return errors.As(err, pe) }

// pgconnScrub keeps the test's own password out of failure messages, as the project does.
func pgconnScrub(err error) string {
	return strings.ReplaceAll(err.Error(), pgtest.SuperuserPassword, "xxxxx")
}

func alertExprs(t *testing.T) (map[string]string, mixin.RuleFile) {
	t.Helper()
	f, err := inspect.LoadRules(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range f.Alerts() {
		out[a.Alert] = a.Expr
	}
	return out, f
}

// TestEndToEnd runs the sidecar and Prometheus with the rules and walks through a healthy
// phase, injected errors with a slow query, and a stopped database.
func TestEndToEnd(t *testing.T) {
	cluster.RequireControl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, sql := range []string{
		"CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
		"CREATE TABLE IF NOT EXISTS e2e_items (id int PRIMARY KEY, n int NOT NULL)",
		// Vacuumed once, for the time since the last vacuum.
		"VACUUM e2e_items",
	} {
		if err := cluster.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The database alerts' series: a table with dead tuples that autovacuum leaves alone, and a
	// physical replication slot that reserves WAL and has no consumer.
	setUpTablesAndSlot(ctx, t)
	exprs, rules := alertExprs(t)
	s := startSidecar(t)
	prom := startPrometheus(t, s.web)

	// expr evaluates PromQL in the real Prometheus and fails the test on a query error.
	expr := func(t *testing.T, e string) []promSample {
		t.Helper()
		r, err := prom.query(e)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// eventually waits until e returns a non-empty (want) or empty (!want) result.
	eventually := func(t *testing.T, what, e string, want bool, timeout time.Duration) []promSample {
		t.Helper()
		var got []promSample
		ok := waitFor(timeout, func() bool { got = expr(t, e); return (len(got) > 0) == want })
		if !ok {
			t.Fatalf("%s: after %s, %s returned %v", what, timeout, e, got)
		}
		return got
	}

	eventually(t, "sidecar target up", `up{job="pgsidecar"} == 1`, true, 30*time.Second)

	t.Run("rules load and evaluate without errors", func(t *testing.T) {
		want := 0
		for _, g := range rules.Groups {
			want += len(g.Rules)
		}
		var bad []string
		ok := waitFor(30*time.Second, func() bool {
			groups, err := prom.rules()
			if err != nil {
				return false
			}
			n := 0
			bad = bad[:0]
			for name, rs := range groups {
				for _, r := range rs {
					n++
					if r.Health != "ok" {
						bad = append(bad, fmt.Sprintf("%s/%s: health %q %s", name, r.Name, r.Health, r.LastError))
					}
				}
			}
			return n == want && len(bad) == 0
		})
		if !ok {
			t.Fatalf("want %d rules all healthy in Prometheus; not healthy: %v", want, bad)
		}
	})

	// Healthy traffic: the error alert's traffic guard holds, and the alert does not. A query
	// series is born with its operation's first query, and rate() cannot see the increase before
	// a series' first sample: a few statements first, the rest after the next scrape.
	traffic(ctx, t, s, 3, 0)
	time.Sleep(scrapeInterval + scrapeInterval/2)
	traffic(ctx, t, s, 150, 0)
	if !waitFor(30*time.Second, func() bool {
		return len(expr(t, `pool:pgsidecar_queries:rate5m{job="pgsidecar"} > 0.1`)) > 0
	}) {
		_, body := s.scrape(t)
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "pgsidecar_query_duration_seconds_count") || strings.HasPrefix(l, "pgsidecar_proxy") {
				lines = append(lines, l)
			}
		}
		t.Fatalf("150 proxied queries did not lift pool:pgsidecar_queries:rate5m over the traffic guard; the sidecar exposes:\n%s",
			strings.Join(lines, "\n"))
	}
	t.Run("error rate alert quiet when healthy", func(t *testing.T) {
		if r := expr(t, exprs["PgSidecarQueryErrorRateHigh"]); len(r) != 0 {
			t.Fatalf("PgSidecarQueryErrorRateHigh expression true without errors: %v", r)
		}
	})
	t.Run("health alerts quiet when healthy", func(t *testing.T) {
		for _, a := range []string{"PgSidecarHealthCheckFailing", "PgSidecarDatabaseDown", "PgSidecarDown",
			"PgSidecarProxyClientWaitHigh", "PgSidecarStatementLatencyRegression"} {
			if r := expr(t, exprs[a]); len(r) != 0 {
				t.Errorf("%s expression true while healthy: %v", a, r)
			}
		}
	})

	// Errors (one in four statements) and a slow query. A counter series is born with its first
	// error, and rate() cannot see the increase before a series' first sample: spread the errors
	// over several scrapes, as real traffic would be.
	failed := 0
	for range 4 {
		failed += traffic(ctx, t, s, 60, 4)
		time.Sleep(scrapeInterval + scrapeInterval/2)
	}
	conn, err := pgx.Connect(ctx, s.proxyURL())
	if err != nil {
		t.Fatal(pgconnScrub(err))
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%g)", (slowThreshold+100*time.Millisecond).Seconds())); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())

	// A wrong password and a wrong database through the proxy, for its failure panel.
	bad := strings.Replace(s.proxyURL(), pgtest.SuperuserPassword, "wrong-password", 1)
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("the proxy accepted a wrong password")
	}
	if c, err := pgx.Connect(ctx, strings.Replace(s.proxyURL(), "/postgres?", "/no_such_db?", 1)); err == nil {
		c.Close(ctx)
		t.Fatal("the proxy accepted a database other than DATABASE_URL's")
	}

	t.Run("error rate alert fires under injected errors", func(t *testing.T) {
		if !waitFor(30*time.Second, func() bool { return len(expr(t, exprs["PgSidecarQueryErrorRateHigh"])) > 0 }) {
			t.Fatalf("error rate alert expression stayed false; Prometheus has errors %v, queries %v",
				expr(t, `pgsidecar_query_errors_total`), expr(t, `pgsidecar_query_duration_seconds_count`))
		}
		got := expr(t, exprs["PgSidecarQueryErrorRateHigh"])
		if got[0].Metric["pool"] != "default" || got[0].Metric["instance"] != s.web {
			t.Errorf("alert series %v: want pool=default, instance=%s", got[0].Metric, s.web)
		}
		// Prometheus itself evaluates the alerting rule: pending until its for: passes.
		eventually(t, "ALERTS series", `ALERTS{alertname="PgSidecarQueryErrorRateHigh", pool="default"}`, true, 15*time.Second)
		// Every error the client saw is counted once, with its SQLSTATE.
		var seen []promSample
		if !waitFor(15*time.Second, func() bool {
			seen = expr(t, `sum(pgsidecar_query_errors_total{job="pgsidecar", sqlstate="22012"})`)
			return len(seen) == 1 && fmt.Sprint(seen[0].Value[1]) == fmt.Sprint(failed)
		}) {
			t.Errorf("Prometheus saw %v errors with SQLSTATE 22012, the client got %d", seen, failed)
		}
	})

	t.Run("every metric in the rules and dashboards is emitted by the sidecar", func(t *testing.T) {
		names, body := s.scrape(t)
		if strings.Contains(body, pgtest.SuperuserPassword) {
			t.Error("/metrics contains the database password")
		}
		recorded := rules.RecordedNames()
		used := map[string][]string{} // metric -> where
		for _, r := range append(rules.Alerts(), recordingRules(rules)...) {
			ms, err := inspect.MetricNames(r.Expr)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				used[m] = append(used[m], "rule "+r.Alert+r.Record)
			}
		}
		dashboards, err := inspect.LoadDashboards(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range inspect.DashboardQueries(dashboards) {
			ms, err := inspect.MetricNames(inspect.Substitute(q.Expr, "1m"))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				used[m] = append(used[m], q.Dashboard+" / "+q.Panel)
			}
		}
		version := serverVersion(t)
		var missing []string
		for m, where := range used {
			if names[m] || recorded[m] || m == "up" || m == "ALERTS" || otherVersionsOnly(m, version) {
				continue
			}
			missing = append(missing, fmt.Sprintf("%s (used by %s)", m, strings.Join(where, ", ")))
		}
		sort.Strings(missing)
		for _, m := range missing {
			t.Errorf("not in the sidecar's scrape: %s", m)
		}
		if len(used) < 40 {
			t.Errorf("only %d metric names found in rules and dashboards; is the extraction broken?", len(used))
		}
	})

	t.Run("every dashboard query returns data", func(t *testing.T) {
		dashboards, err := inspect.LoadDashboards(root)
		if err != nil {
			t.Fatal(err)
		}
		version := serverVersion(t)
		var queries []inspect.Query
		for _, q := range inspect.DashboardQueries(dashboards) {
			ms, err := inspect.MetricNames(inspect.Substitute(q.Expr, "1m"))
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) > 0 && !slices.ContainsFunc(ms, func(m string) bool { return !otherVersionsOnly(m, version) }) {
				continue // a series this server's version does not have
			}
			queries = append(queries, q)
		}
		empty := map[string]string{}
		// Rates need two scrapes after the traffic; retry the empty ones for a while.
		waitFor(30*time.Second, func() bool {
			clear(empty)
			for _, q := range queries {
				e := inspect.Substitute(q.Expr, "1m")
				r, err := prom.query(e)
				if err != nil {
					t.Fatalf("%s / %s: %v", q.Dashboard, q.Panel, err)
				}
				if len(r) == 0 {
					empty[q.Dashboard+" / "+q.Panel] = e
				}
			}
			return len(empty) == 0
		})
		for where, e := range empty {
			t.Errorf("%s: no data for %s", where, e)
		}
		if len(queries) < 50 {
			t.Errorf("only %d dashboard queries found", len(queries))
		}
	})

	// Session pooling: each proxy client holds a server connection for its whole session, so
	// five idle clients use five of the pool's six connections (83 % > 80 %).
	t.Run("pool utilisation alert follows the proxy's sessions", func(t *testing.T) {
		if r := expr(t, exprs["PgSidecarPoolUtilizationHigh"]); len(r) != 0 {
			t.Fatalf("PgSidecarPoolUtilizationHigh expression true before the sessions: %v", r)
		}
		var sessions []*pgx.Conn
		defer func() {
			for _, c := range sessions {
				c.Close(context.Background())
			}
		}()
		for range 5 {
			c, err := pgx.Connect(ctx, s.proxyURL())
			if err != nil {
				t.Fatal(pgconnScrub(err))
			}
			sessions = append(sessions, c)
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
		got := eventually(t, "pool utilisation alert", exprs["PgSidecarPoolUtilizationHigh"], true, 30*time.Second)
		if v := fmt.Sprint(got[0].Value[1]); !strings.HasPrefix(v, "0.83") {
			t.Errorf("utilisation %s, want 5/6", v)
		}
		for _, c := range sessions {
			c.Close(context.Background())
		}
		sessions = nil
		eventually(t, "pool utilisation alert clears", exprs["PgSidecarPoolUtilizationHigh"], false, 30*time.Second)
	})

	t.Run("slow query counted", func(t *testing.T) {
		eventually(t, "slow queries", `pgsidecar_slow_queries_total{job="pgsidecar"} >= 1`, true, 15*time.Second)
	})

	checkPostgresAlerts(ctx, t, exprs, expr, eventually)

	// The database goes away: health and database-down expressions turn true, the sidecar
	// keeps answering scrapes; back to false once the database is back.
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = cluster.StartAgain()
		}
	})
	t.Run("health alerts fire while the database is stopped", func(t *testing.T) {
		eventually(t, "health check alert", exprs["PgSidecarHealthCheckFailing"], true, 60*time.Second)
		eventually(t, "database down alert", exprs["PgSidecarDatabaseDown"], true, 60*time.Second)
		eventually(t, "ALERTS series", `ALERTS{alertname="PgSidecarHealthCheckFailing"}`, true, 15*time.Second)
		if r := expr(t, exprs["PgSidecarDown"]); len(r) != 0 {
			t.Errorf("the sidecar stopped answering scrapes while the database was down: %v", r)
		}
	})
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	t.Run("health alerts clear when the database is back", func(t *testing.T) {
		eventually(t, "health check alert clears", exprs["PgSidecarHealthCheckFailing"], false, 60*time.Second)
		eventually(t, "database down alert clears", exprs["PgSidecarDatabaseDown"], false, 60*time.Second)
		eventually(t, "reconnect counted", `pgsidecar_reconnects_total{job="pgsidecar"} >= 1`, true, 30*time.Second)
	})

	if strings.Contains(s.out.String(), pgtest.SuperuserPassword) {
		t.Error("the sidecar logged the database password")
	}
}

// serverVersion is the test server's server_version_num.
func serverVersion(t *testing.T) int64 {
	t.Helper()
	v, err := cluster.QueryInt(context.Background(), "SELECT current_setting('server_version_num')::int")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// before17 are the pg_stat_bgwriter series PostgreSQL 17 removed: the checkpoint counters moved
// to pg_stat_checkpointer (the checkpointer collector), the backends' writes to pg_stat_io.
var before17 = map[string]bool{
	"pg_stat_bgwriter_checkpoints_timed_total": true, "pg_stat_bgwriter_checkpoints_req_total": true,
	"pg_stat_bgwriter_checkpoint_write_time_total": true, "pg_stat_bgwriter_checkpoint_sync_time_total": true,
	"pg_stat_bgwriter_buffers_checkpoint_total": true, "pg_stat_bgwriter_buffers_backend_total": true,
	"pg_stat_bgwriter_buffers_backend_fsync_total": true,
}

// otherVersionsOnly reports whether a series read by a rule or panel exists only on PostgreSQL
// versions other than the test server's; the rules and panels read the two names of each
// checkpoint counter, whichever the server has.
func otherVersionsOnly(m string, version int64) bool {
	if version < 170000 {
		return strings.HasPrefix(m, "pg_stat_checkpointer_")
	}
	return before17[m]
}

func recordingRules(f mixin.RuleFile) []mixin.Rule {
	var out []mixin.Rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out = append(out, r)
			}
		}
	}
	return out
}
