package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAlertmanagerRoutesBySeverity routes every alert of the rule file, with its severity,
// through the example Alertmanager configuration with amtool, and checks the receiver.
func TestAlertmanagerRoutesBySeverity(t *testing.T) {
	amtool, err := exec.LookPath("amtool")
	if err != nil {
		t.Fatal("amtool not found (Debian: apt-get install prometheus-alertmanager; make deps does it)")
	}
	cfg := filepath.Join(root, "deploy", "alertmanager", "alertmanager.yml")
	if out, err := exec.Command(amtool, "check-config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	receiver := map[string]string{"critical": "pager", "warning": "tickets", "info": "chat"}
	_, rules := alertExprs(t)
	seen := map[string]bool{}
	for _, a := range rules.Alerts() {
		sev := a.Labels["severity"]
		seen[sev] = true
		out, err := exec.Command(amtool, "config", "routes", "test", "--config.file="+cfg,
			"alertname="+a.Alert, "severity="+sev, "job=pgsidecar", "instance=app-1:9188", "pool=default").Output()
		if err != nil {
			t.Fatalf("amtool config routes test: %v", err)
		}
		if got := strings.TrimSpace(string(out)); got != receiver[sev] {
			t.Errorf("%s (severity %s) goes to %q, want %q", a.Alert, sev, got, receiver[sev])
		}
	}
	for sev := range receiver {
		if !seen[sev] {
			t.Errorf("no alert has severity %s", sev)
		}
	}
}

// TestPrometheusExampleConfig checks the example scrape configuration, including the rule file
// it loads, with promtool.
func TestPrometheusExampleConfig(t *testing.T) {
	out, err := exec.Command("promtool", "check", "config", filepath.Join(root, "deploy", "prometheus", "prometheus.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS: 1 rule files found") {
		t.Errorf("the example config should load the rule file:\n%s", out)
	}
}
