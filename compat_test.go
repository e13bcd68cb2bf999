package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// clearUpstreamEnv keeps postgres_exporter's variables of the developer's environment out of a test.
func clearUpstreamEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG_EXPORTER_") || strings.HasPrefix(name, "DATA_SOURCE_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

// TestUpstreamFlagsAreHiddenAliases: postgres_exporter's flags set pgsidecar's settings, and
// --help does not list them.
func TestUpstreamFlagsAreHiddenAliases(t *testing.T) {
	clearUpstreamEnv(t)
	t.Setenv("PGSIDECAR_COLLECTOR_DATABASES", "")
	defaults := parseSettings(t)
	p := parseSettings(t, "--no-collector.stat_bgwriter", "--collector.stat_statements", "--collector.stat_checkpointer",
		"--collector.stat_statements.limit=7", "--collector.stat_statements.include_query",
		"--collector.stat_statements.query_length=40", "--extend.query-path=/etc/q.yaml",
		"--no-auto-discover-databases", "--include-databases=app,b*x", "--exclude-databases=tmp",
		"--disable-settings-metrics", "--metric-prefix=pg")
	c := p.Collector
	if c.Enabled["bgwriter"] || !c.Enabled["statements"] || !c.Enabled["checkpointer"] || c.Enabled["settings"] {
		t.Errorf("collectors %v", c.Enabled)
	}
	if c.StatementsLimit != 7 || !c.StatementsIncludeQuery || c.StatementsQueryLength != 40 || c.QueriesFile != "/etc/q.yaml" {
		t.Errorf("statements or queries file not set: %+v", c)
	}
	if c.Discover || !defaults.Collector.Discover {
		t.Errorf("--no-auto-discover-databases: discover %v (default %v)", c.Discover, defaults.Collector.Discover)
	}
	if c.Databases != `app,b\*x,!tmp` {
		t.Errorf("databases %q", c.Databases)
	}
	if c := parseSettings(t, "--disable-default-metrics", "--collector.wal").Collector; !c.Enabled["wal"] || c.Enabled["database"] || c.Enabled["activity"] {
		t.Errorf("--disable-default-metrics --collector.wal: %v", c.Enabled)
	}

	// A flag on the command line wins over its PG_EXPORTER_* variable, a repeatable one too.
	t.Setenv("PG_EXPORTER_WEB_LISTEN_ADDRESS", ":1")
	t.Setenv("PG_EXPORTER_EXTEND_QUERY_PATH", "/env.yaml")
	k, _ := newApp(io.Discard, io.Discard)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "[--extend.query-path=/env.yaml --web.listen-address=:1]"},
		{[]string{"--web.listen-address=:2", "--queries.file=/cli.yaml"}, "[]"},
		{[]string{"--extend.query-path", "/cli.yaml"}, "[--web.listen-address=:1]"},
	} {
		got, err := upstreamEnvArgs(k, tc.args)
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Errorf("args %v: %v, %v; want %s", tc.args, got, err, tc.want)
		}
	}
	os.Unsetenv("PG_EXPORTER_WEB_LISTEN_ADDRESS")
	os.Unsetenv("PG_EXPORTER_EXTEND_QUERY_PATH")

	var help strings.Builder
	k, _ = newApp(&help, io.Discard)
	k.Terminate(func(int) {})
	_, _ = k.Parse([]string{"--help"})
	if help.Len() < 1000 || strings.Contains(help.String(), "collector.stat_bgwriter") || strings.Contains(help.String(), "extend.query-path") {
		t.Errorf("--help lists postgres_exporter's aliases, or is empty:\n%s", help.String())
	}
}

// TestUpstreamSettingsRefused: what pgsidecar does not honour is an error naming it.
func TestUpstreamSettingsRefused(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"PG_EXPORTER_NO_SUCH": "1", "DATABASE_URL": "postgres://h/db"}, "PG_EXPORTER_NO_SUCH is not a variable pgsidecar knows"},
		{nil, map[string]string{"PG_EXPORTER_CONSTANT_LABELS": "a=b", "DATABASE_URL": "postgres://h/db"}, "PG_EXPORTER_CONSTANT_LABELS is postgres_exporter's and not supported"},
		{[]string{"--constantLabels=a=b"}, map[string]string{"DATABASE_URL": "postgres://h/db"}, "--constantLabels is postgres_exporter's and not supported"},
		{[]string{"--metric-prefix=x"}, map[string]string{"DATABASE_URL": "postgres://h/db"}, "keep the pg_ prefix"},
		{nil, map[string]string{"PG_EXPORTER_EXTEND_QUERY_PATH": "/a", "PGSIDECAR_QUERIES_FILE": "/b", "DATABASE_URL": "postgres://h/db"},
			"PG_EXPORTER_EXTEND_QUERY_PATH and PGSIDECAR_QUERIES_FILE are both set"},
		{nil, map[string]string{"PG_EXPORTER_AUTO_DISCOVER_DATABASES": "maybe", "DATABASE_URL": "postgres://h/db"},
			`PG_EXPORTER_AUTO_DISCOVER_DATABASES ("maybe") must be true or false`},
		{nil, map[string]string{"DATA_SOURCE_NAME": "postgres://u:topsecret1@h/db", "DATABASE_URL": "postgres://h/db"},
			"DATABASE_URL and DATA_SOURCE_NAME are both set"},
		{[]string{"--database-url=postgres://h/db"}, map[string]string{"DATA_SOURCE_NAME": "postgres://u:topsecret1@h/db"},
			"--database-url and postgres_exporter's DATA_SOURCE_* variables are both set"},
		{nil, map[string]string{"DATA_SOURCE_NAME": "port=5432,port=6432"}, "DATA_SOURCE_NAME lists several servers"},
		{nil, map[string]string{"DATA_SOURCE_USER": "u", "DATA_SOURCE_PASS": "topsecret1"}, "DATA_SOURCE_USER is set but DATA_SOURCE_URI is not"},
		{nil, map[string]string{"DATA_SOURCE_URI": "h/db", "DATA_SOURCE_PASS_FILE": "/nonexistent/pass"}, "DATA_SOURCE_PASS_FILE"},
		{nil, map[string]string{"DATA_SOURCE_URI": "h/db?sslmode=maybe", "DATA_SOURCE_PASS": "topsecret1"}, "sslmode is invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			clearPoolEnv(t)
			clearUpstreamEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errOut testutil.LogBuffer
			if code := run(context.Background(), tc.args, &out, &errOut); code != 2 {
				t.Fatalf("exit code %d, want 2; stderr %s", code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("stderr %q does not say %q", errOut.String(), tc.want)
			}
			if strings.Contains(errOut.String(), "topsecret1") {
				t.Fatalf("stderr leaks the password: %s", errOut.String())
			}
		})
	}
}

