package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// debianDefaults is the environment file of Debian's prometheus-postgres-exporter service.
const debianDefaults = "/etc/default/prometheus-postgres-exporter"

// dropInQueries is a custom queries file for --extend.query-path.
const dropInQueries = `pg_dropin_custom:
  query: "SELECT 1::int AS one"
  master: true
  metrics:
    - one:
        usage: "GAUGE"
        description: "A constant, to show that the queries file was read."
`

// TestDropInStartup starts pgsidecar as postgres_exporter is started: with the environment and
// arguments of postgres_exporter's README examples and of Debian's packaged defaults file. Each
// time it also starts Debian's prometheus-postgres-exporter the same way (0.11.1 spells two of
// 0.20's flags differently; those are given in its spelling) on the same cluster, and checks
// that every pg_* name it exports is exported by pgsidecar too, with the same type and label
// names (compareFamilies); and that the flags had their effect on both.
func TestDropInStartup(t *testing.T) {
	peer, err := exec.LookPath("prometheus-postgres-exporter")
	if err != nil {
		t.Skip("prometheus-postgres-exporter not installed (Debian: apt-get install prometheus-postgres-exporter; make deps does it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; CREATE TABLE dropin_t (id int PRIMARY KEY); INSERT INTO dropin_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Exec(context.Background(), "DROP TABLE dropin_t") }()
	if err := cluster.Exec(ctx, "CREATE DATABASE dropin_other"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Exec(context.Background(), "DROP DATABASE dropin_other WITH (FORCE)") }()

	u, err := url.Parse(cluster.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	queries := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(queries, []byte(dropInQueries), 0o644); err != nil {
		t.Fatal(err)
	}
	// The README's local example, on this cluster's socket directory and port.
	keyValue := fmt.Sprintf("user=postgres host=%s port=%s sslmode=disable", cluster.Dir(), u.Port())

	type scenario struct {
		name      string
		env       []string
		args      []string // postgres_exporter 0.20's
		peerArgs  []string // the same for 0.11.1, when it spells them differently
		want      []string // names pgsidecar must export
		wantNot   []string // name prefixes it must not export
		otherDB   bool     // whether per-database series of dropin_other are expected
		minShared int
	}
	scenarios := []scenario{
		{name: "README container example", env: []string{
			"DATA_SOURCE_URI=" + u.Host + "/postgres?sslmode=disable", "DATA_SOURCE_USER=postgres", "DATA_SOURCE_PASS=" + pass},
			minShared: 250},
		{name: "README local example", env: []string{"DATA_SOURCE_NAME=" + keyValue}, minShared: 250},
		{name: "README flags", env: []string{"DATA_SOURCE_NAME=" + keyValue},
			args: []string{"--no-collector.stat_bgwriter", "--auto-discover-databases", "--extend.query-path=" + queries,
				"--collector.stat_statements", "--exclude-databases=template0"},
			peerArgs: []string{"--no-collector.bgwriter", "--auto-discover-databases", "--extend.query-path=" + queries,
				"--exclude-databases=template0"},
			want: []string{"pg_dropin_custom_one", "pg_stat_statements_calls_total"}, wantNot: []string{"pg_stat_bgwriter_"},
			otherDB: true, minShared: 200},
	}
	debian := scenario{name: "Debian defaults file", minShared: 250}
	vars, err := readDefaultsFile(debianDefaults)
	if err != nil {
		t.Fatalf("%s: %v (it comes with the package prometheus-postgres-exporter)", debianDefaults, err)
	}
	for k, v := range vars {
		switch {
		case k == "ARGS":
			debian.args = strings.Fields(v)
		case k == "DATA_SOURCE_NAME" && v == "":
			// Shipped empty: the administrator fills it in, as its comment shows.
			debian.env = append(debian.env, k+"=user=postgres host="+cluster.Dir()+" port="+u.Port()+" dbname=postgres")
		default:
			debian.env = append(debian.env, k+"="+v)
		}
	}
	scenarios = append(scenarios, debian)

	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			peerArgs := sc.peerArgs
			if peerArgs == nil {
				peerArgs = sc.args
			}
			peAddr, ourAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
			pe := startProcess(t, "postgres_exporter", sc.env, t.TempDir(),
				append([]string{peer, "--web.listen-address=" + peAddr}, peerArgs...)...)
			ours := startProcess(t, "pgsidecar", sc.env, t.TempDir(),
				append([]string{binary, "--web.listen-address=" + ourAddr}, sc.args...)...)
			upstream := scrapeUp(t, "postgres_exporter", pe, peAddr)
			got := scrapeUp(t, "pgsidecar", ours, ourAddr)
			problems, checked := compareFamilies(upstream, got)
			if checked < sc.minShared {
				t.Errorf("only %d names compared, want %d or more", checked, sc.minShared)
			}
			for _, p := range problems {
				t.Error(p)
			}
			for _, name := range sc.want {
				if len(got[name].GetMetric()) == 0 {
					t.Errorf("%s missing", name)
				}
			}
			for name := range got {
				for _, prefix := range sc.wantNot {
					if strings.HasPrefix(name, prefix) {
						t.Errorf("%s exported, though switched off", name)
					}
				}
			}
			if v := hasDatname(got["pg_stat_user_tables_seq_scan"], "dropin_other") ||
				hasDatname(got["pgsidecar_collector_database_success"], "dropin_other"); v != sc.otherDB {
				t.Errorf("dropin_other visited: %v, want %v", v, sc.otherDB)
			}
		})
	}
}

// scrapeUp waits for a pg_up 1 sample on addr and returns the scrape.
func scrapeUp(t *testing.T, name string, p *process, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	var fams map[string]*dto.MetricFamily
	if !waitFor(30*time.Second, func() bool {
		fams = scrapeFamilies(t, "http://"+addr+"/metrics")
		return p.exited() || fams != nil && hasSample(fams["pg_up"], 1)
	}) || p.exited() {
		body, err := get("http://" + addr + "/metrics")
		t.Fatalf("%s did not come up with pg_up 1 on %s: %v\n%s", name, addr, err, body[:min(len(body), 2000)])
	}
	return fams
}

func hasDatname(mf *dto.MetricFamily, db string) bool {
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "datname" && l.GetValue() == db {
				return true
			}
		}
	}
	return false
}

// readDefaultsFile reads KEY=VALUE lines as systemd's EnvironmentFile does: # comments, and
// single or double quotes around a value.
func readDefaultsFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %q is not KEY=VALUE", line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[strings.TrimSpace(k)] = v
	}
	return out, sc.Err()
}
