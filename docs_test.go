package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite docs/reference.md and golden files from the code")

// TestReferenceDocs keeps docs/reference.md equal to what the code declares: every flag with
// its environment variable and default, every metric with its type, labels, collector and the
// PostgreSQL versions it exists on. It needs no database: the collectors' metrics come from
// their declarations (collector.Declarations), the others from the registry of a sidecar whose
// database does not answer. Run `make docs` (go test -run TestReferenceDocs -update .) after
// changing either.
func TestReferenceDocs(t *testing.T) {
	clearPoolEnv(t)
	var captured *registry
	registryHook = func(r *registry) { captured = r }
	defer func() { registryHook = nil }()
	// Every optional part on, so that every metric is registered; nothing listens on port 1.
	args := []string{"--database-url=postgres://docs@127.0.0.1:1/docs?sslmode=disable",
		"--proxy.listen-address=" + testutil.FreeAddr(t), "--proxy.auth-method=trust", "--collector.statements.include-query"}
	for _, name := range collector.Names() {
		args = append(args, "--collector."+name)
	}
	_, _, stop := startSidecar(t, args...)
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
	b.WriteString("metric a collector declares is listed, whether its collector is on by default or not, with the\n")
	b.WriteString("PostgreSQL versions it exists on, as the collector declares them: outside them it has no\n")
	b.WriteString("series. The catalog queries are written for 13 to 17, so `all` means those. A collector test\n")
	b.WriteString("fails when a collector sends a metric, type or version it does not declare.\n\n")
	b.WriteString("| metric | type | labels | collector | versions | help |\n|---|---|---|---|---|---|\n")
	for _, m := range describeMetrics(t, reg) {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s |\n", m.name, m.typ, m.labels, m.collector, m.versions, cell(m.help))
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

type metricDoc struct{ name, typ, labels, collector, versions, help string }

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]*)", help: "((?:[^"\\]|\\.)*)", unit: "[^"]*", constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}\}$`)

// describeMetrics lists every metric: the collectors' and the exporter's own from their
// declarations, the pool's, the proxy's and the process's from what the registry's collectors
// describe, with the type their samples have, or their vector's type when they have none yet.
func describeMetrics(t *testing.T, reg *registry) []metricDoc {
	t.Helper()
	seen := map[string]metricDoc{}
	add := func(d *prometheus.Desc, typ, collector, versions string) {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
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
		if typ == "" {
			t.Errorf("%s: no type declared or seen", m[1])
		}
		seen[m[1]] = metricDoc{name: m[1], typ: typ, labels: strings.Join(labels, ", "), collector: collector,
			versions: versions, help: strings.ReplaceAll(m[2], `\"`, `"`)}
	}
	for _, decl := range collector.Declarations() {
		state := "off"
		if decl.DefaultEnabled {
			state = "on"
		}
		for _, m := range decl.Metrics {
			add(m.Desc, m.Type, "`"+decl.Collector+"` ("+state+")", versionRange(m))
		}
		if decl.Collector == "settings" {
			// One series per server setting, built as the collector reads them; documented as
			// a family.
			seen["pg_settings_*"] = metricDoc{name: "pg_settings_*", typ: "gauge", collector: "`settings` (" + state + ")",
				versions: versionRange(collector.Metric{}),
				help:     "Numeric and boolean settings from pg_settings, durations in seconds and sizes in bytes (e.g. pg_settings_max_connections, pg_settings_shared_buffers_bytes, pg_settings_statement_timeout_seconds)."}
		}
	}
	for _, m := range collector.ExporterMetrics() {
		add(m.Desc, m.Type, "", versionRange(m))
	}

	types := map[string]string{}
	var descs []*prometheus.Desc
	for _, c := range reg.Collectors() {
		if _, ok := c.(*collector.Exporter); ok {
			continue // declared above; its Collect would wait for the database
		}
		vectorTypes(reflect.ValueOf(c), types, 0)
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
		dch := make(chan *prometheus.Desc, 256)
		go func() { c.Describe(dch); close(dch) }()
		for d := range dch {
			descs = append(descs, d)
		}
	}
	for _, d := range descs {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		name := m[1]
		if _, ok := seen[name]; ok || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		typ := types[name]
		if typ == "" {
			typ = unsampledTypes[name]
		} else if _, ok := unsampledTypes[name]; ok {
			t.Errorf("%s has a sample now: remove it from unsampledTypes", name)
		}
		add(d, typ, "", "all")
	}
	for name := range unsampledTypes {
		if _, ok := seen[name]; !ok {
			t.Errorf("%s is not registered any more: remove it from unsampledTypes", name)
		}
	}
	out := make([]metricDoc, 0, len(seen))
	for _, m := range seen {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// unsampledTypes are the types of the metrics outside the collectors that are neither sampled
// without a database nor a vector: their samples are built at collection time.
var unsampledTypes = map[string]string{
	"pgsidecar_statement_info": "gauge", // pool/statements.go, one per top statement
}

// versionRange renders the PostgreSQL versions a metric exists on.
func versionRange(m collector.Metric) string {
	major := func(v int) int { return v / 10000 }
	switch {
	case m.MinVersion != 0 && m.BeforeVersion != 0:
		return fmt.Sprintf("%d–%d", major(m.MinVersion), major(m.BeforeVersion)-1)
	case m.MinVersion != 0:
		return fmt.Sprintf("%d+", major(m.MinVersion))
	case m.BeforeVersion != 0:
		return fmt.Sprintf("up to %d", major(m.BeforeVersion)-1)
	}
	return "all"
}

var vectorKinds = map[reflect.Type]string{
	reflect.TypeFor[*prometheus.CounterVec]():   "counter",
	reflect.TypeFor[*prometheus.GaugeVec]():     "gauge",
	reflect.TypeFor[*prometheus.HistogramVec](): "histogram",
	reflect.TypeFor[*prometheus.SummaryVec]():   "summary",
}

// vectorTypes records the type of the metric vectors found in v, following pgsidecar's own
// structs and pointers to them: a vector without children has no sample to show its type.
func vectorTypes(v reflect.Value, out map[string]string, depth int) {
	if depth > 4 || !v.IsValid() {
		return
	}
	if typ, ok := vectorKinds[v.Type()]; ok {
		if v.IsNil() {
			return
		}
		ch := make(chan *prometheus.Desc, 1)
		v.Interface().(prometheus.Collector).Describe(ch)
		if m := descRE.FindStringSubmatch((<-ch).String()); m != nil {
			out[m[1]] = typ
		}
		return
	}
	switch v.Kind() {
	case reflect.Interface, reflect.Pointer:
		if !v.IsNil() {
			vectorTypes(v.Elem(), out, depth+1)
		}
	case reflect.Struct:
		if !strings.HasPrefix(v.Type().PkgPath(), "github.com/pgsidecar/") {
			return
		}
		for i := range v.NumField() {
			f := v.Field(i)
			if !f.CanInterface() {
				if !f.CanAddr() {
					continue
				}
				// Unexported: read through its address (tests only).
				f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
			}
			vectorTypes(f, out, depth+1)
		}
	}
}
