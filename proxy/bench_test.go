package proxy

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	bouncerPort, bouncerPID := startPgBouncer(b, pgbouncer, cluster.Port(), "session", poolSize, 200, "")
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

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \((without initial connection time|including reconnection times)\)`)

var connTimeRE = regexp.MustCompile(`initial connection time = ([0-9.]+) ms`)

func runPgbench(b *testing.B, ctx context.Context, pgbench string, env []string, port, clients, seconds int) (float64, time.Duration) {
	r, err := pgbenchRun(ctx, pgbench, env, port, pgbenchOpts{clients: clients, seconds: seconds, protocol: "simple"})
	if err != nil {
		b.Fatal(err)
	}
	return r.tps, r.median
}

// pgbenchOpts is one pgbench run of the select-only script against database proxy_bench.
type pgbenchOpts struct {
	clients, seconds int
	protocol         string // -M: simple, extended or prepared
	connectEach      bool   // -C: a new connection for every transaction
}

// pgbenchResult is what one pgbench run measured. Latencies come from its per-transaction log
// (-l), which holds every transaction's latency and completion time, so the percentiles are exact.
type pgbenchResult struct {
	tps         float64
	median, p99 time.Duration
	connectTime time.Duration // pgbench's initial connection time (all clients logging in)
	// ends holds every transaction's completion time, sorted, for counting the transactions in
	// a window of the run.
	ends []time.Time
	out  string
}

func pgbenchRun(ctx context.Context, pgbench string, env []string, port int, o pgbenchOpts) (pgbenchResult, error) {
	dir, err := os.MkdirTemp("", "pgbench-log-")
	if err != nil {
		return pgbenchResult{}, err
	}
	defer os.RemoveAll(dir)
	// -T counts the clients' logins too, which take seconds for a thousand clients: give them
	// time on top, so that every run has about the same measured part.
	seconds := o.seconds
	if !o.connectEach {
		seconds += o.clients / 50
	}
	args := []string{"-S", "-n", "-M", o.protocol, "-c", fmt.Sprint(o.clients), "-j", fmt.Sprint(min(o.clients, 2)),
		"-T", fmt.Sprint(seconds), "-l", "--log-prefix", filepath.Join(dir, "tx"),
		"-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "postgres", "proxy_bench"}
	if o.connectEach {
		args = append(args, "-C")
	}
	// A pooler that stops answering a client would keep pgbench waiting for ever: give up a
	// minute after the run should have ended.
	runCtx, cancel := context.WithTimeout(ctx, time.Duration(seconds+60)*time.Second)
	defer cancel()
	out, err := runToolB(runCtx, env, "", pgbench, args...)
	if runCtx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("no answer: pgbench still running a minute after its -T %d s", seconds)
	}
	r := pgbenchResult{out: out}
	if err != nil || !strings.Contains(out, "number of failed transactions: 0 ") {
		return r, fmt.Errorf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := tpsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no tps in pgbench output:\n%s", out)
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	if m := connTimeRE.FindStringSubmatch(out); m != nil {
		ms, _ := strconv.ParseFloat(m[1], 64)
		r.connectTime = time.Duration(ms * float64(time.Millisecond))
	}
	// Per-transaction log lines: client_id transaction_no time(us) script_no time_epoch time_us.
	var lat []int
	files, _ := filepath.Glob(filepath.Join(dir, "tx.*"))
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return r, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 6 {
				continue
			}
			us, err1 := strconv.Atoi(fields[2])
			sec, err2 := strconv.ParseInt(fields[4], 10, 64)
			usec, err3 := strconv.ParseInt(fields[5], 10, 64)
			if err1 == nil && err2 == nil && err3 == nil {
				lat = append(lat, us)
				r.ends = append(r.ends, time.Unix(sec, usec*1000))
			}
		}
		fh.Close()
	}
	if len(lat) == 0 {
		return r, fmt.Errorf("empty pgbench transaction log:\n%s", out)
	}
	sort.Ints(lat)
	sort.Slice(r.ends, func(i, j int) bool { return r.ends[i].Before(r.ends[j]) })
	r.median = time.Duration(lat[len(lat)/2]) * time.Microsecond
	r.p99 = time.Duration(lat[min(len(lat)-1, len(lat)*99/100)]) * time.Microsecond
	return r, nil
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

// startPgBouncer runs PgBouncer in front of the PostgreSQL server on pgPort in the given pool
// mode (session or transaction), with poolSize server connections opened up front and at most
// maxClients client connections, and returns its port and process id. Clients log in with
// secret (a SCRAM verifier; empty for the plain password), PgBouncer itself with the password.
// PgBouncer refuses to run as root, so as root it runs as the postgres user.
func startPgBouncer(b *testing.B, bin string, pgPort int, mode string, poolSize, maxClients int, secret string) (int, int) {
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
proxy_bench = host=127.0.0.1 port=%d dbname=proxy_bench user=postgres password=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s/users.txt
pool_mode = %s
default_pool_size = %d
min_pool_size = %d
max_client_conn = %d
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, pgPort, pgtest.SuperuserPassword, port, dir, mode, poolSize, poolSize, maxClients, dir, dir)
	files := map[string]string{
		"pgbouncer.ini": ini,
		"users.txt":     fmt.Sprintf("\"postgres\" \"%s\"\n", cmp.Or(secret, pgtest.SuperuserPassword)),
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

// procCPU reads another process's user and system CPU time from /proc.
func procCPU(b *testing.B, pid int) time.Duration {
	cpu, err := readProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return cpu
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

// startEpollCopy relays each connection on a loopback port to target as startByteCopy does, but
// from one goroutine on a locked OS thread that waits in level-triggered epoll_wait for all
// connections, as PgBouncer's event loop does: no goroutine per direction, and no read that ends
// in EAGAIN before a goroutine may park. It is a reference point for what such an I/O model saves;
// a write that cannot complete at once is retried after a short sleep, which is enough for small
// messages.
func startEpollCopy(b *testing.B, target string) int {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu    sync.Mutex
		peer  = map[int]int{}           // fd → the fd it relays to
		files = map[int][]*os.File{}    // keeps each pair's descriptors open
		conns = map[net.Conn]struct{}{} // the originals, closed at the end
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	closePair := func(fd int) {
		mu.Lock()
		defer mu.Unlock()
		p, ok := peer[fd]
		if !ok {
			return
		}
		for _, x := range []int{fd, p} {
			_ = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, x, nil)
			delete(peer, x)
			for _, f := range files[x] {
				_ = f.Close()
			}
			delete(files, x)
		}
	}
	wg.Add(2)
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
			cf, err1 := c.(*net.TCPConn).File()
			sf, err2 := s.(*net.TCPConn).File()
			if err1 != nil || err2 != nil {
				_ = c.Close()
				_ = s.Close()
				continue
			}
			cfd, sfd := int(cf.Fd()), int(sf.Fd())
			_ = syscall.SetNonblock(cfd, true)
			_ = syscall.SetNonblock(sfd, true)
			mu.Lock()
			conns[c], conns[s] = struct{}{}, struct{}{}
			peer[cfd], peer[sfd] = sfd, cfd
			files[cfd], files[sfd] = []*os.File{cf}, []*os.File{sf}
			mu.Unlock()
			for _, fd := range []int{cfd, sfd} {
				_ = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
			}
		}
	}()
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		events := make([]syscall.EpollEvent, 128)
		buf := make([]byte, 32<<10)
		for !stop.Load() {
			// A blocking system call: Go hands this thread's P to another thread after 20 µs
			// and takes one back on return (a raw system call would keep it, but would also hold
			// up every garbage collection's stop-the-world until it returned).
			n, err := syscall.EpollWait(epfd, events, 100)
			if err != nil && err != syscall.EINTR {
				return
			}
			for _, ev := range events[:max(n, 0)] {
				fd := int(ev.Fd)
				mu.Lock()
				to, ok := peer[fd]
				mu.Unlock()
				if !ok {
					continue
				}
				r, err := syscall.Read(fd, buf)
				if err == syscall.EAGAIN {
					continue
				}
				if r <= 0 || !writeAll(to, buf[:r]) {
					closePair(fd)
				}
			}
		}
	}()
	b.Cleanup(func() {
		_ = l.Close()
		stop.Store(true)
		wg.Wait()
		mu.Lock()
		fds := make([]int, 0, len(peer))
		for fd := range peer {
			fds = append(fds, fd)
		}
		mu.Unlock()
		for _, fd := range fds {
			closePair(fd)
		}
		for c := range conns {
			_ = c.Close()
		}
		_ = syscall.Close(epfd)
	})
	return l.Addr().(*net.TCPAddr).Port
}

// writeAll writes b to the non-blocking descriptor fd, retrying while its send buffer is full.
func writeAll(fd int, b []byte) bool {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EAGAIN {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		b = b[n:]
	}
	return true
}
