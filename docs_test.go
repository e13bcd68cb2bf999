package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite docs/reference.md and golden files from the code")

// TestReferenceDocs keeps docs/reference.md equal to what the code declares: every flag with
// its environment variable and default, every metric with its type, labels and help. Run
// `make docs` (go test -run TestReferenceDocs -update .) after changing either.
func TestReferenceDocs(t *testing.T) {
	clearPoolEnv(t)
	var captured *registry
	registryHook = func(r *registry) { captured = r }
	defer func() { registryHook = nil }()
	// Every optional part on, so every metric is registered; pg_stat_statements installed so
	// the statements collector has rows.
	if err := cluster.Exec(t.Context(), "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	// A replication slot and a table with an index, so that the slot and table collectors have
	// rows.
	if err := cluster.Exec(t.Context(), "SELECT pg_create_physical_replication_slot('docs_slot', true); CREATE TABLE docs_t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cluster.Exec(context.Background(), "SELECT pg_drop_replication_slot('docs_slot'); DROP TABLE docs_t")
	}()
	proxyAddr := testutil.FreeAddr(t)
	args := []string{"--database-url=" + cluster.URL(""), "--proxy.listen-address=" + proxyAddr, "--proxy.auth-method=trust",
		"--collector.statements.include-query"}
	for _, name := range collector.Names() {
		args = append(args, "--collector."+name)
	}
	addr, _, stop := startSidecar(t, args...)
	// One statement through the proxy, so that the statement metrics have series to show their types.
	conn, err := pgx.Connect(t.Context(), "postgres://postgres@"+proxyAddr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "SELECT 1/0"); err == nil {
		t.Fatal("SELECT 1/0 succeeded")
	}
	_ = conn.Close(t.Context())
	_, _ = get(t, "http://"+addr+"/metrics")
	got := referenceDoc(t, captured)
	stop()

	const path = "docs/reference.md"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `make docs`)", err)
	}
	if string(want) != got {
		t.Fatalf("%s is out of date with the code: run `make docs` and commit the result.\n%s", path, firstDiff(string(want), got))
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  file: %s\n  code: %s", i+1, x, y)
		}
	}
	return ""
}

