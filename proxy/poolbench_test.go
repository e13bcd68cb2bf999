package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// The benchmarks in this file compare the pgsidecar binary, run as its own process, with
// PgBouncer on a PostgreSQL server of their own (max_connections = 100), so that the CPU time and
// memory of both poolers can be read from /proc alike. Runs are interleaved: every round runs
// each target once per setting, the order of the targets alternating from round to round. Each
// prints a summary table at the end (medians over the rounds). Settings, from the environment:
//
//	PROXYBENCH_ROUNDS      rounds (default 3)
//	PROXYBENCH_SECONDS     seconds per pgbench run (default 10)
//	PROXYBENCH_CLIENTS     client counts, comma-separated (defaults per benchmark)
//	PGSIDECAR_BIN          a built pgsidecar binary (default: built from this module)
//	PROXYBENCH_SIDECAR_ENV extra environment for pgsidecar, space-separated (GOMAXPROCS=1 ...)
//	PROXYBENCH_LEVER_BIN, PROXYBENCH_LEVER_ENV
//	                       a second pgsidecar ("lever") run alongside the first, from another
//	                       binary and/or with other environment (the session and transaction
//	                       mode benchmarks)
//	PROXYBENCH_RELAYS      add the reference relays bytecopy and epollcopy (in the test process)
//	                       to the session mode benchmark
//	PROXYBENCH_PERF        count system calls and context switches per transaction (perf stat)
//	PROXYBENCH_IDLE_CLIENTS, PROXYBENCH_IDLE_SECONDS
//	                       idle clients, and how long they idle before RSS is read (1000, 3 s)
//
// They need pgbench and pgbouncer and skip without them. scripts/proxy-bench.sh raises the open
// file limit and runs them all.

// benchBed is a PostgreSQL server with the pgbench tables, and the tools and binary to run.
type benchBed struct {
	ctx       context.Context
	pg        *pgtest.Cluster
	pgbench   string
	pgbouncer string
	bin       string
	env       []string // for pgbench
	// verifier is the server's SCRAM verifier of postgres, and usersFile a PgBouncer auth_file
	// with it: both poolers check client logins against it, so neither derives a key (4096
	// rounds of PBKDF2) per login, as PgBouncer would from a plain password.
	verifier, usersFile string
	seconds             int
	rounds              int
}

