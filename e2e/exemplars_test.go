package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	promclient "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestExemplarsInPrometheus: statements with a sqlcommenter traceparent through the sidecar's
// proxy, and library queries run in an OpenTelemetry span's context, reach a real Prometheus
// with exemplar storage, whose /api/v1/query_exemplars returns their trace ids on the query and
// statement histograms: on classic buckets scraped in the OpenMetrics text format, and on
// native histograms scraped in the protobuf format.
func TestExemplarsInPrometheus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startSidecar(t)

	// The library: a pool in this process, its metrics served as pgsidecar serves them.
	reg := promclient.NewRegistry()
	cfg := testutil.FastPool(t, pool.FromEnv, cluster.URL("postgres"), "exemplars")
	m, err := pool.New(cfg, pool.WithLogger(slog.New(slog.DiscardHandler)), pool.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	lib := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	t.Cleanup(lib.Close)
	libAddr, _ := url.Parse(lib.URL)

	proxied := fmt.Sprintf("%032x", 0xe2e1)
	library := fmt.Sprintf("%032x", 0xe2e2)
	conn, err := pgx.Connect(ctx, s.proxyURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	span, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	tid, _ := trace.TraceIDFromHex(library)
	spanCtx := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: span, TraceFlags: trace.FlagsSampled}))

	for _, mode := range []struct {
		name, features, series string
	}{
		// Exemplars on classic buckets, in the OpenMetrics text format.
		{"openmetrics", "exemplar-storage", "_bucket"},
		// Native histograms (and their exemplars) in the protobuf format.
		{"protobuf", "exemplar-storage,native-histograms", ""},
	} {
		t.Run(mode.name, func(t *testing.T) {
			prom := startExemplarPrometheus(t, s.web, libAddr.Host, mode.features)
			// Send until Prometheus has them: an exemplar is taken at most once per bucket
			// per 5 s, and kept until the next scrape replaces it.
			have := func(job, metric, want string) bool {
				got, err := prom.exemplarTraces(fmt.Sprintf(`%s{job=%q}`, metric, job))
				if err != nil {
					t.Fatal(err)
				}
				return slices.Contains(got, want)
			}
			var missing []string
			ok := waitFor(60*time.Second, func() bool {
				if _, err := conn.Exec(ctx, "SELECT 1 AS e2e_exemplar /*route='%2Forders',traceparent='00-"+proxied+"-00f067aa0ba902b7-01'*/", pgx.QueryExecModeSimpleProtocol); err != nil {
					t.Fatal(err)
				}
				if _, err := m.Pool().Exec(spanCtx, "SELECT 2 AS e2e_library_exemplar"); err != nil {
					t.Fatal(err)
				}
				missing = nil
				for _, c := range []struct{ job, metric, trace string }{
					{"pgsidecar", "pgsidecar_query_duration_seconds" + mode.series, proxied},
					{"pgsidecar", "pgsidecar_statement_duration_seconds" + mode.series, proxied},
					{"library", "pgsidecar_query_duration_seconds" + mode.series, library},
					{"library", "pgsidecar_statement_duration_seconds" + mode.series, library},
				} {
					if !have(c.job, c.metric, c.trace) {
						missing = append(missing, c.job+" "+c.metric)
					}
				}
				return len(missing) == 0
			})
			if !ok {
				t.Fatalf("no exemplar with the statement's trace id in Prometheus for %v", missing)
			}
		})
	}
}

// startExemplarPrometheus is a real Prometheus with features (exemplar storage, native
// histograms) scraping the sidecar (job pgsidecar) and a library's metrics (job library).
func startExemplarPrometheus(t *testing.T, sidecar, library, features string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found (Debian: apt-get install prometheus; make deps does it)")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
scrape_configs:
  - job_name: pgsidecar
    static_configs:
      - targets: [%[2]q]
  - job_name: library
    static_configs:
      - targets: [%[3]q]
`, model.Duration(scrapeInterval), sidecar, library)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{addr: testutil.FreeAddr(t)}
	p.process = startProcess(t, "prometheus", nil, dir, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr,
		"--enable-feature="+features,
		"--log.level=warn",
	)
	if !waitFor(60*time.Second, func() bool { _, err := get("http://" + p.addr + "/-/ready"); return err == nil }) || p.exited() {
		t.Fatalf("prometheus did not become ready on %s", p.addr)
	}
	return p
}

// exemplarTraces returns the trace_id of every exemplar of the series that selector selects,
// over the last ten minutes (/api/v1/query_exemplars).
func (p *prometheus) exemplarTraces(selector string) ([]string, error) {
	now := time.Now()
	q := url.Values{"query": {selector}, "start": {strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)}, "end": {strconv.FormatInt(now.Unix(), 10)}}
	resp, err := http.Get("http://" + p.addr + "/api/v1/query_exemplars?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   []struct {
			Exemplars []struct {
				Labels map[string]string `json:"labels"`
			} `json:"exemplars"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query_exemplars %s: %s", selector, r.Error)
	}
	var out []string
	for _, d := range r.Data {
		for _, e := range d.Exemplars {
			out = append(out, e.Labels["trace_id"])
		}
	}
	return out, nil
}
