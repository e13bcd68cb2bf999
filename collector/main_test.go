package collector

import (
	"bytes"
	"context"
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
	os.Exit(pgtest.Main(m, &cluster, pgtest.Options{CheckLeaks: true,
		// Archiving to nowhere, so the archiver collector has segments to count.
		Settings: []string{"archive_mode = on", "archive_command = 'true'"}}))
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
	checkDeclared(t, fams)
	return scrape{status: resp.StatusCode, families: fams, body: string(body)}
}

var declared = sync.OnceValue(func() map[string]bool {
	out := map[string]bool{}
	for _, d := range Declarations() {
		for _, desc := range d.Descs {
			out[descName(desc)] = true
		}
	}
	return out
})

// checkDeclared fails the test when a built-in collector exported a pg_* metric that no
// collector declares (Declarations), which the reference docs would then leave out. The
// exporter's own series and the settings collector's per-setting ones are not a collector's.
func checkDeclared(t testing.TB, fams map[string]*dto.MetricFamily) {
	t.Helper()
	for name := range fams {
		switch {
		case !strings.HasPrefix(name, "pg_"), name == "pg_up", name == "pg_static",
			strings.HasPrefix(name, "pg_scrape_collector_"), strings.HasPrefix(name, "pg_exporter_"),
			strings.HasPrefix(name, "pg_settings_"), !builtinName(name):
			continue
		}
		if !declared()[name] {
			t.Errorf("%s is exported by a built-in collector that does not declare it", name)
		}
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