func referenceDoc(t *testing.T, reg *registry) string {
	var b bytes.Buffer
	b.WriteString("# pgsidecar reference\n\n")
	b.WriteString("Generated from the code by `make docs`; a test fails when this file and the code disagree.\n\n")
	b.WriteString("## Flags and environment variables\n\n")
	b.WriteString("Every flag can also be set through the environment variable shown. Durations of the `DB_*`\n")
	b.WriteString("settings take milliseconds (`10000`) or Go durations (`10s`). A variable is the flag in capitals,\n")
	b.WriteString("dots and dashes as underscores, after `PGSIDECAR_` (`--log.level` is `PGSIDECAR_LOG_LEVEL`);\n")
	b.WriteString("the pool's (`DATABASE_URL`, `DB_*`), the proxy's (`PROXY_*`) and the statements' (`STATEMENTS_*`)\n")
	b.WriteString("have no prefix. A repeatable flag takes one value per line of its variable.\n\n")
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	k, _ := newApp(io.Discard, io.Discard)
	for _, f := range k.Model().Flags {
		if f.Hidden || f.Name == "help" || f.Name == "version" {
			continue
		}
		env := ""
		if f.Envar != "" {
			env = "`" + f.Envar + "`"
		}
		def := strings.Join(f.Default, ", ")
		if def != "" {
			def = "`" + def + "`"
		}
		name := "--" + f.Name
		if f.IsBoolFlag() {
			name = "--[no-]" + f.Name
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", name, env, def, cell(f.Help))
	}

	upstreamDoc(&b)
	b.WriteString("\n## Metrics\n\n")
	b.WriteString("`pgsidecar_*` are measured by pgsidecar itself; `pg_*` are PostgreSQL's statistics under\n")
	b.WriteString("postgres_exporter-compatible names. Labels in *italics* are constant per pool or process. Every\n")
	b.WriteString("metric a collector declares is listed, whether its collector is on by default or not and\n")
	b.WriteString("whether the server has rows for it; a metric's type is the one its samples had where this file\n")
	b.WriteString("was generated (PostgreSQL 15, a primary), else counter for a `_total` name and gauge otherwise.\n\n")
	b.WriteString("| metric | type | labels | collector | help |\n|---|---|---|---|---|\n")
	for _, m := range describeMetrics(t, reg) {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", m.name, m.typ, m.labels, m.collector, cell(m.help))
	}
	return b.String()
}

// upstreamDoc lists postgres_exporter's flags and variables and what pgsidecar does with them.
func upstreamDoc(b *bytes.Buffer) {
	b.WriteString("\n## postgres_exporter's flags and variables\n\n")
	b.WriteString("pgsidecar starts with postgres_exporter's (0.20) flags and environment, so that a unit file, a\n")
	b.WriteString("container spec or Debian's `/etc/default/prometheus-postgres-exporter` keeps working. The flags\n")
	b.WriteString("are hidden from `--help`. Flags with the same name in both (`--web.*`, `--log.*`,\n")
	b.WriteString("`--collection-timeout`, and `--collector.X` where the collector names agree) are pgsidecar's own.\n")
	b.WriteString("The default port stays 9188 (postgres_exporter's is 9187): pass `--web.listen-address=:9187`\n")
	b.WriteString("to take its place.\n\n")
	b.WriteString("The database: `DATABASE_URL` (or `--database-url`), or else postgres_exporter's variables in its\n")
	b.WriteString("order: `DATA_SOURCE_NAME` (one server: a comma-separated list is refused); else `DATA_SOURCE_URI`\n")
	b.WriteString("(`host:port/database?options`, or the file `DATA_SOURCE_URI_FILE` names) with `DATA_SOURCE_USER`\n")
	b.WriteString("and `DATA_SOURCE_PASS`, a `*_FILE` variable winning over its plain one (the passed-over one is\n")
	b.WriteString("logged). `DATABASE_URL` or `--database-url` together with a `DATA_SOURCE_*` variable is an error.\n")
	b.WriteString("Started with `DATA_SOURCE_*`, pgsidecar reads the per-database statistics of the connected\n")
	b.WriteString("database only, as postgres_exporter does, unless `--auto-discover-databases` (or\n")
	b.WriteString("`--collector.databases.discover`) is given. Started with postgres_exporter's flags or variables,\n")
	b.WriteString("it runs every collector whatever other sidecars do (`--collector.scope=all`) and exports every\n")
	b.WriteString("table (`--collector.tables.limit=0`), as postgres_exporter does; `--collector.max-series` still\n")
	b.WriteString("bounds a scrape.\n\n")
	b.WriteString("`PG_EXPORTER_*` variables stand for the flags below and for `--web.telemetry-path`,\n")
	b.WriteString("`--web.listen-address` and `--collection-timeout`; a flag on the command line wins over them. Any\n")
	b.WriteString("other `PG_EXPORTER_*` variable, or one set together with pgsidecar's own variable for the same\n")
	b.WriteString("flag, is an error naming it. Those honoured:\n\n")
	for _, name := range knownUpstreamEnv() {
		fmt.Fprintf(b, "- `%s`\n", name)
	}
	b.WriteString("\n")
	b.WriteString("| postgres_exporter | environment | pgsidecar | notes |\n|---|---|---|---|\n")
	k, _ := newApp(io.Discard, io.Discard)
	for _, f := range upstreamFlags() {
		name := "--" + f.Name
		if k.GetFlag(f.Name).Model().IsBoolFlag() {
			name = "--[no-]" + f.Name
		}
		env := ""
		if f.Env != "" {
			env = "`" + f.Env + "`"
		}
		target := "refused"
		switch {
		case f.Target != "":
			target = "`--" + f.Target + "`"
		case f.Set != nil:
			target = "see notes"
		}
		fmt.Fprintf(b, "| `%s` | %s | %s | %s |\n", name, env, target, cell(f.Note))
	}
}

func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }

