package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// compatExceptions are the pg_* names postgres_exporter exports by default that pgsidecar
// deliberately exports differently. The reason goes with each.
var compatExceptions = map[string]string{
	// Debian's postgres_exporter 0.11.1 still has its old pg_stat_database map, whose session
	// columns are untyped and in milliseconds; current postgres_exporter exports only
	// active_time, as pg_stat_database_active_time_seconds_total, and pgsidecar follows it and
	// exports the others the same way (seconds, _total).
	"pg_stat_database_active_time":              "pg_stat_database_active_time_seconds_total, as current postgres_exporter",
	"pg_stat_database_idle_in_transaction_time": "pg_stat_database_idle_in_transaction_time_seconds_total",
	"pg_stat_database_session_time":             "pg_stat_database_session_time_seconds_total",
	"pg_stat_database_sessions":                 "pg_stat_database_sessions_total",
	"pg_stat_database_sessions_abandoned":       "pg_stat_database_sessions_abandoned_total",
	"pg_stat_database_sessions_fatal":           "pg_stat_database_sessions_fatal_total",
	"pg_stat_database_sessions_killed":          "pg_stat_database_sessions_killed_total",
	"pg_stat_database_checksum_failures":        "a counter, pg_stat_database_checksum_failures_total",
	"pg_stat_database_checksum_last_failure":    "a Unix time, pg_stat_database_checksum_last_failure_timestamp_seconds, only once a failure happened",
	// 0.11.1 exports NaN until a segment was archived; current postgres_exporter and pgsidecar
	// leave the series out until then.
	"pg_stat_archiver_last_archive_age": "no NaN sample before the first archived segment, as current postgres_exporter",
	// pgsidecar's activity collector breaks sessions down further; sum or max by (datname,
	// state) gives 0.11.1's series.
	"pg_stat_activity_count":           "adds usename and application_name labels",
	"pg_stat_activity_max_tx_duration": "adds usename and application_name labels",
	// commit_delay is in microseconds, but PostgreSQL gives it no unit, so 0.11.1 exports the raw
	// number; pgsidecar converts it to seconds.
	"pg_settings_commit_delay": "pg_settings_commit_delay_seconds, in seconds",
	// Exported by postgres_exporter only with --extend.query-path: 1 when the file failed to
	// load. pgsidecar says it the other way round, with the time of the last good load.
	"pg_exporter_user_queries_load_error": "pgsidecar_queries_last_reload_successful and _success_timestamp_seconds",
	// PostgreSQL 16's column, which 0.11.1 predates: it exports it untyped, as any column it
	// does not know; pgsidecar makes it a counter like the other conflict columns.
	"pg_stat_database_conflicts_confl_active_logicalslot": "a counter, as the other pg_stat_database_conflicts columns",
}

// ignoredLabels are labels one exporter adds to every series of a target: 0.11.1 puts the
// server's host:port in "server", pgsidecar puts its pool name in "pool". Prometheus' target
// labels do that job.
var ignoredLabels = map[string]bool{"server": true, "pool": true}

// TestPostgresExporterCompatibility runs Debian's prometheus-postgres-exporter and pgsidecar
// against the same cluster and checks that every pg_* name postgres_exporter exports by default
// is exported by pgsidecar with the same type and label names, apart from compatExceptions.
func TestPostgresExporterCompatibility(t *testing.T) {
	bin, err := exec.LookPath("prometheus-postgres-exporter")
	if err != nil {
		t.Fatal("prometheus-postgres-exporter not found (Debian: apt-get install prometheus-postgres-exporter; make deps does it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Rows for the collectors that export nothing without them: a replication slot, a table.
	if err := cluster.Exec(ctx, "SELECT pg_create_physical_replication_slot('compat_slot', true)"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Exec(context.Background(), "SELECT pg_drop_replication_slot('compat_slot')") }()
	if err := cluster.Exec(ctx, "CREATE TABLE compat_t (id int PRIMARY KEY); INSERT INTO compat_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Exec(context.Background(), "DROP TABLE compat_t") }()

	peAddr := testutil.FreeAddr(t)
	pe := startProcess(t, "postgres_exporter", []string{"DATA_SOURCE_NAME=" + cluster.URL("postgres")}, t.TempDir(),
		bin, "--web.listen-address="+peAddr)
	var upstream map[string]*dto.MetricFamily
	if !waitFor(30*time.Second, func() bool {
		upstream = scrapeFamilies(t, "http://"+peAddr+"/metrics")
		return upstream != nil && hasSample(upstream["pg_up"], 1)
	}) || pe.exited() {
		t.Fatalf("postgres_exporter did not come up with pg_up 1 on %s", peAddr)
	}
	ours := scrapeFamilies(t, "http://"+startSidecar(t).web+"/metrics")
	if ours == nil {
		t.Fatal("cannot scrape pgsidecar")
	}

	problems, checked := compareFamilies(upstream, ours)
	if checked < 250 {
		t.Errorf("only %d names compared; is postgres_exporter exporting its defaults?", checked)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// compareFamilies checks that every pg_* name upstream exports with a sample, apart from
// compatExceptions, is in ours with the same type and label names. It returns what differs and
// how many names it compared.
func compareFamilies(upstream, ours map[string]*dto.MetricFamily) (problems []string, checked int) {
	for _, name := range sortedNames(upstream) {
		want := upstream[name]
		if !strings.HasPrefix(name, "pg_") || len(want.GetMetric()) == 0 {
			continue
		}
		if _, ok := compatExceptions[name]; ok {
			continue
		}
		checked++
		got := ours[name]
		if got == nil || len(got.GetMetric()) == 0 {
			problems = append(problems, name+": missing")
			continue
		}
		if got.GetType() != want.GetType() {
			problems = append(problems, fmt.Sprintf("%s: type %v, postgres_exporter %v", name, got.GetType(), want.GetType()))
		}
		if g, w := labelNames(got), labelNames(want); !slices.Equal(g, w) {
			problems = append(problems, fmt.Sprintf("%s: labels %v, postgres_exporter %v", name, g, w))
		}
	}
	return problems, checked
}

// scrapeFamilies GETs a /metrics page and parses it, or returns nil.
func scrapeFamilies(t *testing.T, u string) map[string]*dto.MetricFamily {
	t.Helper()
	body, err := get(u)
	if err != nil {
		return nil
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing %s: %v", u, err)
	}
	return fams
}

func hasSample(mf *dto.MetricFamily, v float64) bool {
	for _, m := range mf.GetMetric() {
		if m.GetGauge().GetValue() == v || m.GetUntyped().GetValue() == v {
			return true
		}
	}
	return false
}

// labelNames is the sorted union of a family's label names, without ignoredLabels.
func labelNames(mf *dto.MetricFamily) []string {
	set := map[string]bool{}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if !ignoredLabels[l.GetName()] {
				set[l.GetName()] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func sortedNames(m map[string]*dto.MetricFamily) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
