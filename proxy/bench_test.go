package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// BenchmarkPgbenchSelectOnly runs pgbench -S against PostgreSQL directly, through PgBouncer in
// session mode and through the proxy, with the same pool size, at 1, 8 and 32 clients, in one
// run. It reports transactions per second and median latency from pgbench's per-transaction log.
// A fourth target, bytecopy, is the least any Go relay does (a read/write copy loop both ways, no
// protocol, no pool): the difference between it and direct is the cost of the extra hop through
// Go's network poller, a reference point for the proxy. Each pgbench run lasts PGBENCH_SECONDS (default 10);
// use -benchtime 1x.
//
//	go test -run '^$' -bench PgbenchSelectOnly -benchtime 1x ./proxy/
func BenchmarkPgbenchSelectOnly(b *testing.B) {
	pgbench := benchTool(b, "pgbench")
	pgbouncer := benchTool(b, "pgbouncer")
	seconds := 10
	if v, err := strconv.Atoi(os.Getenv("PGBENCH_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	const poolSize = 32
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := cluster.Exec(ctx, "create database proxy_bench"); err != nil && sqlState(err) != "42P04" {
		b.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10"}
	if out, err := runToolB(ctx, env, "", pgbench, "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p",
		fmt.Sprint(cluster.Port()), "-U", "postgres", "proxy_bench"); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	h := newHarness(b, func(pc *pool.Config, _ *Config) {
		pc.DatabaseURL = cluster.URL("proxy_bench")
		pc.MaxConns, pc.MinConns = poolSize, poolSize
	})
	bouncerPort, bouncerPID := startPgBouncer(b, ctx, pgbouncer, poolSize)
	copyPort := startByteCopy(b, fmt.Sprintf("127.0.0.1:%d", cluster.Port()))

	// cpu returns the CPU time used so far by the process that serves the target; the proxy
	// runs in this test process.
	targets := []struct {
		name string
		port int
		cpu  func() time.Duration
	}{
		{"direct", cluster.Port(), nil},
		{"pgbouncer", bouncerPort, func() time.Duration { return procCPU(b, bouncerPID) }},
		{"pgsidecar", h.port, selfCPU},
		{"bytecopy", copyPort, selfCPU},
	}
	for _, clients := range []int{1, 8, 32} {
		for _, tg := range targets {
			b.Run(fmt.Sprintf("clients=%d/%s", clients, tg.name), func(b *testing.B) {
				for range b.N {
					var cpu0 time.Duration
					if tg.cpu != nil {
						cpu0 = tg.cpu()
					}
					tps, median := runPgbench(b, ctx, pgbench, env, tg.port, clients, seconds)
					b.ReportMetric(tps, "tps")
					b.ReportMetric(median.Seconds()*1000, "median_ms")
					if tg.cpu != nil {
						// CPU the pooler spent per transaction, in microseconds.
						b.ReportMetric(float64((tg.cpu()-cpu0).Microseconds())/(tps*float64(seconds)), "pooler_cpu_us/tx")
					}
				}
			})
		}
	}
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func runPgbench(b *testing.B, ctx context.Context, pgbench string, env []string, port, clients, seconds int) (float64, time.Duration) {
	dir, err := os.MkdirTemp("", "pgbench-log-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	args := []string{"-S", "-n", "-M", "simple", "-c", fmt.Sprint(clients), "-j", fmt.Sprint(min(clients, 2)),
		"-T", fmt.Sprint(seconds), "-l", "--log-prefix", filepath.Join(dir, "tx"),
		"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres", "proxy_bench"}
	out, err := runToolB(ctx, env, "", pgbench, args...)
	if err != nil || !strings.Contains(out, "number of failed transactions: 0 ") {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no tps in pgbench output:\n%s", out)
	}
	tps, _ := strconv.ParseFloat(m[1], 64)
	// Per-transaction log lines: client_id transaction_no time(us) script_no time_epoch time_us.
	var lat []int
	files, _ := filepath.Glob(filepath.Join(dir, "tx.*"))
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 3 {
				if us, err := strconv.Atoi(fields[2]); err == nil {
					lat = append(lat, us)
				}
			}
		}
		fh.Close()
	}
	if len(lat) == 0 {
		b.Fatal("empty pgbench transaction log")
	}
	sort.Ints(lat)
	return tps, time.Duration(lat[len(lat)/2]) * time.Microsecond
}

func benchTool(b *testing.B, name string) string {
	b.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if _, err := os.Stat("/usr/sbin/" + name); err == nil {
			return "/usr/sbin/" + name
		}
		b.Skipf("%s not installed; skipping", name)
	}
	return p
}

func runToolB(ctx context.Context, env []string, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// startPgBouncer runs PgBouncer in session mode in front of the test cluster with the given pool
// size. PgBouncer refuses to run as root, so as root it runs as the postgres user.
func startPgBouncer(b *testing.B, ctx context.Context, bin string, poolSize int) (int, int) {
	b.Helper()
	dir, err := os.MkdirTemp("", "pgbouncer-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	ini := fmt.Sprintf(`[databases]
proxy_bench = host=127.0.0.1 port=%d dbname=proxy_bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s/users.txt
pool_mode = session
default_pool_size = %d
min_pool_size = %d
max_client_conn = 200
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, cluster.Port(), port, dir, poolSize, poolSize, dir, dir)
	files := map[string]string{
		"pgbouncer.ini": ini,
		"users.txt":     fmt.Sprintf("\"postgres\" \"%s\"\n", pgtest.SuperuserPassword),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			b.Skip("running as root without a postgres user for PgBouncer")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "users.txt")} {
			_ = os.Chown(p, uid, gid)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	if !pgtest.WaitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
		b.Fatalf("pgbouncer did not start:\n%s", log)
	}
	_ = ctx
	return port, cmd.Process.Pid
}

// startByteCopy relays each connection on a loopback port to target with one plain copy loop
// per direction, and returns the port.
func startByteCopy(b *testing.B, target string) int {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	track := func(c net.Conn) {
		mu.Lock()
		open[c] = true
		mu.Unlock()
	}
	b.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(c)
			track(s)
			wg.Add(2)
			go func() { defer wg.Done(); copyPlain(s, c); _ = s.Close() }()
			go func() { defer wg.Done(); copyPlain(c, s); _ = c.Close() }()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// copyPlain copies with read and write calls, as the proxy does; io.Copy between two TCP
// connections would splice on Linux, a different system call pattern.
func copyPlain(dst, src net.Conn) {
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 32<<10))
}

// selfCPU is the user and system CPU time of this process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads another process's user and system CPU time from /proc (in clock ticks of 10 ms).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may contain spaces.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// BenchmarkRoundTrip measures one simple query round trip (select 1) from a pgconn client,
// directly and through the proxy; the difference is the latency the relay adds.
//
//	go test -run '^$' -bench RoundTrip -benchtime 20000x ./proxy/
func BenchmarkRoundTrip(b *testing.B) {
	h := newHarness(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, tg := range []struct{ name, url string }{{"direct", cluster.URL("")}, {"pgsidecar", h.superURL()}} {
		b.Run(tg.name, func(b *testing.B) {
			c, err := pgconn.Connect(ctx, tg.url)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Exec(ctx, "select 1").ReadAll(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
