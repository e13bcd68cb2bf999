package collector

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	// Before any exporter is built: Declarations builds every collector.
	declaredMetrics = declarationsByName()
	emitCheck = checkEmit
	code := pgtest.Main(m, &cluster, pgtest.Options{CheckLeaks: true,
		// Archiving to nowhere, so the archiver collector has segments to count.
		Settings: []string{"archive_mode = on", "archive_command = 'true'"}})
	// Emitted by a test that scraped no more after it.
	if errs := takeUndeclared(); len(errs) > 0 {
		fmt.Fprintln(os.Stderr, strings.Join(errs, "\n"))
		code = 1
	}
	os.Exit(code)
}

// env is a pool manager, an exporter on it and the /metrics handler, as the binary wires them.
type env struct {
	mgr *pool.Manager
	exp *Exporter
	reg *prometheus.Registry
	srv *httptest.Server
	log *testutil.LogBuffer
}

// newEnv builds the pieces against the test cluster's database db ("" for postgres), with the
// exporter's config changed by tweak (may be nil).
func newEnv(t testing.TB, db string, tweak func(*Config)) *env {
	t.Helper()
	return newEnvURL(t, cluster.URL(db), tweak)
}

// newEnvURL is newEnv with the pool connecting to url.
func newEnvURL(t testing.TB, url string, tweak func(*Config)) *env {
	t.Helper()
	pc := testutil.FastPool(t, pool.FromEnv, url, "test")
	pc.MinConns = 1
	e := &env{reg: prometheus.NewRegistry(), log: &testutil.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mgr, err := pool.New(pc, pool.WithLogger(logger), pool.WithRegisterer(e.reg))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	t.Cleanup(mgr.Close)
	e.mgr = mgr
	exp, err := New(mgr, testConfig(tweak), WithLogger(logger))
	if err != nil {
		t.Fatalf("collector.New: %v", err)
	}
	t.Cleanup(exp.Close)
	e.exp = exp
	e.reg.MustRegister(exp)
	e.srv = httptest.NewServer(exp.Middleware(promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	})))
	t.Cleanup(e.srv.Close)
	return e
}

// testConfig is DefaultConfig without the shipped queries file, changed by tweak (may be nil).
func testConfig(tweak func(*Config)) Config {
	cfg := DefaultConfig()
	cfg.QueriesFile = ""
	// One exporter per test, whatever else runs on the cluster; the election's own tests ask
	// for ScopeAuto.
	cfg.Scope = ScopeAll
	if tweak != nil {
		tweak(&cfg)
	}
	return cfg
}

// scrape is one /metrics answer, parsed.
type scrape struct {
	status   int
	families map[string]*dto.MetricFamily
	body     string
}

// scrape GETs /metrics, with the scrape timeout header when timeout > 0. The HTTP client gives
// up after clientTimeout, so a scrape that does not answer in time fails the test.
func (e *env) scrape(t testing.TB, timeout, clientTimeout time.Duration) scrape {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL, nil)
	if timeout > 0 {
		req.Header.Set(scrapeTimeoutHeader, strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	}
	c := &http.Client{Timeout: clientTimeout}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading scrape: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing scrape: %v\n%s", err, body)
	}
	checkDeclared(t)
	return scrape{status: resp.StatusCode, families: fams, body: string(body)}
}

// declaredMetrics holds what each collector declares (Declarations), by collector and metric
// name.
var declaredMetrics map[string]map[string]Metric

func declarationsByName() map[string]map[string]Metric {
	out := map[string]map[string]Metric{}
	for _, d := range Declarations() {
		out[d.Collector] = map[string]Metric{}
		for _, m := range d.Metrics {
			out[d.Collector][descName(m.Desc)] = m
		}
	}
	return out
}

var (
	undeclaredMu sync.Mutex
	undeclared   []string
	undeclaredAt = map[string]bool{}
	// descNames caches descName, which checkEmit needs for every sample.
	descNames sync.Map
)

// checkEmit is emitCheck in the tests: it notes a metric a collector emitted but did not
// declare, with another type than declared, or on a server version it does not declare it
// for. The settings collector's pg_settings_* follow the server's settings and are not
// declared.
func checkEmit(collector string, d *prometheus.Desc, typ string, version int) {
	if collector == "settings" {
		return
	}
	name, ok := descNames.Load(d)
	if !ok {
		name, _ = descNames.LoadOrStore(d, descName(d))
	}
	m, ok := declaredMetrics[collector][name.(string)]
	var msg string
	switch {
	case !ok:
		msg = fmt.Sprintf("collector %s emitted %s, which it does not declare", collector, name)
	case m.Type != typ:
		msg = fmt.Sprintf("collector %s emitted %s as a %s; it declares a %s", collector, name, typ, m.Type)
	case !m.ExistsOn(version):
		msg = fmt.Sprintf("collector %s emitted %s on server version %d; it declares versions [%d, %d)",
			collector, name, version, m.MinVersion, m.BeforeVersion)
	default:
		return
	}
	undeclaredMu.Lock()
	defer undeclaredMu.Unlock()
	if !undeclaredAt[msg] {
		undeclaredAt[msg] = true
		undeclared = append(undeclared, msg)
	}
}

// takeUndeclared returns what checkEmit noted since the last call.
func takeUndeclared() []string {
	undeclaredMu.Lock()
	defer undeclaredMu.Unlock()
	errs := undeclared
	undeclared = nil
	return errs
}

// checkDeclared fails the test when a collector emitted a metric its declaration leaves out
// (checkEmit).
func checkDeclared(t testing.TB) {
	t.Helper()
	for _, msg := range takeUndeclared() {
		t.Error(msg)
	}
}

// values returns the samples of a metric whose labels include want.
func (s scrape) values(name string, want map[string]string) []float64 {
	mf := s.families[name]
	if mf == nil {
		return nil
	}
	return testutil.Samples([]*dto.MetricFamily{mf}, name, want)
}

// value returns the one sample of name matching want, failing the test if there is not
// exactly one.
func (s scrape) value(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	vs := s.values(name, want)
	if len(vs) != 1 {
		t.Fatalf("%s%v: want exactly one sample, got %d (%v)", name, want, len(vs), vs)
	}
	return vs[0]
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// createDB makes a fresh database for one test and drops it afterwards.
func createDB(t testing.TB, name string) {
	t.Helper()
	ctx := ctxTimeout(t, 30*time.Second)
	if err := cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
}

// writeQueries writes a queries file for one test.
func writeQueries(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var errNotExist = os.ErrNotExist

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
