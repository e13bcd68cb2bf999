package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
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

// firingLabels returns, for every alert, the labels it fires with in its first promtool test that
// expects it to fire (alertname included): the label names the rules really produce.
func firingLabels(t *testing.T) map[string]map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "alerts", "tests", "*.test.yml"))
	sort.Strings(files)
	out := map[string]map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var pt struct {
			Tests []struct {
				AlertRuleTest []struct {
					Alertname string `yaml:"alertname"`
					ExpAlerts []struct {
						ExpLabels map[string]string `yaml:"exp_labels"`
					} `yaml:"exp_alerts"`
				} `yaml:"alert_rule_test"`
			} `yaml:"tests"`
		}
		if err := yaml.Unmarshal(b, &pt); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, g := range pt.Tests {
			for _, a := range g.AlertRuleTest {
				if len(a.ExpAlerts) == 0 || out[a.Alertname] != nil {
					continue
				}
				ls := map[string]string{"alertname": a.Alertname}
				for k, v := range a.ExpAlerts[0].ExpLabels {
					ls[k] = v
				}
				out[a.Alertname] = ls
			}
		}
	}
	return out
}

var amMatcher = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$`)

// parseMatchers reads Alertmanager matchers of the form name="value" (or !=, =~, !~).
func parseMatchers(t *testing.T, ms []string) []*labels.Matcher {
	t.Helper()
	types := map[string]labels.MatchType{"=": labels.MatchEqual, "!=": labels.MatchNotEqual, "=~": labels.MatchRegexp, "!~": labels.MatchNotRegexp}
	var out []*labels.Matcher
	for _, s := range ms {
		m := amMatcher.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("matcher %q: not name=\"value\"", s)
		}
		lm, err := labels.NewMatcher(types[m[2]], m[1], m[3])
		if err != nil {
			t.Fatalf("matcher %q: %v", s, err)
		}
		out = append(out, lm)
	}
	return out
}

func matchesAll(ms []*labels.Matcher, ls map[string]string) bool {
	for _, m := range ms {
		if !m.Matches(ls[m.Name]) {
			return false
		}
	}
	return true
}

// TestAlertmanagerInhibitions sends the rules' alerts, with the labels their promtool tests fire
// them with, to a real Alertmanager running the example configuration, and checks what each
// inhibit rule holds back: an inhibit rule that names its targets (alertname matcher) must hold
// back every one of them, so an `equal` label the targets lack shows up here; a rule that picks
// targets by other labels holds back exactly those that carry all of its `equal` labels.
func TestAlertmanagerInhibitions(t *testing.T) {
	bin, err := exec.LookPath("prometheus-alertmanager")
	if err != nil {
		if bin, err = exec.LookPath("alertmanager"); err != nil {
			t.Fatal("alertmanager not found (Debian: apt-get install prometheus-alertmanager; make deps does it)")
		}
	}
	cfgPath, err := filepath.Abs(filepath.Join(root, "deploy", "alertmanager", "alertmanager.yml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		InhibitRules []struct {
			SourceMatchers []string `yaml:"source_matchers"`
			TargetMatchers []string `yaml:"target_matchers"`
			Equal          []string `yaml:"equal"`
		} `yaml:"inhibit_rules"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.InhibitRules) == 0 {
		t.Fatal("no inhibit rules")
	}
	fired := firingLabels(t)
	_, rules := alertExprs(t)
	for _, a := range rules.Alerts() {
		if fired[a.Alert] == nil {
			t.Fatalf("%s has no promtool test where it fires", a.Alert)
		}
	}

	// One set of alerts per inhibit rule. Within a set a label has one value whatever the alert
	// (the promtool tests use different jobs and instances); it carries the rule's number, so
	// that the sets cannot inhibit one another.
	type sent struct {
		rule   int
		source bool
		labels map[string]string
		want   bool // a target that should be held back
	}
	var alerts []sent
	for i, r := range cfg.InhibitRules {
		src, tgt := parseMatchers(t, r.SourceMatchers), parseMatchers(t, r.TargetMatchers)
		named := false
		for _, m := range tgt {
			named = named || m.Name == "alertname"
		}
		var nSrc, nTgt int
		names := make([]string, 0, len(fired))
		for n := range fired {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			ls := map[string]string{}
			for k, v := range fired[n] {
				if k != "alertname" && k != "severity" {
					v = fmt.Sprintf("%s-%d", k, i)
				}
				ls[k] = v
			}
			switch {
			case matchesAll(src, fired[n]):
				nSrc++
				alerts = append(alerts, sent{rule: i, source: true, labels: ls})
			case matchesAll(tgt, fired[n]):
				nTgt++
				want := true
				for _, e := range r.Equal {
					if _, ok := fired[n][e]; !ok && !named {
						want = false // picked by severity, but not of the same sidecar
					}
				}
				alerts = append(alerts, sent{rule: i, labels: ls, want: want})
			}
		}
		if nSrc == 0 || nTgt == 0 {
			t.Errorf("inhibit rule %d (%v -> %v) matches %d source and %d target alerts of the rule file", i, r.SourceMatchers, r.TargetMatchers, nSrc, nTgt)
		}
	}

	addr := testutil.FreeAddr(t)
	dir := t.TempDir()
	am := startProcess(t, "alertmanager", nil, dir, bin, "--config.file="+cfgPath, "--storage.path="+dir,
		"--web.listen-address="+addr, "--cluster.listen-address=", "--log.level=error")
	if !waitFor(60*time.Second, func() bool { _, err := get("http://" + addr + "/-/ready"); return err == nil }) || am.exited() {
		t.Fatalf("alertmanager did not become ready on %s", addr)
	}
	type postable struct {
		Labels   map[string]string `json:"labels"`
		StartsAt time.Time         `json:"startsAt"`
		EndsAt   time.Time         `json:"endsAt"`
	}
	now := time.Now()
	var post []postable
	for _, a := range alerts {
		post = append(post, postable{Labels: a.labels, StartsAt: now, EndsAt: now.Add(time.Hour)})
	}
	body, _ := json.Marshal(post)
	resp, err := httpClient.Post("http://"+addr+"/api/v2/alerts", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("posting alerts: %s", resp.Status)
	}

	key := func(ls map[string]string) string {
		ks := make([]string, 0, len(ls))
		for k, v := range ls {
			ks = append(ks, k+"="+v)
		}
		sort.Strings(ks)
		return strings.Join(ks, ",")
	}
	var problems []string
	waitFor(30*time.Second, func() bool {
		problems = problems[:0]
		out, err := get("http://" + addr + "/api/v2/alerts")
		if err != nil {
			problems = append(problems, err.Error())
			return false
		}
		var got []struct {
			Fingerprint string            `json:"fingerprint"`
			Labels      map[string]string `json:"labels"`
			Status      struct {
				InhibitedBy []string `json:"inhibitedBy"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			problems = append(problems, err.Error())
			return false
		}
		fp := map[string]string{}
		inhibitedBy := map[string][]string{}
		for _, g := range got {
			fp[key(g.Labels)] = g.Fingerprint
			inhibitedBy[key(g.Labels)] = g.Status.InhibitedBy
		}
		for _, a := range alerts {
			if a.source {
				continue
			}
			k := key(a.labels)
			if _, ok := fp[k]; !ok {
				problems = append(problems, "alert not in Alertmanager: "+k)
				continue
			}
			by := inhibitedBy[k]
			held := false
			for _, s := range alerts {
				if s.source && s.rule == a.rule && len(by) > 0 && by[0] == fp[key(s.labels)] {
					held = true
				}
			}
			switch {
			case a.want && !held:
				problems = append(problems, fmt.Sprintf("inhibit rule %d does not hold back %s %v (inhibited by %v): an equal label it lacks?",
					a.rule, a.labels["alertname"], a.labels, by))
			case !a.want && held:
				problems = append(problems, fmt.Sprintf("inhibit rule %d holds back %s %v although it lacks an equal label", a.rule, a.labels["alertname"], a.labels))
			}
		}
		return len(problems) == 0
	})
	for _, p := range problems {
		t.Error(p)
	}
}
