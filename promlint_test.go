package main

import (
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// upstreamNames are the series promtool finds fault with that keep postgres_exporter's names,
// so that its dashboards and alerts work unchanged. Every other series must be clean.
var upstreamNames = []struct {
	pattern *regexp.Regexp
	reason  string
}{
	{regexp.MustCompile(`^pg_stat_database_(xact_commit|xact_rollback|blks_read|blks_hit|tup_returned|tup_fetched|tup_inserted|tup_updated|tup_deleted|conflicts|temp_files|temp_bytes|deadlocks|blk_read_time|blk_write_time|stats_reset)$`),
		"postgres_exporter's pg_stat_database counters, without _total (blk_*_time in milliseconds)"},
	{regexp.MustCompile(`^pg_stat_database_conflicts_confl_[a-z_]+$`),
		"postgres_exporter's pg_stat_database_conflicts counters, without _total"},
	{regexp.MustCompile(`^pg_stat_archiver_(archived|failed)_count$`),
		"postgres_exporter's pg_stat_archiver counters"},
	{regexp.MustCompile(`^pg_stat_activity_count$`), "postgres_exporter's session count by state"},
	{regexp.MustCompile(`^pg_locks_count$`), "postgres_exporter's lock count by mode"},
	{regexp.MustCompile(`^pg_settings_[a-z0-9_]+_count$`), "a server setting's own name (tcp_keepalives_count)"},
	{regexp.MustCompile(`^pg_settings_wal_summary_keep_time_seconds$`), "a server setting's own name (PostgreSQL 17's wal_summary_keep_time)"},
	{regexp.MustCompile(`^pg_stat_statements_query_id$`), "postgres_exporter's statement text series, a counter of 1"},
}

// TestMetricsPassPromtool runs promtool check metrics on everything /metrics serves (every
// collector on, the statement texts too, a query through the proxy), without the shipped
// queries file, which is the user's to name.
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found (Debian: apt-get install prometheus; make deps does it)")
	}
	clearPoolEnv(t)
	if err := cluster.Exec(t.Context(), "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	args := []string{"--database-url=" + cluster.URL(""), "--queries.file=", "--proxy.auth-method=trust"}
	k, _ := newApp(nil, nil) // every collector switch on, --collector.statements.include-query too
	for _, f := range k.Model().Flags {
		if strings.HasPrefix(f.Name, "collector.") && f.IsBoolFlag() && !f.Hidden {
			args = append(args, "--"+f.Name)
		}
	}
	proxyAddr := testutil.FreeAddr(t)
	addr, _, stop := startSidecar(t, append(args, "--proxy.listen-address="+proxyAddr)...)
	defer stop()
	conn, err := pgx.Connect(t.Context(), "postgres://postgres@"+proxyAddr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	_, _ = get(t, "http://"+addr+"/metrics") // series created on first use read zero once
	_, body := get(t, "http://"+addr+"/metrics")

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, _ := cmd.CombinedOutput() // exits 1 on any finding; the findings are what count
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, _, _ := strings.Cut(line, " ")
		if line == "" || upstreamName(name) {
			continue
		}
		problems = append(problems, line)
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		t.Errorf("promtool check metrics finds fault with series that have no postgres_exporter name to keep:\n%s",
			strings.Join(problems, "\n"))
	}
	for _, want := range []string{"pgsidecar_query_duration_seconds_bucket", "pgsidecar_proxy_", "pg_stat_database_active_time_seconds_total",
		"pg_stat_statements_query_id"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s: the check did not see every part", want)
		}
	}
}

func upstreamName(name string) bool {
	for _, u := range upstreamNames {
		if u.pattern.MatchString(name) {
			return true
		}
	}
	return false
}
