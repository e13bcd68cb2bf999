// Command demo is what `make demo` runs: a throwaway PostgreSQL (or DATABASE_URL), the pgsidecar
// binary in front of it, and point-of-sale traffic, until Ctrl-C; then it cleans everything up.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/examples/pos"
	"github.com/pgsidecar/pgsidecar/internal/pgcluster"
	"github.com/pgsidecar/pgsidecar/internal/redact"
	"github.com/pgsidecar/pgsidecar/pool"
)

func main() {
	bin := flag.String("sidecar", "bin/pgsidecar", "path of the pgsidecar binary")
	listen := flag.String("listen", "127.0.0.1:9188", "address of the sidecar's web server")
	appMetrics := flag.String("app-metrics", "127.0.0.1:9189", "address where the demo app serves its own library metrics")
	proxyAddr := flag.String("proxy", "127.0.0.1:6432", "address of the sidecar's PostgreSQL proxy (half the traffic goes through it)")
	workers := flag.Int("workers", 4, "concurrent clients of the traffic generator")
	duration := flag.Duration("duration", 0, "stop after this long of traffic (0: until Ctrl-C)")
	quiet := flag.Bool("quiet", false, "do not echo the sidecar's log")
	flag.Parse()
	if err := run(*bin, *listen, *appMetrics, *proxyAddr, *workers, *duration, *quiet); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(bin, listen, appMetrics, proxyAddr string, workers int, duration time.Duration, quiet bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		say("starting a throwaway PostgreSQL cluster ...")
		c, err := pgcluster.Start(pgcluster.Options{})
		if err != nil {
			return err
		}
		defer func() {
			c.Close()
			say("throwaway cluster stopped and removed")
		}()
		if err := c.Exec(ctx, "CREATE DATABASE pos"); err != nil {
			return err
		}
		dsn = c.URL("pos")
		// The cluster preloads pg_stat_statements; the extension gives the statements collector,
		// /api/database/performance and the PostgreSQL dashboard their top statements.
		if err := createExtension(ctx, dsn, "pg_stat_statements"); err != nil {
			say("top statements stay empty: %v", err)
		}
		say("PostgreSQL is up on 127.0.0.1:%d (data in %s)", c.Port(), c.Dir())
	} else {
		say("using DATABASE_URL %s", redact.DSN(dsn))
	}

	// The proxy checks its clients against the password of DATABASE_URL; a database reached
	// without one (trust or peer authentication) gets all the traffic directly.
	if pc, err := pgx.ParseConfig(dsn); err == nil && pc.Password == "" {
		say("DATABASE_URL has no password for the proxy to check clients against: no proxy, all traffic goes direct")
		proxyAddr = ""
	}
	sidecar, err := startSidecar(ctx, bin, listen, proxyAddr, dsn, quiet)
	if err != nil {
		return err
	}
	defer sidecar.stop()

	// The app: the point-of-sale services on the pool library, with its own metrics endpoint.
	reg := prometheus.NewRegistry()
	cfg := pool.DefaultConfig()
	cfg.DatabaseURL, cfg.Name, cfg.ApplicationName = dsn, "pos-app", "pos-app"
	cfg.MaxConns, cfg.MinConns = 8, 2
	cfg.RetryDelay = 20 * time.Millisecond
	cfg.MetricsLogInterval = 0
	app, err := pool.New(cfg, pool.WithRegisterer(reg), pool.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return err
	}
	defer app.Close()
	appSrv := &http.Server{Addr: appMetrics, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = appSrv.ListenAndServe() }()
	defer appSrv.Close()

	store := pos.NewStore(app)

	// The same app again, connected through the sidecar's proxy as an app in any language would
	// be: its queries show up in the sidecar's own metrics, /status and /api/database/*.
	proxiedStore := store
	if proxyAddr != "" {
		pcfg := cfg
		pcfg.DatabaseURL, pcfg.Name, pcfg.ApplicationName = viaProxy(dsn, proxyAddr), "pos-app-proxied", "pos-app-proxied"
		proxied, err := pool.New(pcfg, pool.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			return err
		}
		defer proxied.Close()
		proxiedStore = pos.NewStore(proxied)
	}

	setup, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := store.Migrate(setup); err != nil {
		return fmt.Errorf("creating the POS schema: %w", err)
	}
	if err := store.Seed(setup, 50, 20); err != nil {
		return fmt.Errorf("seeding: %w", err)
	}

	base := "http://" + listen
	proxyLine := "postgres://...@" + proxyAddr + "/...               the PostgreSQL proxy (same user and password as the database)"
	if proxyAddr == "" {
		proxyLine = "(no PostgreSQL proxy: DATABASE_URL has no password)"
	}
	fmt.Printf(`
pgsidecar demo is running. Look at:
  %[1]s/                            landing page
  %[1]s/metrics                     Prometheus metrics (pgsidecar_*, pg_*)
  %[1]s/status                      live status page
  %[1]s/api/database/metrics        pool metrics (JSON)
  %[1]s/api/database/health         health (JSON)
  %[1]s/api/database/performance    latency, errors, slow queries (JSON)
  http://%[2]s/metrics           the demo app's own library metrics (pool="pos-app")
  %[4]s
Traffic: %[3]d POS clients, half through the proxy if there is one (sales, reports, price updates, with unique
violations, serialization conflicts and a slow report now and then). Press Ctrl-C to stop.

`, base, appMetrics, workers, proxyLine)

	if duration > 0 { // traffic time: setup does not count
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	done := make(chan *pos.TrafficStats, 2)
	go func() { done <- pos.RunTraffic(ctx, store, pos.TrafficOptions{Workers: max(workers/2, 1)}) }()
	go func() {
		done <- pos.RunTraffic(ctx, proxiedStore, pos.TrafficOptions{Workers: max(workers-workers/2, 1)})
	}()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case st := <-done:
			other := <-done
			say("stopping: %d operations, %d failed on purpose or by conflict",
				st.Operations.Load()+other.Operations.Load(), st.Failures.Load()+other.Failures.Load())
			return nil
		case err := <-sidecar.exited:
			return fmt.Errorf("pgsidecar exited early: %v", err)
		case <-tick.C:
			s := app.Stats()
			say("app: %d queries, %.1f%% errors, p95 %s, %d slow, %d retries; sidecar %s", s.Queries.Count,
				s.Queries.ErrorRate*100, s.Queries.P95.Round(time.Microsecond), s.SlowQueries, s.Retries, probe(base))
		}
	}
}