// newBenchBed starts a server with the given max_connections and the pgbench tables at scale 1.
func newBenchBed(b *testing.B, maxConns int) *benchBed {
	b.Helper()
	bed := &benchBed{pgbench: benchTool(b, "pgbench"), pgbouncer: benchTool(b, "pgbouncer"),
		seconds: envInt("PROXYBENCH_SECONDS", 10), rounds: envInt("PROXYBENCH_ROUNDS", 3)}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 4096 {
		b.Skipf("open file limit %d is too low for 1000 clients; raise it (ulimit -n 8192) or use scripts/proxy-bench.sh", lim.Cur)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	b.Cleanup(cancel)
	bed.ctx = ctx
	pg, err := pgtest.Start(pgtest.Options{MaxConnections: maxConns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pg.Close)
	bed.pg = pg
	if err := pg.Exec(ctx, "create database proxy_bench"); err != nil {
		b.Fatal(err)
	}
	bed.env = []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30"}
	if out, err := runToolB(ctx, bed.env, "", bed.pgbench, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p",
		fmt.Sprint(pg.Port()), "-U", "postgres", "proxy_bench"); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	if err := func() error {
		c, err := pgx.Connect(ctx, pg.URL(""))
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		return c.QueryRow(ctx, "select rolpassword from pg_authid where rolname = 'postgres'").Scan(&bed.verifier)
	}(); err != nil {
		b.Fatal(err)
	}
	bed.usersFile = filepath.Join(b.TempDir(), "users.txt")
	if err := os.WriteFile(bed.usersFile, []byte(fmt.Sprintf("\"postgres\" \"%s\"\n", bed.verifier)), 0o600); err != nil {
		b.Fatal(err)
	}
	bed.bin = os.Getenv("PGSIDECAR_BIN")
	if bed.bin == "" {
		bed.bin = buildSidecar(b)
	}
	return bed
}

// buildSidecar builds the pgsidecar binary of this module into a temporary directory.
func buildSidecar(b *testing.B) string {
	b.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.Skip("go not on PATH to build pgsidecar; set PGSIDECAR_BIN")
	}
	dir := b.TempDir()
	bin := filepath.Join(dir, "pgsidecar")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// benchTarget is a pooler (or the server itself) that pgbench connects to.
type benchTarget struct {
	name string
	port int
	pid  int // the process whose CPU and memory are measured; 0 for none
}

// errNoPoolMode is returned when the binary does not know --proxy.pool-mode.
var errNoPoolMode = errors.New("this pgsidecar has no --proxy.pool-mode")

// startSidecar runs the pgsidecar binary with the proxy in the given pool mode in front of the
// bed's server, with poolSize server connections opened up front. env adds to its environment.
func (bed *benchBed) startSidecar(b *testing.B, name, bin, mode string, poolSize int, env []string) (benchTarget, error) {
	b.Helper()
	dir := b.TempDir()
	port, webPort := freeTCPPort(b), freeTCPPort(b)
	args := []string{
		"--database-url=" + bed.pg.URL("proxy_bench"),
		fmt.Sprintf("--db.max-connections=%d", poolSize), fmt.Sprintf("--db.min-connections=%d", poolSize),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", webPort),
		fmt.Sprintf("--proxy.listen-address=127.0.0.1:%d", port),
		"--proxy.max-client-connections=2000",
		"--proxy.users-file=" + bed.usersFile,
		"--queries.file=",
		"--log.level=warn",
	}
	if mode != "session" {
		args = append(args, "--proxy.pool-mode="+mode)
	}
	logPath := filepath.Join(dir, "pgsidecar.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	// Only the settings given here: none of the caller's DATABASE_URL, DB_* or PROXY_*.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logFile.Close(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			if strings.Contains(string(log), "pool-mode") {
				return benchTarget{}, fmt.Errorf("%w: %s", errNoPoolMode, strings.TrimSpace(string(log)))
			}
			b.Fatalf("pgsidecar exited at start:\n%s", log)
		default:
		}
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			_ = c.Close()
			return benchTarget{name: name, port: port, pid: cmd.Process.Pid}, nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			b.Fatalf("pgsidecar did not listen within 30s:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (bed *benchBed) startBouncer(b *testing.B, mode string, poolSize int) benchTarget {
	port, pid := startPgBouncer(b, bed.pgbouncer, bed.pg.Port(), mode, poolSize, 2000, bed.verifier)
	return benchTarget{name: "pgbouncer", port: port, pid: pid}
}

// measured is one pgbench run through a target.
type measured struct {
	pgbenchResult
	cpuPerTx    time.Duration // pooler CPU time per transaction in the steady part of the run
	serverConns int           // most connections from the target to the server seen during the run
	load        float64       // one-minute load average when the run started
	// System calls and context switches of the target per transaction over the whole run
	// (logins included), with PROXYBENCH_PERF set.
	syscallsPerTx, switchesPerTx float64
}

// perfStat counts the system calls and context switches of process pid with perf stat until
// the returned function is called, which returns the counts by event name.
func perfStat(b *testing.B, pid int) func() map[string]float64 {
	b.Helper()
	perf, err := exec.LookPath("perf")
	if err != nil {
		b.Skip("PROXYBENCH_PERF needs perf")
	}
	out := filepath.Join(b.TempDir(), "perf.csv")
	cmd := exec.Command(perf, "stat", "-x,", "-o", out, "-e", "raw_syscalls:sys_enter,context-switches", "-p", fmt.Sprint(pid))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return func() map[string]float64 {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		raw, _ := os.ReadFile(out)
		c := map[string]float64{}
		for _, line := range strings.Split(string(raw), "\n") {
			// count,unit,event,...
			if f := strings.Split(line, ","); len(f) > 2 {
				if v, err := strconv.ParseFloat(f[0], 64); err == nil {
					c[f[2]] = v
				}
			}
		}
		return c
	}
}

// measure runs pgbench through tg. CPU per transaction is the target's user and system CPU time
// (from /proc) over the middle of the run, from 1 s after the first transaction completed to
// 0.5 s before the last, divided by the transactions completed in that window: it leaves out
// the clients' logins, which with 1000 clients would otherwise weigh on it.
func (bed *benchBed) measure(b *testing.B, tg benchTarget, o pgbenchOpts) (measured, error) {
	type sample struct {
		at  time.Time
		cpu time.Duration
	}
	var (
		mu      sync.Mutex
		samples []sample
		conns   int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			if tg.pid != 0 {
				if cpu, err := readProcCPU(tg.pid); err == nil {
					mu.Lock()
					samples = append(samples, sample{time.Now(), cpu})
					mu.Unlock()
				}
			}
			if tg.pid != 0 && n%4 == 2 {
				if c, err := serverConnCount(tg.pid, bed.pg.Port()); err == nil {
					mu.Lock()
					conns = max(conns, c)
					mu.Unlock()
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	m := measured{load: loadAverage()}
	var counts func() map[string]float64
	if os.Getenv("PROXYBENCH_PERF") != "" && tg.pid != 0 {
		counts = perfStat(b, tg.pid)
	}
	r, err := pgbenchRun(bed.ctx, bed.pgbench, bed.env, tg.port, o)
	close(stop)
	wg.Wait()
	m.pgbenchResult, m.serverConns = r, conns
	if counts != nil && len(r.ends) > 0 {
		c := counts()
		m.syscallsPerTx = c["raw_syscalls:sys_enter"] / float64(len(r.ends))
		m.switchesPerTx = c["context-switches"] / float64(len(r.ends))
	}
	if err != nil || tg.pid == 0 {
		return m, err
	}
	from, to := r.ends[0].Add(time.Second), r.ends[len(r.ends)-1].Add(-500*time.Millisecond)
	i := slices.IndexFunc(samples, func(s sample) bool { return !s.at.Before(from) })
	j := len(samples) - 1
	for j >= 0 && samples[j].at.After(to) {
		j--
	}
	if i < 0 || j <= i {
		return m, nil
	}
	lo, _ := slices.BinarySearchFunc(r.ends, samples[i].at, func(a, t time.Time) int { return a.Compare(t) })
	hi, _ := slices.BinarySearchFunc(r.ends, samples[j].at, func(a, t time.Time) int { return a.Compare(t) })
	if hi > lo {
		m.cpuPerTx = (samples[j].cpu - samples[i].cpu) / time.Duration(hi-lo)
	}
	return m, nil
}

// BenchmarkProxyTransactionPool compares pgsidecar's transaction pooling with PgBouncer's, both
// with 20 server connections: pgbench -S with the extended and simple protocols at 100, 500 and
// 1000 clients, then -M prepared through each (PgBouncer 1.18 cannot serve it). Without a
// pgsidecar that has --proxy.pool-mode it measures PgBouncer alone.
//
//	go test -run '^$' -bench ProxyTransactionPool -benchtime 1x -timeout 60m ./proxy/
func BenchmarkProxyTransactionPool(b *testing.B) {
	bed := newBenchBed(b, 100)
	const poolSize = 20
	targets := []benchTarget{bed.startBouncer(b, "transaction", poolSize)}
	if sc, err := bed.startSidecar(b, "pgsidecar", bed.bin, "transaction", poolSize, sidecarEnv("PROXYBENCH_SIDECAR_ENV")); err == nil {
		targets = append(targets, sc)
	} else {
		b.Logf("pgsidecar left out: %v", err)
	}
	if lv := os.Getenv("PROXYBENCH_LEVER_BIN"); lv != "" {
		// Another build of pgsidecar, interleaved with this one (a regression check).
		sc, err := bed.startSidecar(b, "lever", lv, "transaction", poolSize, sidecarEnv("PROXYBENCH_LEVER_ENV"))
		if err != nil {
			b.Fatal(err)
		}
		targets = append(targets, sc)
	}
	tab := newBenchTable()
	clientCounts := envInts("PROXYBENCH_CLIENTS", []int{100, 500, 1000})
	for round := 1; round <= bed.rounds; round++ {
		for _, clients := range clientCounts {
			for _, proto := range []string{"extended", "simple"} {
				for _, tg := range roundOrder(targets, round) {
					b.Run(fmt.Sprintf("round=%d/clients=%d/M=%s/%s", round, clients, proto, tg.name), func(b *testing.B) {
						m, err := bed.measure(b, tg, pgbenchOpts{clients: clients, seconds: bed.seconds, protocol: proto})
						if err != nil {
							b.Fatal(err)
						}
						m.report(b)
						tab.add(fmt.Sprintf("-M %s, %d clients", proto, clients), tg.name, round, m)
					})
				}
			}
		}
	}
	for _, tg := range targets {
		b.Run("prepared/"+tg.name, func(b *testing.B) {
			m, err := bed.measure(b, tg, pgbenchOpts{clients: 100, seconds: min(bed.seconds, 5), protocol: "prepared"})
			if err != nil {
				b.Logf("pgbench -M prepared -c 100 through %s failed: %s", tg.name, firstError(m.out, err))
				return
			}
			m.report(b)
			tab.add("-M prepared, 100 clients", tg.name, 1, m)
		})
	}
	printSummary(b, tab.markdown("pgsidecar", "pgbouncer"))
	if len(targets) > 2 {
		printSummary(b, tab.markdown("lever", "pgbouncer"))
		printSummary(b, tab.markdown("lever", "pgsidecar"))
	}
}

// BenchmarkProxySessionPool is the session-mode comparison with the pgsidecar binary in its own
// process: pgbench -S -M simple at 1, 8 and 32 clients directly, through PgBouncer in session
// mode and through pgsidecar, with 32 server connections each. Added latency is a target's
// median minus the direct median of the same round.
//
//	go test -run '^$' -bench ProxySessionPool -benchtime 1x -timeout 30m ./proxy/
func BenchmarkProxySessionPool(b *testing.B) {
	// Room for 32 direct clients next to the pools of PgBouncer, pgsidecar and the lever.
	bed := newBenchBed(b, 200)
	const poolSize = 32
	sc, err := bed.startSidecar(b, "pgsidecar", bed.bin, "session", poolSize, sidecarEnv("PROXYBENCH_SIDECAR_ENV"))
	if err != nil {
		b.Fatal(err)
	}
	targets := []benchTarget{{name: "direct", port: bed.pg.Port()}, bed.startBouncer(b, "session", poolSize), sc}
	if os.Getenv("PROXYBENCH_LEVER_BIN") != "" || os.Getenv("PROXYBENCH_LEVER_ENV") != "" {
		bin := bed.bin
		if v := os.Getenv("PROXYBENCH_LEVER_BIN"); v != "" {
			bin = v
		}
		lv, err := bed.startSidecar(b, "lever", bin, "session", poolSize, sidecarEnv("PROXYBENCH_LEVER_ENV"))
		if err != nil {
			b.Fatal(err)
		}
		targets = append(targets, lv)
	}
	if os.Getenv("PROXYBENCH_RELAYS") != "" {
		// Reference relays in this process: a copy loop per direction on Go's poller, and
		// one epoll loop for all connections.
		target := fmt.Sprintf("127.0.0.1:%d", bed.pg.Port())
		targets = append(targets, benchTarget{name: "bytecopy", port: startByteCopy(b, target), pid: os.Getpid()},
			benchTarget{name: "epollcopy", port: startEpollCopy(b, target), pid: os.Getpid()})
	}
	tab := newBenchTable()
	for round := 1; round <= bed.rounds; round++ {
		for _, clients := range envInts("PROXYBENCH_CLIENTS", []int{1, 8, 32}) {
			for _, tg := range roundOrder(targets, round) {
				b.Run(fmt.Sprintf("round=%d/clients=%d/%s", round, clients, tg.name), func(b *testing.B) {
					m, err := bed.measure(b, tg, pgbenchOpts{clients: clients, seconds: bed.seconds, protocol: "simple"})
					if err != nil {
						b.Fatal(err)
					}
					m.report(b)
					tab.add(fmt.Sprintf("%d clients", clients), tg.name, round, m)
				})
			}
		}
	}
	printSummary(b, tab.markdown("pgsidecar", "pgbouncer"))
	for _, tg := range targets[3:] {
		printSummary(b, tab.markdown(tg.name, "pgsidecar"))
		printSummary(b, tab.markdown(tg.name, "pgbouncer"))
	}
}

// BenchmarkProxyConnectionChurn opens a new connection for every transaction (pgbench -C -S,
// 8 clients, scram-sha-256 for both) through pgsidecar and PgBouncer in transaction mode, or in
// session mode when pgsidecar has no transaction mode or PROXYBENCH_MODE=session. Its TPS is
// connections per second.
//
//	go test -run '^$' -bench ProxyConnectionChurn -benchtime 1x ./proxy/
func BenchmarkProxyConnectionChurn(b *testing.B) {
	bed := newBenchBed(b, 100)
	const poolSize = 20
	mode := "transaction"
	if os.Getenv("PROXYBENCH_MODE") == "session" {
		mode = "session"
	}
	sc, err := bed.startSidecar(b, "pgsidecar", bed.bin, mode, poolSize, sidecarEnv("PROXYBENCH_SIDECAR_ENV"))
	if errors.Is(err, errNoPoolMode) {
		b.Logf("pgsidecar has no transaction mode; both in session mode")
		mode = "session"
		sc, err = bed.startSidecar(b, "pgsidecar", bed.bin, mode, poolSize, sidecarEnv("PROXYBENCH_SIDECAR_ENV"))
	}
	if err != nil {
		b.Fatal(err)
	}
	targets := []benchTarget{bed.startBouncer(b, mode, poolSize), sc}
	tab := newBenchTable()
	for round := 1; round <= bed.rounds; round++ {
		for _, tg := range roundOrder(targets, round) {
			b.Run(fmt.Sprintf("round=%d/%s/%s", round, mode, tg.name), func(b *testing.B) {
				m, err := bed.measure(b, tg, pgbenchOpts{clients: 8, seconds: bed.seconds, protocol: "simple", connectEach: true})
				if err != nil {
					b.Fatal(err)
				}
				m.report(b)
				tab.add("-C, 8 clients, "+mode+" mode", tg.name, round, m)
			})
		}
	}
	printSummary(b, tab.markdown("pgsidecar", "pgbouncer"))
}

// BenchmarkProxyIdleClients measures the memory 1000 idle clients cost each pooler in
// transaction mode: a fresh pooler process per round, warmed with a short pgbench run, then
// 1000 clients connect, run one query each and stay connected. Per client is the growth of the
// process's resident set (VmRSS) divided by the clients.
//
//	go test -run '^$' -bench ProxyIdleClients -benchtime 1x ./proxy/
func BenchmarkProxyIdleClients(b *testing.B) {
	bed := newBenchBed(b, 100)
	const poolSize = 20
	clients := envInt("PROXYBENCH_IDLE_CLIENTS", 1000)
	// Go's runtime collects garbage at least every 2 minutes and returns freed pages in the
	// background: a wait past that reads what idle clients keep, not what their logins left.
	idleWait := time.Duration(envInt("PROXYBENCH_IDLE_SECONDS", 3)) * time.Second
	names := []string{"pgbouncer", "pgsidecar"}
	type row struct{ base, idle, perClient []float64 }
	rows := map[string]*row{}
	for round := 1; round <= bed.rounds; round++ {
		order := names
		if round%2 == 0 {
			order = []string{names[1], names[0]}
		}
		for _, name := range order {
			b.Run(fmt.Sprintf("round=%d/%s", round, name), func(b *testing.B) {
				var tg benchTarget
				if name == "pgbouncer" {
					tg = bed.startBouncer(b, "transaction", poolSize)
				} else {
					var err error
					tg, err = bed.startSidecar(b, name, bed.bin, "transaction", poolSize, sidecarEnv("PROXYBENCH_SIDECAR_ENV"))
					if err != nil {
						b.Skip(err)
					}
				}
				if _, err := pgbenchRun(bed.ctx, bed.pgbench, bed.env, tg.port, pgbenchOpts{clients: poolSize, seconds: 2, protocol: "simple"}); err != nil {
					b.Fatal(err)
				}
				time.Sleep(time.Second)
				base := readRSS(b, tg.pid)
				conns := connectIdle(b, bed.ctx, tg.port, clients)
				time.Sleep(idleWait)
				idle := readRSS(b, tg.pid)
				for _, c := range conns {
					_ = c.Close(bed.ctx)
				}
				per := float64(idle-base) / float64(clients)
				b.ReportMetric(float64(base), "base_KiB")
				b.ReportMetric(float64(idle), "idle_KiB")
				b.ReportMetric(per, "KiB/client")
				if rows[name] == nil {
					rows[name] = &row{}
				}
				r := rows[name]
				r.base, r.idle, r.perClient = append(r.base, float64(base)), append(r.idle, float64(idle)), append(r.perClient, per)
			})
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| pooler | RSS before (KiB) | RSS with %d idle clients (KiB) | RSS per idle client (KiB), median [range] |\n|---|---:|---:|---:|\n", clients)
	for _, name := range names {
		if r := rows[name]; r != nil {
			fmt.Fprintf(&sb, "| %s | %.0f | %.0f | %.1f [%.1f–%.1f] |\n", name, median(r.base), median(r.idle), median(r.perClient), slices.Min(r.perClient), slices.Max(r.perClient))
		}
	}
	printSummary(b, sb.String())
}

// connectIdle opens n client connections to port, 16 at a time, and runs one query on each.
func connectIdle(b *testing.B, ctx context.Context, port, n int) []*pgconn.PgConn {
	b.Helper()
	url := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/proxy_bench?sslmode=disable&connect_timeout=30", pgtest.SuperuserPassword, port)
	conns := make([]*pgconn.PgConn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := pgconn.Connect(ctx, url)
				if err == nil {
					_, err = c.Exec(ctx, "select 1").ReadAll()
				}
				conns[i], errs[i] = c, err
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(context.Background())
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("connecting %d clients: %v", n, err)
	}
	return conns
}

func (m measured) report(b *testing.B) {
	b.ReportMetric(m.tps, "tps")
	b.ReportMetric(float64(m.median.Microseconds())/1000, "median_ms")
	b.ReportMetric(float64(m.p99.Microseconds())/1000, "p99_ms")
	if m.cpuPerTx > 0 {
		b.ReportMetric(float64(m.cpuPerTx.Nanoseconds())/1000, "cpu_us/tx")
	}
	b.ReportMetric(float64(m.serverConns), "server_conns")
	b.ReportMetric(float64(m.connectTime.Microseconds())/1000, "connect_ms")
	b.ReportMetric(m.load, "load1")
	if m.syscallsPerTx > 0 {
		b.ReportMetric(m.syscallsPerTx, "syscalls/tx")
		b.ReportMetric(m.switchesPerTx, "ctxsw/tx")
	}
}

// benchTable collects measurements by row (a setting) and target, over rounds.
type benchTable struct {
	mu   sync.Mutex
	rows []string
	m    map[string]map[string][]measured // row, target → one per round
	by   map[string]map[string]map[int]measured
}

func newBenchTable() *benchTable {
	return &benchTable{m: map[string]map[string][]measured{}, by: map[string]map[string]map[int]measured{}}
}

func (t *benchTable) add(row, target string, round int, m measured) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[row] == nil {
		t.rows = append(t.rows, row)
		t.m[row] = map[string][]measured{}
		t.by[row] = map[string]map[int]measured{}
	}
	t.m[row][target] = append(t.m[row][target], m)
	if t.by[row][target] == nil {
		t.by[row][target] = map[int]measured{}
	}
	t.by[row][target][round] = m
}

// markdown renders the medians over the rounds of every target, with a's TPS over b's per round
// (same round, so the same machine load) and a's added median latency over direct when present.
func (t *benchTable) markdown(a, b string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var sb strings.Builder
	sb.WriteString("| setting | target | rounds | TPS | median | p99 | CPU/tx | server conns | load |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range t.rows {
		for _, name := range []string{"direct", "pgbouncer", "pgsidecar", "lever", "bytecopy", "epollcopy"} {
			ms := t.m[row][name]
			if len(ms) == 0 {
				continue
			}
			get := func(f func(measured) float64) float64 {
				var v []float64
				for _, m := range ms {
					v = append(v, f(m))
				}
				return median(v)
			}
			cpu := "–"
			if c := get(func(m measured) float64 { return float64(m.cpuPerTx.Nanoseconds()) / 1000 }); c > 0 {
				cpu = fmt.Sprintf("%.1f µs", c)
			}
			if sc := get(func(m measured) float64 { return m.syscallsPerTx }); sc > 0 {
				cpu += fmt.Sprintf(" (%.1f syscalls, %.1f switches)", sc, get(func(m measured) float64 { return m.switchesPerTx }))
			}
			var loads []float64
			for _, m := range ms {
				loads = append(loads, m.load)
			}
			fmt.Fprintf(&sb, "| %s | %s | %d | %.0f | %.3f ms | %.3f ms | %s | %.0f | %.1f–%.1f |\n", row, name, len(ms),
				get(func(m measured) float64 { return m.tps }),
				get(func(m measured) float64 { return float64(m.median.Microseconds()) / 1000 }),
				get(func(m measured) float64 { return float64(m.p99.Microseconds()) / 1000 }),
				cpu, get(func(m measured) float64 { return float64(m.serverConns) }), slices.Min(loads), slices.Max(loads))
		}
	}
	fmt.Fprintf(&sb, "\n| setting | %s/%s TPS per round | p99 %s/%s per round | CPU/tx %s/%s per round | added median latency %s / %s per round |\n|---|---|---|---|---|\n", a, b, a, b, a, b, a, b)
	for _, row := range t.rows {
		var tps, p99, cpu, added []string
		for round := 1; ; round++ {
			ma, oka := t.by[row][a][round]
			mb, okb := t.by[row][b][round]
			if !oka && !okb {
				break
			}
			if !oka || !okb {
				continue
			}
			tps = append(tps, fmt.Sprintf("%.2f", ma.tps/mb.tps))
			p99 = append(p99, fmt.Sprintf("%.2f", float64(ma.p99)/float64(mb.p99)))
			if ma.cpuPerTx > 0 && mb.cpuPerTx > 0 {
				cpu = append(cpu, fmt.Sprintf("%.2f", float64(ma.cpuPerTx)/float64(mb.cpuPerTx)))
			}
			if md, ok := t.by[row]["direct"][round]; ok {
				added = append(added, fmt.Sprintf("%+.3f / %+.3f ms", float64((ma.median-md.median).Microseconds())/1000, float64((mb.median-md.median).Microseconds())/1000))
			}
		}
		if len(tps) > 0 {
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", row, strings.Join(tps, ", "), strings.Join(p99, ", "), strings.Join(cpu, ", "), strings.Join(added, ", "))
		}
	}
	return sb.String()
}

// roundOrder returns the targets in order in odd rounds and reversed in even ones.
func roundOrder(targets []benchTarget, round int) []benchTarget {
	if round%2 == 1 {
		return targets
	}
	r := slices.Clone(targets)
	slices.Reverse(r)
	return r
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// firstError is the first line of pgbench's output that reports an error, or err.
func firstError(out string, err error) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error") || strings.Contains(line, "ERROR") {
			return strings.TrimSpace(line)
		}
	}
	return err.Error()
}

// readProcCPU is a process's user and system CPU time from /proc (in clock ticks of 10 ms).
func readProcCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may contain spaces.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// serverConnCount counts the established TCP connections that process pid holds to the server's
// port on loopback, from its socket descriptors and /proc/net/tcp.
func serverConnCount(pid, serverPort int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return 0, err
	}
	remote := fmt.Sprintf(":%04X", serverPort)
	n := 0
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[2], remote) && f[3] == "01" && inodes[f[9]] {
			n++
		}
	}
	return n, nil
}

// printSummary writes a summary table to standard output, where go test passes it through
// (a benchmark with sub-benchmarks does not print its own log).
func printSummary(b *testing.B, table string) {
	fmt.Printf("\n%s summary:\n%s\n", b.Name(), strings.TrimSpace(table))
}

// readRSS is a process's resident set size in KiB (VmRSS).
func readRSS(b *testing.B, pid int) int {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	b.Fatalf("no VmRSS for process %d", pid)
	return 0
}

func loadAverage() float64 {
	raw, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func freeTCPPort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envInts(name string, def []int) []int {
	var r []int
	for _, s := range strings.Split(os.Getenv(name), ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && v > 0 {
			r = append(r, v)
		}
	}
	if len(r) == 0 {
		return def
	}
	return r
}

func sidecarEnv(name string) []string { return strings.Fields(os.Getenv(name)) }
