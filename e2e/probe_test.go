package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestProbeWithUpstreamRelabelling probes two PostgreSQL clusters from one pgsidecar through a
// real Prometheus configured as postgres_exporter's README documents its multi-target mode
// (static targets, metrics_path /probe, params auth_module, and its three relabel_configs):
// each target becomes an instance whose series are its own server's.
func TestProbeWithUpstreamRelabelling(t *testing.T) {
	if cluster.External() {
		t.Skip("needs two clusters of its own")
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found (Debian: apt-get install prometheus; make deps does it)")
	}
	second, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*pgtest.Cluster{cluster, second} {
		if err := c.Exec(ctx, "CREATE ROLE e2e_probe LOGIN PASSWORD 'e2e-probe-pw' IN ROLE pg_monitor"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS e2e_probe") })

	dir := t.TempDir()
	targets := map[string]int{
		fmt.Sprintf("127.0.0.1:%d", cluster.Port()): cluster.Port(),
		fmt.Sprintf("127.0.0.1:%d", second.Port()):  second.Port(),
	}
	auth := filepath.Join(dir, "postgres_exporter.yml")
	if err := os.WriteFile(auth, []byte(`auth_modules:
  foo:
    type: userpass
    userpass:
      username: e2e_probe
      password: e2e-probe-pw
    options:
      sslmode: disable
    targets: [127.0.0.1]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	web := testutil.FreeAddr(t)
	sc := startProcess(t, "pgsidecar", []string{"DATABASE_URL=" + cluster.URL("postgres")}, dir, binary,
		"--web.listen-address="+web, "--config.file="+auth)
	if !waitFor(30*time.Second, func() bool { _, err := get("http://" + web + "/metrics"); return err == nil }) || sc.exited() {
		t.Fatalf("pgsidecar did not come up on %s", web)
	}

	var list []string
	for target := range targets {
		list = append(list, fmt.Sprintf("%q", target))
	}
	sort.Strings(list)
	cfg := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
scrape_configs:
  - job_name: 'postgres'
    static_configs:
      - targets: [%[2]s]
    metrics_path: /probe
    params:
      auth_module: [foo]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: %[3]s  # The postgres exporter's real hostname:port.
`, model.Duration(scrapeInterval), list[0]+", "+list[1], web)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{addr: testutil.FreeAddr(t)}
	p.process = startProcess(t, "prometheus", nil, dir, bin, "--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+p.addr, "--log.level=warn")
	if !waitFor(60*time.Second, func() bool { _, err := get("http://" + p.addr + "/-/ready"); return err == nil }) || p.exited() {
		t.Fatalf("prometheus did not become ready on %s", p.addr)
	}

	// Both targets are up, as instances named after them, and each reports its own server's port.
	var got []promSample
	if !waitFor(60*time.Second, func() bool {
		got, err = p.query(`pg_settings_port{job="postgres"} and on (instance) (up{job="postgres"} == 1) and on (instance) (pg_up == 1)`)
		return err == nil && len(got) == len(targets)
	}) {
		up, _ := p.query(`up{job="postgres"}`)
		t.Fatalf("probed series %v (err %v); up: %v", got, err, up)
	}
	for _, s := range got {
		port, ok := targets[s.Metric["instance"]]
		if !ok {
			t.Errorf("instance %q is not a target", s.Metric["instance"])
			continue
		}
		if v := fmt.Sprint(s.Value[1]); v != fmt.Sprint(port) {
			t.Errorf("instance %s reports port %s, want %d", s.Metric["instance"], v, port)
		}
	}
	// The rules' join keeps the probed series: they are pgsidecar's, not postgres_exporter's.
	if joined, err := p.query(`pg_up{job="postgres"} and on (job, instance) pgsidecar_build_info`); err != nil || len(joined) != len(targets) {
		t.Errorf("pg_up joined with pgsidecar_build_info: %v %v, want %d series", joined, err, len(targets))
	}
	// The sidecar's own pool is not in the probes' answers.
	if pool, err := p.query(`count({job="postgres", __name__=~"pgsidecar_pool_.*"})`); err != nil || len(pool) != 0 {
		t.Errorf("pool series in the probes: %v %v", pool, err)
	}
}
