package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// probeGet probes target with an auth module, with the test's basic auth credentials unless
// anonymous.
func probeGet(t *testing.T, addr, target, module string, anonymous bool) (int, string) {
	t.Helper()
	q := url.Values{}
	if target != "" {
		q.Set("target", target)
	}
	if module != "" {
		q.Set("auth_module", module)
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/probe?"+q.Encode(), nil)
	must(t, err)
	if !anonymous {
		req.SetBasicAuth("prometheus", "scrape-pw")
	}
	r, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	must(t, err)
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// probeSessions counts the probe's sessions on a cluster.
func probeSessions(t *testing.T, c *pgtest.Cluster) int64 {
	t.Helper()
	n, err := c.QueryInt(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar-probe'")
	must(t, err)
	return n
}

// TestProbeTwoClusters probes two PostgreSQL clusters from one sidecar, as postgres_exporter's
// multi-target /probe does: each probe reads its own target, in the target's database only;
// the web configuration's authentication guards it; a module's allowlist refuses other
// targets; a password goes in clear text only where the module allows it; the targets kept
// (and their connections) are bounded and closed when idle.
func TestProbeTwoClusters(t *testing.T) {
	clearPoolEnv(t)
	if cluster.External() {
		t.Skip("needs two clusters of its own")
	}
	b, err := pgtest.Start(pgtest.Options{})
	must(t, err)
	t.Cleanup(b.Close)
	ctx := t.Context()
	for _, c := range []*pgtest.Cluster{cluster, b} {
		must(t, c.Exec(ctx, "CREATE ROLE probe_mon LOGIN PASSWORD 'probe-pw-1' IN ROLE pg_monitor"))
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS probe_mon") })
	// On b only: a table in its postgres database, another database with a table of its own,
	// and a role that logs in with a clear-text password.
	must(t, b.Exec(ctx, "CREATE TABLE probe_only_b (id int); CREATE ROLE probe_clear LOGIN PASSWORD 'clear-pw-2' IN ROLE pg_monitor"))
	must(t, b.Exec(ctx, "CREATE DATABASE probe_other_b"))
	other, err := pgx.Connect(ctx, b.URL("probe_other_b"))
	must(t, err)
	_, err = other.Exec(ctx, "CREATE TABLE probe_elsewhere (id int)")
	must(t, err)
	_ = other.Close(ctx)
	hba := filepath.Join(b.Dir(), "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	must(t, err)
	must(t, os.WriteFile(hba, append([]byte("host all probe_clear 127.0.0.1/32 password\n"), old...), 0o600))
	must(t, b.Exec(ctx, "SELECT pg_reload_conf()"))

	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "web.yml"), fmt.Appendf(nil, "basic_auth_users:\n  prometheus: %s\n", hash), 0o600))
	a := fmt.Sprintf("127.0.0.1:%d", cluster.Port())
	bAddr := fmt.Sprintf("127.0.0.1:%d", b.Port())
	must(t, os.WriteFile(filepath.Join(dir, "auth.yml"), fmt.Appendf(nil, `auth_modules:
  mon:
    type: userpass
    userpass:
      username: probe_mon
      password: probe-pw-1
    options:
      sslmode: disable
  only_a:
    type: userpass
    userpass:
      username: probe_mon
      password: probe-pw-1
    options:
      sslmode: disable
    targets: [%q]
  clear:
    type: userpass
    userpass:
      username: probe_clear
      password: clear-pw-2
    options:
      sslmode: disable
    targets: [127.0.0.0/8]
  clear_allowed:
    type: userpass
    userpass:
      username: probe_clear
      password: clear-pw-2
    options:
      sslmode: disable
      require_auth: password
`, a), 0o600))
	// --config.file is postgres_exporter's name for --probe.config-file.
	addr, logs, stop := startSidecar(t, "--database-url="+cluster.URL(""), "--web.config.file="+filepath.Join(dir, "web.yml"),
		"--config.file="+filepath.Join(dir, "auth.yml"), "--probe.max-targets=2", "--probe.idle-timeout=1m")

	if code, _ := probeGet(t, addr, a, "mon", true); code != http.StatusUnauthorized {
		t.Errorf("probe without credentials: %d, want 401", code)
	}
	code, bodyA := probeGet(t, addr, a, "mon", false)
	if code != http.StatusOK || !strings.Contains(bodyA, "\npg_up 1\n") {
		t.Fatalf("probe of a: %d\n%s\nlogs:\n%s", code, bodyA, logs.String())
	}
	code, bodyB := probeGet(t, addr, "postgres://"+bAddr+"/postgres", "mon", false)
	if code != http.StatusOK || !strings.Contains(bodyB, "\npg_up 1\n") {
		t.Fatalf("probe of b: %d\n%s\nlogs:\n%s", code, bodyB, logs.String())
	}
	// Each answer is its own server's: its port, its tables; and b's other database is not read.
	for _, c := range []struct {
		name, body string
		port       int
		has, lacks []string
	}{
		{"a", bodyA, cluster.Port(), nil, []string{`relname="probe_only_b"`, `relname="probe_elsewhere"`}},
		{"b", bodyB, b.Port(), []string{`relname="probe_only_b"`}, []string{`relname="probe_elsewhere"`, `pgsidecar_collector_database_success{datname="probe_other_b"}`}},
	} {
		if !strings.Contains(c.body, "\npgsidecar_build_info{") {
			t.Errorf("probe of %s lacks pgsidecar_build_info, which the rules join pg_* series with", c.name)
		}
		if want := fmt.Sprintf("\npg_settings_port %d\n", c.port); !strings.Contains(c.body, want) {
			t.Errorf("probe of %s lacks %q", c.name, strings.TrimSpace(want))
		}
		for _, s := range c.has {
			if !strings.Contains(c.body, s) {
				t.Errorf("probe of %s lacks %s", c.name, s)
			}
		}
		for _, s := range c.lacks {
			if strings.Contains(c.body, s) {
				t.Errorf("probe of %s has %s", c.name, s)
			}
		}
	}

	for _, c := range []struct {
		target, module string
		want           int
	}{
		{bAddr, "only_a", http.StatusForbidden},
		{"", "mon", http.StatusBadRequest},
		{a, "", http.StatusBadRequest},
		{a, "nope", http.StatusBadRequest},
		{"postgres://probe_mon:x@" + a + "/postgres", "mon", http.StatusBadRequest},
		{a + "/postgres?sslmode=disable", "mon", http.StatusBadRequest},
	} {
		if code, body := probeGet(t, addr, c.target, c.module, false); code != c.want {
			t.Errorf("probe of %q with %q: %d %.200s, want %d", c.target, c.module, code, body, c.want)
		}
	}

	// b asks probe_clear for its password in clear text: refused unless the module says so.
	if code, body := probeGet(t, addr, bAddr, "clear", false); code != http.StatusOK || !strings.Contains(body, "\npg_up 0\n") {
		t.Errorf("probe asked for a clear-text password: %d, want 200 with pg_up 0\n%.300s", code, body)
	}
	if code, body := probeGet(t, addr, bAddr, "clear_allowed", false); code != http.StatusOK || !strings.Contains(body, "\npg_up 1\n") {
		t.Errorf("probe whose module allows a clear-text password: %d, want pg_up 1\n%.300s\nlogs:\n%s", code, body, logs.String())
	}
	for _, secret := range []string{"probe-pw-1", "clear-pw-2"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the logs hold a probe password")
		}
	}

	// Four targets were probed with --probe.max-targets=2 (one connection each, three of them
	// connected): at most two are kept.
	if !pgtest.WaitFor(10*time.Second, func() bool { return probeSessions(t, cluster)+probeSessions(t, b) <= 2 }) {
		t.Errorf("%d probe sessions with --probe.max-targets=2", probeSessions(t, cluster)+probeSessions(t, b))
	}

	stop()
	// Another sidecar, whose targets are closed after a second without a probe.
	addr2, _, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--config.file="+filepath.Join(dir, "auth.yml"),
		"--probe.idle-timeout=1s")
	for _, target := range []string{a, bAddr} {
		if code, body := probeGet(t, addr2, target, "mon", true); code != http.StatusOK || !strings.Contains(body, "\npg_up 1\n") {
			t.Fatalf("probe of %s: %d %.300s", target, code, body)
		}
	}
	if !pgtest.WaitFor(15*time.Second, func() bool { return probeSessions(t, cluster)+probeSessions(t, b) == 0 }) {
		t.Errorf("probe sessions still open after --probe.idle-timeout: %d", probeSessions(t, cluster)+probeSessions(t, b))
	}

	// A reload reads the file again: a module taken out is refused from then on; a broken file
	// keeps the previous one.
	must(t, os.WriteFile(filepath.Join(dir, "auth.yml"), []byte("auth_modules: [\n"), 0o600))
	if code, _ := reloadSidecar(t, addr2); code == http.StatusOK {
		t.Error("reload of a broken probe configuration file succeeded")
	}
	if code, _ := probeGet(t, addr2, a, "mon", true); code != http.StatusOK {
		t.Errorf("probe after a failed reload: %d, want 200", code)
	}
	must(t, os.WriteFile(filepath.Join(dir, "auth.yml"),
		[]byte("auth_modules:\n  other:\n    type: userpass\n    userpass: {username: probe_mon}\n"), 0o600))
	if code, body := reloadSidecar(t, addr2); code != http.StatusOK {
		t.Fatalf("reload: %d %s", code, body)
	}
	if code, _ := probeGet(t, addr2, a, "mon", true); code != http.StatusBadRequest {
		t.Errorf("probe with a module the reload took out: %d, want 400", code)
	}
}

// TestProbeOffWithoutConfigFile: without --probe.config-file there is no /probe.
func TestProbeOffWithoutConfigFile(t *testing.T) {
	clearPoolEnv(t)
	addr, _, _ := startSidecar(t, "--database-url="+cluster.URL(""))
	q := url.Values{"target": {fmt.Sprintf("127.0.0.1:%d", cluster.Port())}, "auth_module": {"mon"}}
	if code, body := get(t, "http://"+addr+"/probe?"+q.Encode()); code != http.StatusNotFound {
		t.Errorf("/probe without a configuration file: %d %s, want 404", code, body)
	}
}