// TestStartedAsPostgresExporter: with DATA_SOURCE_URI, DATA_SOURCE_USER and
// DATA_SOURCE_PASS_FILE (the README's container example, the password from a file), pgsidecar
// connects, and reads table statistics of the connected database only; PG_EXPORTER_* variables
// and --auto-discover-databases make it visit the others, as postgres_exporter does.
func TestStartedAsPostgresExporter(t *testing.T) {
	ctx := t.Context()
	if err := cluster.Exec(ctx, "CREATE DATABASE compat_other"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP DATABASE compat_other WITH (FORCE)") })
	other, err := pgx.Connect(ctx, cluster.URL("compat_other"))
	if err != nil {
		t.Fatal(err)
	}
	// More tables than the default table limit, all exported as postgres_exporter would.
	_, err = other.Exec(ctx, `CREATE TABLE compat_t (id int);
		DO $$ BEGIN FOR i IN 1..60 LOOP EXECUTE format('CREATE TABLE compat_t%s (id int)', i); END LOOP; END $$`)
	_ = other.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cluster.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	passFile := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(passFile, []byte(pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherTable := `pg_stat_user_tables_seq_scan{datname="compat_other",relname="compat_t",schemaname="public"}`
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		visiting bool
	}{
		{"connected database only", nil, nil, false},
		{"--auto-discover-databases", []string{"--auto-discover-databases"}, nil, true},
		{"PG_EXPORTER_AUTO_DISCOVER_DATABASES", nil, map[string]string{"PG_EXPORTER_AUTO_DISCOVER_DATABASES": "true",
			"PG_EXPORTER_WEB_TELEMETRY_PATH": "/pgmetrics"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearPoolEnv(t)
			clearUpstreamEnv(t)
			t.Setenv("DATA_SOURCE_URI", fmt.Sprintf("%s%s?%s", u.Host, u.Path, u.RawQuery))
			t.Setenv("DATA_SOURCE_USER", u.User.Username())
			t.Setenv("DATA_SOURCE_PASS_FILE", passFile)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			path := "/metrics"
			if p := tc.env["PG_EXPORTER_WEB_TELEMETRY_PATH"]; p != "" {
				path = p
			}
			addr, logs, stop := startSidecar(t, append([]string{"--queries.file="}, tc.args...)...)
			var body string
			if !pgtest.WaitFor(20*time.Second, func() bool {
				_, body = get(t, "http://"+addr+path)
				return strings.Contains(body, `pg_up{pool="default"} 1`)
			}) {
				t.Fatalf("no pg_up 1 at %s; logs:\n%s", path, logs.String())
			}
			if !strings.Contains(body, `pgsidecar_collector_database_success{datname="postgres"`) {
				t.Errorf("the connected database's statistics are missing")
			}
			// A drop-in replaces one exporter: it collects whatever other sidecars do.
			if !strings.Contains(body, `pgsidecar_collector_leader{scope="all"} 1`) {
				t.Errorf("started as postgres_exporter, the scope is not all")
			}
			if got := strings.Contains(body, otherTable); got != tc.visiting {
				t.Errorf("another database's table exported: %v, want %v", got, tc.visiting)
			}
			if n := strings.Count(body, `pg_stat_user_tables_seq_scan{datname="compat_other"`); tc.visiting && n != 61 {
				t.Errorf("%d of compat_other's 61 tables exported, want all", n)
			}
			if strings.Contains(logs.String(), pass) || strings.Contains(body, pass) {
				t.Error("the password leaked")
			}
			if c := stop(); c != 0 {
				t.Fatalf("exit code %d; logs:\n%s", c, logs.String())
			}
		})
	}
}