type metricDoc struct{ name, typ, labels, collector, help string }

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]*)", help: "((?:[^"\\]|\\.)*)", unit: "[^"]*", constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}\}$`)

// describeMetrics lists every metric the registered collectors describe, with the type seen
// when collecting (counters by their _total suffix when no sample exists yet).
func describeMetrics(t *testing.T, reg *registry) []metricDoc {
	t.Helper()
	types := map[string]string{}
	// Collectors of catalog data describe nothing up front (their series depend on the server),
	// so what they collect is documented too; custom queries.yaml metrics are documented in
	// that file instead.
	collected := map[string]*prometheus.Desc{}
	for _, c := range reg.Collectors() {
		ch := make(chan prometheus.Metric, 256)
		go func() { c.Collect(ch); close(ch) }()
		for m := range ch {
			var pb dto.Metric
			if m.Write(&pb) != nil {
				continue
			}
			name := descRE.FindStringSubmatch(m.Desc().String())
			if name == nil {
				continue
			}
			if builtinCatalogMetric(name[1]) {
				collected[name[1]] = m.Desc()
			}
			switch {
			case pb.Counter != nil:
				types[name[1]] = "counter"
			case pb.Gauge != nil:
				types[name[1]] = "gauge"
			case pb.Histogram != nil:
				types[name[1]] = "histogram"
			case pb.Summary != nil:
				types[name[1]] = "summary"
			default:
				types[name[1]] = "untyped"
			}
		}
	}
	seen := map[string]metricDoc{}
	var descs []*prometheus.Desc
	for _, c := range reg.Collectors() {
		ch := make(chan *prometheus.Desc, 256)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			descs = append(descs, d)
		}
	}
	for _, d := range collected {
		descs = append(descs, d)
	}
	// What each collector declares, so that a metric without a sample here is listed too.
	collectorOf := map[string]string{"pg_settings_*": "`settings` (on)"}
	for _, decl := range collector.Declarations() {
		state := "off"
		if decl.DefaultEnabled {
			state = "on"
		}
		for _, d := range decl.Descs {
			descs = append(descs, d)
			m := descRE.FindStringSubmatch(d.String())
			if m == nil {
				continue
			}
			collectorOf[m[1]] = "`" + decl.Collector + "` (" + state + ")"
			if typ, ok := decl.Types[d]; ok && types[m[1]] == "" {
				types[m[1]] = map[prometheus.ValueType]string{prometheus.CounterValue: "counter",
					prometheus.GaugeValue: "gauge", prometheus.UntypedValue: "untyped"}[typ]
			}
		}
	}
	for _, d := range descs {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		name := m[1]
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		if strings.HasPrefix(name, "pg_settings_") {
			// One series per server setting; documented as a family.
			seen["pg_settings_*"] = metricDoc{name: "pg_settings_*", typ: "gauge", collector: collectorOf["pg_settings_*"],
				help: "Numeric and boolean settings from pg_settings, durations in seconds and sizes in bytes (e.g. pg_settings_max_connections, pg_settings_shared_buffers_bytes, pg_settings_statement_timeout_seconds)."}
			continue
		}
		var labels []string
		for _, l := range strings.Split(m[4], ",") {
			if l != "" {
				labels = append(labels, "`"+strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")")+"`")
			}
		}
		for _, l := range strings.Split(m[3], ",") {
			if k, _, ok := strings.Cut(l, "="); ok {
				labels = append(labels, "*"+k+"*")
			}
		}
		typ := types[name]
		if typ == "" {
			typ = "gauge"
			if strings.HasSuffix(name, "_total") {
				typ = "counter"
			}
		}
		help := strings.ReplaceAll(m[2], `\"`, `"`)
		seen[name] = metricDoc{name: name, typ: typ, labels: strings.Join(labels, ", "), collector: collectorOf[name], help: help}
	}
	out := make([]metricDoc, 0, len(seen))
	for _, m := range seen {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// builtinCatalogMetric tells the collectors' own pg_* families from custom queries.yaml ones.
func builtinCatalogMetric(name string) bool {
	for _, p := range []string{"pg_up", "pg_static", "pg_scrape_", "pg_stat_activity_", "pg_server_", "pg_stat_database_", "pg_stat_bgwriter_", "pg_stat_archiver_",
		"pg_database_", "pg_settings_", "pg_stat_statements_", "pgsidecar_", "pg_exporter_", "pg_stat_checkpointer_", "pg_replication_",
		"pg_stat_user_tables_", "pg_statio_user_", "pg_locks_", "pg_wal_", "pg_long_running_transactions", "pg_stat_progress_vacuum_",
		"pg_postmaster_", "pg_roles_", "pg_stat_wal_receiver_", "pg_buffercache_summary_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
