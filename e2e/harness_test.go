package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// root is the repository root, seen from the e2e module.
const root = ".."

var (
	cluster *pgtest.Cluster
	binary  string // the pgsidecar binary built from the repository root
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pgsidecar-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "pgsidecar")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goTool(), "build", "-o", binary, ".")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building pgsidecar: %v\n%s", err, out)
		return 1
	}
	return pgtest.Main(m, &cluster, pgtest.Options{})
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// syncBuffer collects a child process' output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) tail(n int) string {
	out := s.String()
	if len(out) > n {
		out = "..." + out[len(out)-n:]
	}
	return out
}

// process is a child process that is stopped (SIGTERM, then SIGKILL after 10 s) at cleanup.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func startProcess(t *testing.T, name string, env []string, dir string, args ...string) *process {
	t.Helper()
	p := &process{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.tail(4000))
		}
	})
	return p
}

func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond every 200 ms until it holds or the timeout passes. pgtest.WaitFor polls
// every 20 ms, too often for conditions that are Prometheus queries taking seconds to come true.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func get(u string) (string, error) {
	resp, err := httpClient.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return string(b), nil
}

// sidecar is a running pgsidecar binary with its proxy on the test cluster.
type sidecar struct {
	*process
	web, proxy string
}

// Slow query threshold of the test sidecar: queries at or over it count as slow.
const slowThreshold = 300 * time.Millisecond

func startSidecar(t *testing.T) *sidecar {
	t.Helper()
	s := &sidecar{web: testutil.FreeAddr(t), proxy: testutil.FreeAddr(t)}
	env := []string{
		"DATABASE_URL=" + cluster.URL("postgres"),
		"DB_MIN_CONNECTIONS=2",
		"DB_MAX_CONNECTIONS=6",
		"DB_HEALTH_CHECK_INTERVAL=1s",
		"DB_SLOW_QUERY_THRESHOLD=" + slowThreshold.String(),
	}
	// One custom query, reading e2e_items, so that a lock on the table can fail a collector
	// (the built-in ones skip a locked table's size).
	queries := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(queries, []byte("e2e_items:\n  query: SELECT count(*) AS rows FROM e2e_items\n  metrics:\n    - rows:\n        usage: GAUGE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.process = startProcess(t, "pgsidecar", env, t.TempDir(), binary,
		"--web.listen-address="+s.web,
		"--proxy.listen-address="+s.proxy,
		"--collector.statements",
		"--queries.file="+queries,
	)
	ok := waitFor(30*time.Second, func() bool {
		body, err := get("http://" + s.web + "/metrics")
		return err == nil && strings.Contains(body, "\npg_up{") && strings.Contains(body, `pgsidecar_health_check_up{pool="default"} 1`)
	})
	if !ok || s.exited() {
		t.Fatalf("pgsidecar did not come up on %s with pg_up and a healthy pool", s.web)
	}
	return s
}

// proxyURL connects through the sidecar's proxy with the cluster's superuser.
func (s *sidecar) proxyURL() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", pgtest.SuperuserPassword), Host: s.proxy,
		Path: "/postgres", RawQuery: "sslmode=disable"}
	return u.String()
}

// scrape reads the sidecar's /metrics and returns the sample names it holds (histogram and
// summary families expanded to their _bucket, _sum and _count series).
func (s *sidecar) scrape(t *testing.T) (names map[string]bool, body string) {
	t.Helper()
	body, err := get("http://" + s.web + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	names = map[string]bool{}
	for name, f := range families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType().String() {
		case "HISTOGRAM":
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case "SUMMARY":
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	return names, body
}

// prometheus is a real Prometheus server (Debian's package) on loopback with a temp storage dir.
type prometheus struct {
	*process
	addr string
}

// Scrape and evaluation intervals of the test Prometheus.
const (
	scrapeInterval = 2 * time.Second
	evalInterval   = time.Second
)

func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found (Debian: apt-get install prometheus; make deps does it)")
	}
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(root, "alerts", "pgsidecar.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[2]s
rule_files:
  - %[3]q
scrape_configs:
  - job_name: pgsidecar
    static_configs:
      - targets: [%[4]q]
        labels:
          cluster: e2e
`, model.Duration(scrapeInterval), model.Duration(evalInterval), rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{addr: testutil.FreeAddr(t)}
	p.process = startProcess(t, "prometheus", nil, dir, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr,
		"--log.level=warn",
	)
	if !waitFor(60*time.Second, func() bool { _, err := get("http://" + p.addr + "/-/ready"); return err == nil }) || p.exited() {
		t.Fatalf("prometheus did not become ready on %s", p.addr)
	}
	return p
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant PromQL query and returns the resulting vector.
func (p *prometheus) query(expr string) ([]promSample, error) {
	body, err := get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if jerr := json.Unmarshal([]byte(body), &r); jerr != nil {
		if err != nil {
			return nil, err
		}
		return nil, jerr
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", expr, r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return []promSample{{}}, nil
	}
	var out []promSample
	err = json.Unmarshal(r.Data.Result, &out)
	return out, err
}

type promRule struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"`
}

// rules returns every loaded rule, by group.
func (p *prometheus) rules() (map[string][]promRule, error) {
	body, err := get("http://" + p.addr + "/api/v1/rules")
	if err != nil {
		return nil, err
	}
	var r struct {
		Data struct {
			Groups []struct {
				Name  string     `json:"name"`
				Rules []promRule `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, err
	}
	out := map[string][]promRule{}
	for _, g := range r.Data.Groups {
		out[g.Name] = g.Rules
	}
	return out, nil
}
