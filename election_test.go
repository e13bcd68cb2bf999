package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// electionSidecar is one pgsidecar process of the election tests, on a role of its own so that
// pg_stat_statements tells its queries apart.
type electionSidecar struct {
	role, addr string
	proc       *sidecarProcess
	log        string
}

func (s *electionSidecar) scrape() string {
	c := &http.Client{Timeout: 5 * time.Second}
	r, err := c.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return ""
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

// serverWide reports whether a scrape holds server-wide series, and the sidecar says it leads.
func serverWide(body string) bool {
	return strings.Contains(body, "\npg_stat_database_xact_commit{") && strings.Contains(body, "\npgsidecar_collector_leader{scope=")
}

var leaderLine = regexp.MustCompile(`(?m)^pgsidecar_collector_leader\{scope="(\w+)"\} (\d)`)

// leads reads pgsidecar_collector_leader from a scrape.
func leads(body string) bool {
	m := leaderLine.FindStringSubmatch(body)
	return m != nil && m[2] == "1"
}

func startElectionSidecar(t *testing.T, role string, args ...string) *electionSidecar {
	t.Helper()
	s := &electionSidecar{role: role, addr: testutil.FreeAddr(t), log: filepath.Join(t.TempDir(), role+".log")}
	out, err := os.Create(s.log)
	must(t, err)
	t.Cleanup(func() { out.Close() })
	s.proc = startProcess(t, out, append([]string{"--database-url=" + cluster.URLFor(role, role+"-pw", "postgres"),
		"--web.listen-address=" + s.addr, "--db.metrics-log-interval=0", "--db.min-connections=1"}, args...)...)
	if !pgtest.WaitFor(20*time.Second, func() bool { return strings.Contains(s.scrape(), "pg_up") }) {
		t.Fatalf("%s never served /metrics:\n%s", role, s.logs())
	}
	return s
}

func (s *electionSidecar) logs() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// leaders returns the sidecars whose scrape holds the server-wide series.
func leaders(ss []*electionSidecar) []*electionSidecar {
	var out []*electionSidecar
	for _, s := range ss {
		if s.proc.running() && serverWide(s.scrape()) {
			out = append(out, s)
		}
	}
	return out
}

func electionRoles(t *testing.T, roles ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	must(t, cluster.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
	for _, r := range roles {
		must(t, cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %[1]s; CREATE ROLE %[1]s LOGIN PASSWORD '%[1]s-pw' IN ROLE pg_monitor", r)))
	}
	t.Cleanup(func() {
		for _, r := range roles {
			_ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS "+r)
		}
	})
}

// TestOneSidecarCollectsServerWideStatistics runs three sidecars with the default scope on one
// server: one exports the server-wide series, the others send the server no catalog query; a
// killed leader is replaced within 10 s, a stopped one within its lease, and a stopped leader
// that resumes does not export beside the new one.
func TestOneSidecarCollectsServerWideStatistics(t *testing.T) {
	clearPoolEnv(t)
	roles := []string{"elect_a", "elect_b", "elect_c"}
	electionRoles(t, roles...)
	var ss []*electionSidecar
	for _, r := range roles {
		ss = append(ss, startElectionSidecar(t, r))
	}
	var lead []*electionSidecar
	if !pgtest.WaitFor(15*time.Second, func() bool { lead = leaders(ss); return len(lead) == 1 }) {
		t.Fatalf("%d sidecars export the server-wide series, want 1", len(lead))
	}
	leader := lead[0]

	// Every sidecar is scraped a few times; only the leader's role runs catalog queries.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(t, cluster.Exec(ctx, "SELECT pg_stat_statements_reset()"))
	for range 3 {
		for _, s := range ss {
			body := s.scrape()
			if s != leader {
				if serverWide(body) || leads(body) || strings.Contains(body, "pg_settings_") {
					t.Fatalf("%s is not the leader but exports server-wide series", s.role)
				}
				if !strings.Contains(body, "\npg_up{") || !strings.Contains(body, `pgsidecar_connection_ceiling{part="election"} 1`) ||
					!strings.Contains(body, `pgsidecar_connection_ceiling{part="collectors"} 0`) {
					t.Fatalf("%s lacks pg_up or its ceiling:\n%s", s.role, body)
				}
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	conn, err := pgx.Connect(ctx, cluster.URL("postgres"))
	must(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT r.rolname, s.query, s.calls FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
WHERE r.rolname = ANY($1)`, roles)
	must(t, err)
	catalog := map[string]int64{}
	for rows.Next() {
		var role, query string
		var calls int64
		must(t, rows.Scan(&role, &query, &calls))
		if query != "SELECT pg_try_advisory_lock($1), pg_backend_pid()" {
			catalog[role] += calls
			if role != leader.role {
				t.Errorf("follower %s ran %q %d times", role, query, calls)
			}
		}
	}
	must(t, rows.Err())
	if catalog[leader.role] == 0 {
		t.Fatalf("the leader %s ran no catalog queries: %v", leader.role, catalog)
	}
	for _, s := range ss {
		if n := collectorSessions(t, s.role); (s == leader) != (n > 0) {
			t.Errorf("%s (leader: %v) holds %d collector sessions", s.role, s == leader, n)
		}
		// The leader renewed its lease several times by now; none of them found the lock gone.
		if strings.Contains(s.logs(), "election given up") {
			t.Fatalf("%s gave the election up:\n%s", s.role, s.logs())
		}
	}

	// kill -9: the lock goes with the session, and another sidecar takes over within 10 s.
	must(t, leader.proc.cmd.Process.Kill())
	killed := time.Now()
	if !pgtest.WaitFor(10*time.Second, func() bool { lead = leaders(ss); return len(lead) == 1 }) {
		t.Fatalf("no sidecar took over within 10s of the leader's kill (%d lead)", len(lead))
	}
	t.Logf("a sidecar took over %s after the leader was killed", time.Since(killed).Round(100*time.Millisecond))

	// SIGSTOP: the server ends the stopped leader's idle election session after its lease
	// (5 × 2 s), freeing the lock for the last sidecar.
	stopped := lead[0]
	must(t, stopped.proc.cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(func() { _ = stopped.proc.cmd.Process.Signal(syscall.SIGCONT) })
	frozen := time.Now()
	var last *electionSidecar
	for _, s := range ss {
		if s != leader && s != stopped {
			last = s
		}
	}
	if !pgtest.WaitFor(20*time.Second, func() bool { return serverWide(last.scrape()) }) {
		t.Fatalf("no sidecar took over within 20s of the leader's SIGSTOP:\n%s", last.logs())
	}
	t.Logf("a sidecar took over %s after the leader was stopped", time.Since(frozen).Round(100*time.Millisecond))
	must(t, stopped.proc.cmd.Process.Signal(syscall.SIGCONT))
	// Resumed, it knows its lease ran out before it polls again: it must not export beside
	// the new leader.
	if body := stopped.scrape(); serverWide(body) || leads(body) {
		t.Fatalf("the resumed former leader %s still exports server-wide series", stopped.role)
	}
	if !serverWide(last.scrape()) {
		t.Fatal("the new leader lost the role to the resumed sidecar")
	}
	for _, s := range ss {
		if strings.Contains(s.logs(), "election given up") {
			t.Fatalf("%s gave the election up:\n%s", s.role, s.logs())
		}
	}
	// Once it finds its election session gone, it closes its collectors' connections.
	if !pgtest.WaitFor(10*time.Second, func() bool { return collectorSessions(t, stopped.role) == 0 }) {
		t.Errorf("the former leader %s keeps %d collector sessions", stopped.role, collectorSessions(t, stopped.role))
	}
}

// collectorSessions counts the collectors' sessions of a role.
func collectorSessions(t *testing.T, role string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'pgsidecar-collector'", role)
	must(t, err)
	return n
}

// TestCollectorScopesAllAndLocal checks that scope all always exports the server-wide series,
// beside an elected leader, and scope local never does, while both keep pg_up and run the
// custom queries marked every_sidecar.
func TestCollectorScopesAllAndLocal(t *testing.T) {
	clearPoolEnv(t)
	electionRoles(t, "scope_auto", "scope_all", "scope_local")
	queries := filepath.Join(t.TempDir(), "queries.yaml")
	must(t, os.WriteFile(queries, []byte(`
scope_server:
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE, description: Runs on the collecting sidecar.}}]
scope_each:
  query: SELECT 2 AS v
  every_sidecar: true
  metrics: [{v: {usage: GAUGE, description: Runs on every sidecar.}}]
`), 0o600))
	auto := startElectionSidecar(t, "scope_auto", "--queries.file="+queries)
	all := startElectionSidecar(t, "scope_all", "--collector.scope=all", "--queries.file="+queries)
	local := startElectionSidecar(t, "scope_local", "--collector.scope=local", "--queries.file="+queries)
	if !pgtest.WaitFor(15*time.Second, func() bool { return serverWide(auto.scrape()) }) {
		t.Fatalf("the only sidecar with scope auto does not lead:\n%s", auto.logs())
	}
	body := all.scrape()
	if !serverWide(body) || !strings.Contains(body, `pgsidecar_collector_leader{scope="all"} 1`) ||
		!strings.Contains(body, `pgsidecar_connection_ceiling{part="election"} 0`) {
		t.Fatalf("scope all does not export the server-wide series:\n%s", body)
	}
	body = local.scrape()
	if serverWide(body) || strings.Contains(body, "pg_settings_") || !strings.Contains(body, `pgsidecar_collector_leader{scope="local"} 0`) ||
		// Its collectors' pool runs the every_sidecar query: one connection.
		!strings.Contains(body, `pgsidecar_connection_ceiling{part="collectors"} 1`) {
		t.Fatalf("scope local exports server-wide series:\n%s", body)
	}
	if !regexp.MustCompile(`(?m)^pg_up\{[^}]*\} 1$`).MatchString(body) {
		t.Fatalf("scope local lacks pg_up 1:\n%s", body)
	}
	if strings.Contains(body, "\nscope_server_v ") || !strings.Contains(body, "\nscope_each_v 2") {
		t.Fatalf("scope local runs the wrong custom queries:\n%s", body)
	}
	for _, s := range []*electionSidecar{auto, all} {
		if body := s.scrape(); !strings.Contains(body, "\nscope_server_v 1") || !strings.Contains(body, "\nscope_each_v 2") {
			t.Fatalf("%s does not run every custom query:\n%s", s.role, body)
		}
	}
}

// TestElectionBehindTransactionPooler runs a sidecar whose database is reached through a
// transaction-mode pooler that refuses session advisory locks (pgsidecar's own proxy with
// --proxy.pin-policy=error): it cannot take part in an election, so it collects as with
// --collector.scope=all and says why.
func TestElectionBehindTransactionPooler(t *testing.T) {
	clearPoolEnv(t)
	electionRoles(t, "pooler_front")
	proxyAddr := testutil.FreeAddr(t)
	startElectionSidecar(t, "pooler_front", "--collector.scope=local", "--proxy.listen-address="+proxyAddr,
		"--proxy.pool-mode=transaction", "--proxy.pin-policy=error")
	behind := &electionSidecar{role: "pooled", addr: testutil.FreeAddr(t), log: filepath.Join(t.TempDir(), "pooled.log")}
	out, err := os.Create(behind.log)
	must(t, err)
	t.Cleanup(func() { out.Close() })
	behind.proc = startProcess(t, out, "--database-url=postgres://pooler_front:pooler_front-pw@"+proxyAddr+"/postgres?sslmode=disable",
		"--web.listen-address="+behind.addr, "--db.metrics-log-interval=0")
	if !pgtest.WaitFor(20*time.Second, func() bool { return serverWide(behind.scrape()) }) {
		t.Fatalf("the sidecar behind a transaction pooler does not collect:\n%s", behind.logs())
	}
	if !strings.Contains(behind.logs(), "Collector election given up") {
		t.Fatalf("no warning about the pooler:\n%s", behind.logs())
	}
}

// TestConnectionBudget checks the ceiling a sidecar exports, what the leader says the server
// allows, and the start-up warning of a sidecar whose ceiling does not fit.
func TestConnectionBudget(t *testing.T) {
	clearPoolEnv(t)
	electionRoles(t, "budget_fits", "budget_big")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	allowed, err := cluster.QueryInt(ctx, "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int")
	must(t, err)
	fits := startElectionSidecar(t, "budget_fits", "--db.max-connections=4", "--collector.max-connections=2",
		"--collector.databases.max-idle=3")
	var body string
	if !pgtest.WaitFor(15*time.Second, func() bool { body = fits.scrape(); return serverWide(body) }) {
		t.Fatalf("the sidecar does not lead:\n%s", fits.logs())
	}
	// The collectors' pool, and one connection per other database, up to 3 kept + 1 visiting.
	others, err := cluster.QueryInt(ctx, `SELECT count(*) FROM pg_database WHERE datallowconn AND NOT datistemplate
  AND datname <> 'postgres' AND has_database_privilege('budget_fits', datname, 'CONNECT')`)
	must(t, err)
	for _, want := range []string{
		`pgsidecar_connection_ceiling{part="pool"} 4`,
		fmt.Sprintf(`pgsidecar_connection_ceiling{part="collectors"} %d`, 2+min(others, 4)),
		`pgsidecar_connection_ceiling{part="election"} 1`,
		fmt.Sprintf("pgsidecar_server_connections_allowed %d", allowed),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %s in:\n%s", want, body)
		}
	}
	if strings.Contains(fits.logs(), "more server connections than the server has left") {
		t.Errorf("a sidecar that fits was warned about:\n%s", fits.logs())
	}
	big := startElectionSidecar(t, "budget_big", fmt.Sprintf("--db.max-connections=%d", allowed))
	if !pgtest.WaitFor(15*time.Second, func() bool {
		return strings.Contains(big.logs(), "more server connections than the server has left")
	}) {
		t.Fatalf("no warning from a sidecar whose pool alone takes every allowed connection:\n%s", big.logs())
	}
}
