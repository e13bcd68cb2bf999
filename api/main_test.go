package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Main(m, &cluster, pgtest.Options{})
	if code == 0 {
		// Streams, pools and servers must all be gone when the tests are.
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// sidecar is the API served over real HTTP on a real pool.
type sidecar struct {
	m   *pool.Manager
	reg *prometheus.Registry
	h   *Handler
	srv *httptest.Server
}

func testConfig(t testing.TB) pool.Config {
	t.Helper()
	c := pool.DefaultConfig()
	c.DatabaseURL = cluster.URL("")
	c.MaxConns = 4
	c.MinConns = 2
	c.RetryDelay = 10 * time.Millisecond
	c.RetryMaxDelay = 100 * time.Millisecond
	c.ConnectTimeout = 5 * time.Second
	c.HealthCheckTimeout = 2 * time.Second
	c.HealthCheckInterval = time.Hour // no background pings to disturb the counts
	c.MetricsLogInterval = 0
	c.SlowQueryThreshold = time.Second // also the health check latency that counts as degraded
	c.Name = "api"
	c.ApplicationName = "api-test-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	return c
}

// startSidecar builds a pool, registers the pg_* test collector when withCollector is set,
// and serves the API; everything is closed at test end.
func startSidecar(t testing.TB, cfg pool.Config, withCollector bool, opts Options) *sidecar {
	t.Helper()
	s := &sidecar{reg: prometheus.NewRegistry()}
	logger := slog.New(slog.DiscardHandler)
	m, err := pool.New(cfg, pool.WithLogger(logger), pool.WithRegisterer(s.reg))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	s.m = m
	t.Cleanup(m.Close)
	if withCollector {
		mon, err := m.NewMonitorPool(pool.MonitorOptions{StatementTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		s.reg.MustRegister(&pgCollector{p: mon})
	}
	opts.Manager, opts.Gatherer, opts.Logger = m, s.reg, logger
	s.h = New(opts)
	mux := http.NewServeMux()
	s.h.Register(mux)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		s.h.Close()
		s.srv.Close()
	})
	return s
}

func (s *sidecar) waitHealthy(t testing.TB) {
	t.Helper()
	if !pgtest.WaitFor(30*time.Second, func() bool { return s.m.Health().Status == pool.StatusHealthy }) {
		t.Fatalf("pool never became healthy: %+v", s.m.Health())
	}
}

// do sends a request and returns the status, headers and body.
func (s *sidecar) do(t testing.TB, method, path, body string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	if strings.Contains(string(b), pgtest.SuperuserPassword) {
		t.Fatalf("%s %s: the body shows the database password:\n%s", method, path, b)
	}
	return resp.StatusCode, resp.Header, b
}

// getJSON GETs path, checks the status and decodes the body into v.
func (s *sidecar) getJSON(t testing.TB, path string, wantCode int, v any) {
	t.Helper()
	code, hdr, b := s.do(t, http.MethodGet, path, "")
	if code != wantCode {
		t.Fatalf("GET %s: status %d, want %d; body:\n%s", path, code, wantCode, b)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("GET %s: Content-Type %q, want JSON", path, ct)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// query runs SQL through the pool (measured like application traffic).
func (s *sidecar) query(t testing.TB, sql string) error {
	t.Helper()
	_, err := s.m.Pool().Exec(ctxTimeout(t, 30*time.Second), sql)
	return err
}

// pgCollector is a small stand-in for the collectors: it exports, from the real cluster, the
// pg_* names the API reads, so the API's handling of them is tested against real figures.
type pgCollector struct{ p *pgxpool.Pool }

func (c *pgCollector) Describe(chan<- *prometheus.Desc) {} // unchecked collector

func (c *pgCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g := func(name string, v float64, labels ...string) {
		var names, values []string
		for i := 0; i+1 < len(labels); i += 2 {
			names, values = append(names, labels[i]), append(values, labels[i+1])
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "test", names, nil), prometheus.GaugeValue, v, values...)
	}
	var version, short string
	if err := c.p.QueryRow(ctx, "SELECT version(), current_setting('server_version')").Scan(&version, &short); err != nil {
		g("pg_up", 0)
		return
	}
	g("pg_up", 1)
	g("pg_static", 1, "version", version, "short_version", short)
	rows, err := c.p.Query(ctx, `SELECT datid::text, datname, pg_database_size(datid)::float8, blks_hit::float8,
		blks_read::float8, xact_commit::float8, xact_rollback::float8, deadlocks::float8, temp_bytes::float8,
		temp_files::float8, numbackends::float8 FROM pg_stat_database WHERE datname IS NOT NULL`)
	if err == nil {
		for rows.Next() {
			var id, name string
			var size, hit, read, commit, rollback, dead, tb, tf, nb float64
			if rows.Scan(&id, &name, &size, &hit, &read, &commit, &rollback, &dead, &tb, &tf, &nb) != nil {
				continue
			}
			g("pg_database_size_bytes", size, "datname", name)
			for n, v := range map[string]float64{"blks_hit": hit, "blks_read": read, "xact_commit": commit,
				"xact_rollback": rollback, "deadlocks": dead, "temp_bytes": tb, "temp_files": tf, "numbackends": nb} {
				g("pg_stat_database_"+n, v, "datid", id, "datname", name)
			}
		}
		rows.Close()
	}
	rows, err = c.p.Query(ctx, `SELECT coalesce(datname, ''), coalesce(state, ''), count(*)::float8
		FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2`)
	if err == nil {
		for rows.Next() {
			var db, state string
			var n float64
			if rows.Scan(&db, &state, &n) == nil {
				g("pg_stat_activity_count", n, "datname", db, "state", state, "usename", "", "application_name", "")
			}
		}
		rows.Close()
	}
	var conns, maxConns float64
	if c.p.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::float8,
		current_setting('max_connections')::float8`).Scan(&conns, &maxConns) == nil {
		g("pg_server_connections", conns)
		g("pg_settings_max_connections", maxConns)
		g("pg_server_connection_utilization_ratio", conns/maxConns)
	}
	rows, err = c.p.Query(ctx, `SELECT s.queryid::text, d.datname, r.rolname, s.calls::float8,
		s.total_exec_time / 1000, s.rows::float8 FROM pg_stat_statements s
		JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid`)
	if err == nil {
		for rows.Next() {
			var id, db, user string
			var calls, secs, n float64
			if rows.Scan(&id, &db, &user, &calls, &secs, &n) == nil {
				l := []string{"user", user, "datname", db, "queryid", id}
				ch <- counter("pg_stat_statements_calls_total", calls, l)
				ch <- counter("pg_stat_statements_seconds_total", secs, l)
				ch <- counter("pg_stat_statements_rows_total", n, l)
			}
		}
		rows.Close()
	}
}

func counter(name string, v float64, l []string) prometheus.Metric {
	d := prometheus.NewDesc(name, "test", []string{l[0], l[2], l[4]}, nil)
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l[1], l[3], l[5])
}
