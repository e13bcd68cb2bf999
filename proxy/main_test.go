package proxy

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgtest.Main(m, &cluster, pgtest.Options{MaxConnections: 150, CheckLeaks: true}))
}

// harness is a pool manager on the test cluster with a proxy in front of it, listening on a
// loopback port and a unix socket.
type harness struct {
	mgr  *pool.Manager
	srv  *Server
	reg  *prometheus.Registry
	log  *testutil.LogBuffer
	port int
	sock string // unix socket directory (libpq host=)
}

func newHarness(t testing.TB, tweak func(pc *pool.Config, c *Config)) *harness {
	t.Helper()
	pc := testutil.FastPool(t, pool.FromEnv, cluster.URL(""), strings.ReplaceAll(t.Name(), "/", "_"))
	pc.MinConns = 1
	dir, err := os.MkdirTemp("", "pgsidecar-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c := DefaultConfig()
	c.Listen = []string{"127.0.0.1:0"}
	// PROXY_TEST_POOL_MODE=transaction runs the tests written for session mode in transaction
	// mode, to find what breaks there (tests of session-only behaviour are expected to fail).
	if m := os.Getenv("PROXY_TEST_POOL_MODE"); m != "" {
		c.PoolMode = PoolMode(m)
	}
	if tweak != nil {
		tweak(&pc, &c)
	}
	h := &harness{reg: prometheus.NewRegistry(), log: &testutil.LogBuffer{}, sock: dir}
	logger := slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.mgr, err = pool.New(pc, pool.WithLogger(logger), pool.WithRegisterer(h.reg))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	t.Cleanup(h.mgr.Close)
	// Port 0 cannot name the unix socket, so pick the TCP port first.
	if c.Listen[0] == "127.0.0.1:0" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h.port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		c.Listen = []string{fmt.Sprintf("127.0.0.1:%d", h.port), filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", h.port))}
	}
	h.srv, err = New(h.mgr, c, WithLogger(logger), WithRegisterer(h.reg))
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	if err := h.srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = h.srv.Close() })
	return h
}

// url is a libpq URL through the proxy over TCP.
func (h *harness) url(user, password, params string) string {
	u := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=disable", user, password, h.port)
	if params != "" {
		u += "&" + params
	}
	return u
}

// superURL connects through the proxy as the DATABASE_URL user.
func (h *harness) superURL() string { return h.url("postgres", pgtest.SuperuserPassword, "") }

func (h *harness) connect(t testing.TB, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect through proxy: %v\nlogs:\n%s", err, h.log.String())
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// metric returns the sum of a family's samples whose labels include want (histograms: count).
func (h *harness) metric(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	return testutil.MetricValue(t, h.reg, name, want)
}

// waitIdle waits until no client session holds a server connection.
func (h *harness) waitIdle(t testing.TB) {
	t.Helper()
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.sessionsEnded(t) }) {
		t.Fatalf("sessions did not end: used=%d\nlogs:\n%s", h.mgr.Stats().UsedConns, h.log.String())
	}
}

// sessionsEnded reports whether no client session is left holding a server connection.
func (h *harness) sessionsEnded(t testing.TB) bool {
	if h.srv.cfg.PoolMode == PoolTransaction {
		// The proxy keeps its server connections, borrowed from the pool, when no client
		// holds them.
		return h.metric(t, "pgsidecar_proxy_client_connections", nil) == 0 &&
			h.metric(t, "pgsidecar_proxy_server_connections", map[string]string{"state": "active"}) == 0
	}
	return h.metric(t, "pgsidecar_proxy_client_connections", nil) == 0 && h.mgr.Stats().UsedConns == 0
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