// viaProxy points a connection string at the proxy, keeping user, password and database.
func viaProxy(dsn, proxyAddr string) string {
	host, port, _ := net.SplitHostPort(proxyAddr)
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		u.Host = proxyAddr
		q := u.Query()
		q.Set("sslmode", "disable")
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " host=" + host + " port=" + port + " sslmode=disable"
}

type sidecarProc struct {
	cmd    *exec.Cmd
	exited chan error
}

func startSidecar(ctx context.Context, bin, listen, proxyAddr, dsn string, quiet bool) (*sidecarProc, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s not found: run `make build` first (make demo does): %w", bin, err)
	}
	args := []string{"--web.listen-address=" + listen, "--db.metrics-log-interval=30s", "--db.min-connections=2", "--collector.statements"}
	if proxyAddr != "" {
		args = append(args, "--proxy.listen-address="+proxyAddr)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn)
	// Its own process group: Ctrl-C in the terminal reaches the demo, which stops the traffic
	// first and then the sidecar, instead of the sidecar vanishing under running traffic.
	cmd.SysProcAttr = sidecarProcAttr()
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if !quiet {
				fmt.Fprintln(os.Stderr, "[pgsidecar] "+sc.Text())
			}
		}
	}()
	p := &sidecarProc{cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	say("started %s (pid %d), waiting for it to listen on %s ...", bin, cmd.Process.Pid, listen)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
			c.Close()
			return p, nil
		}
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("pgsidecar exited: %v", err)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	p.stop()
	return nil, errors.New("pgsidecar did not start listening within 30s")
}

// stop sends SIGTERM and waits for a clean exit (SIGKILL after 15 s).
func (p *sidecarProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		say("pgsidecar stopped")
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// probe reads the sidecar's health gauge from /metrics.
func probe(base string) string {
	c := http.Client{Timeout: 3 * time.Second}
	r, err := c.Get(base + "/metrics")
	if err != nil {
		return "unreachable"
	}
	defer r.Body.Close()
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "pgsidecar_health_check_up{") {
			if strings.HasSuffix(line, " 1") {
				return "healthy"
			}
			return "UNHEALTHY"
		}
	}
	return "answering"
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
}

func createExtension(ctx context.Context, dsn, name string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS "+pgx.Identifier{name}.Sanitize())
	return err
}
