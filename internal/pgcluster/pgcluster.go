// Package pgcluster starts throwaway PostgreSQL clusters: a real server on a free loopback port
// in a temporary directory, with pg_stat_statements preloaded, and the controls fault tests need
// (stop fast or immediately, start again on the same port, restart, run SQL as superuser).
//
// PostgreSQL refuses to run as root; when the process is root the server tools run as the
// "postgres" user. Set TEST_DATABASE_URL to use an existing server instead.
//
// It does not import testing, so that programs such as the demo can start a cluster; tests use
// it through internal/pgtest.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// SuperuserPassword is the password of the cluster's superuser "postgres". Tests that check secret
// handling use passwords of their own.
const SuperuserPassword = "pgtest-superuser-pw"

// Options tune a cluster. The zero value is a sensible test server.
type Options struct {
	// MaxConnections sets max_connections (default 100).
	MaxConnections int
	// Settings are extra postgresql.conf lines, e.g. "log_min_duration_statement = 0".
	Settings []string
}

// Cluster is a running throwaway PostgreSQL server, or an external one from TEST_DATABASE_URL.
type Cluster struct {
	external string // TEST_DATABASE_URL, when set
	dir      string // data directory parent; holds data/, the socket and the log
	binDir   string
	port     int
	cred     *syscall.Credential
	watchdog *os.Process

	mu      sync.Mutex
	running bool
}

// Start initialises and starts a cluster, or wraps TEST_DATABASE_URL when set.
func Start(opts Options) (*Cluster, error) {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return &Cluster{external: u, running: true}, nil
	}
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgcluster: running as root needs a 'postgres' user to run the server (apt-get install postgresql creates it): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	c.dir, err = os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	if err := c.chown(c.dir); err != nil {
		c.removeDir()
		return nil, err
	}
	if err := c.initdb(opts); err != nil {
		c.removeDir()
		return nil, err
	}
	// The port is picked by binding :0 and releasing it; another process may take it in between,
	// so a failed start tries a few more ports.
	for attempt := 0; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			c.removeDir()
			return nil, err
		}
		if err = c.writePort(); err != nil {
			c.removeDir()
			return nil, err
		}
		if err = c.StartAgain(); err == nil {
			break
		}
		if attempt == 3 {
			c.removeDir()
			return nil, err
		}
	}
	c.startWatchdog()
	return c, nil
}

// External reports whether the cluster is a server given by TEST_DATABASE_URL.
func (c *Cluster) External() bool { return c.external != "" }

// Port is the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Dir is the cluster's directory (data/, the unix socket and server.log live there).
func (c *Cluster) Dir() string { return c.dir }

// URL returns a connection URL for the superuser and the given database ("" for postgres).
func (c *Cluster) URL(database string) string {
	if c.external != "" {
		if database == "" {
			return c.external
		}
		u, err := url.Parse(c.external)
		if err != nil {
			return c.external
		}
		u.Path = "/" + database
		return u.String()
	}
	if database == "" {
		database = "postgres"
	}
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", SuperuserPassword, c.port, database)
}

// URLFor returns a connection URL for another role and password, with the password escaped.
func (c *Cluster) URLFor(role, password, database string) string {
	u, _ := url.Parse(c.URL(database))
	u.User = url.UserPassword(role, password)
	return u.String()
}

// Exec runs SQL as superuser on the postgres database with a fresh connection.
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, c.URL(""))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// QueryInt runs a query returning one integer, as superuser.
func (c *Cluster) QueryInt(ctx context.Context, sql string, args ...any) (int64, error) {
	conn, err := pgx.Connect(ctx, c.URL(""))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

// Stop stops the server. mode is "fast" (clean shutdown) or "immediate" (like a crash: no
// checkpoint, clients see their connections drop).
func (c *Cluster) Stop(mode string) error {
	if c.External() {
		return errors.New("pgcluster: cannot stop an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if err := c.pgctl("stop", "-w", "-t", "60", "-m", mode); err != nil {
		return err
	}
	c.running = false
	return nil
}

// StartAgain starts a stopped server on the same port and directory.
func (c *Cluster) StartAgain() error {
	if c.External() {
		return errors.New("pgcluster: cannot start an external server")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	if err := c.pgctl("start", "-w", "-t", "60", "-l", filepath.Join(c.dir, "server.log")); err != nil {
		return fmt.Errorf("%w\n%s", err, c.logTail())
	}
	c.running = true
	return nil
}

// Restart stops the server in the given mode and starts it again.
func (c *Cluster) Restart(mode string) error {
	if err := c.Stop(mode); err != nil {
		return err
	}
	return c.StartAgain()
}

// Close stops the server and removes its directory. It is safe to call more than once.
func (c *Cluster) Close() {
	if c.External() || c.dir == "" {
		return
	}
	_ = c.Stop("immediate")
	c.removeDir()
	if c.watchdog != nil {
		_ = c.watchdog.Kill()
		_, _ = c.watchdog.Wait()
	}
}

func (c *Cluster) removeDir() { _ = os.RemoveAll(c.dir) }

func (c *Cluster) initdb(opts Options) error {
	pwfile := filepath.Join(c.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(SuperuserPassword+"\n"), 0o600); err != nil {
		return err
	}
	if err := c.chown(pwfile); err != nil {
		return err
	}
	data := filepath.Join(c.dir, "data")
	if out, err := c.command(filepath.Join(c.binDir, "initdb"), "-D", data, "-U", "postgres",
		"--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
		"--encoding=UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		return fmt.Errorf("pgcluster: initdb: %w\n%s", err, out)
	}
	maxConns := opts.MaxConnections
	if maxConns == 0 {
		maxConns = 100
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("unix_socket_directories = '%s'", c.dir),
		fmt.Sprintf("max_connections = %d", maxConns),
		"shared_preload_libraries = 'pg_stat_statements'",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"shared_buffers = 32MB",
		"log_min_messages = warning",
		"log_line_prefix = '%m [%p] '",
	}
	conf = append(conf, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("\n" + strings.Join(conf, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *Cluster) writePort() error {
	p := filepath.Join(c.dir, "data", "postgresql.auto.conf")
	return os.WriteFile(p, []byte(fmt.Sprintf("port = %d\n", c.port)), 0o600)
}

func (c *Cluster) pgctl(args ...string) error {
	full := append([]string{"-D", filepath.Join(c.dir, "data")}, args...)
	cmd := c.command(filepath.Join(c.binDir, "pg_ctl"), full...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgcluster: pg_ctl %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

func (c *Cluster) logTail() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// startWatchdog leaves a small process behind that stops the server and removes its directory if
// the test binary dies without running its cleanup (a panic, a timeout, a kill).
func (c *Cluster) startWatchdog() {
	script := fmt.Sprintf(`tail --pid=%d -f /dev/null 2>/dev/null || while kill -0 %d 2>/dev/null; do sleep 1; done; `+
		`%s -D %s stop -m immediate >/dev/null 2>&1; rm -rf %s`,
		os.Getpid(), os.Getpid(), filepath.Join(c.binDir, "pg_ctl"), filepath.Join(c.dir, "data"), c.dir)
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c.cred != nil {
		// Runs as root so it may remove the directory; pg_ctl stop as root is refused, so use the
		// same credentials for the whole script instead.
		cmd.SysProcAttr.Credential = c.cred
	}
	if err := cmd.Start(); err == nil {
		c.watchdog = cmd.Process
	}
}

func findBinDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) > 0 {
		// Highest version last in lexical order is fine for 13..17.
		return filepath.Dir(matches[len(matches)-1]), nil
	}
	return "", errors.New("pgcluster: pg_ctl not found on PATH or under /usr/lib/postgresql/*/bin; install PostgreSQL (Debian: apt-get install postgresql) or set TEST_DATABASE_URL")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Freeze stops the server with SIGSTOP, the postmaster first (so that it starts no new
// process) and then every process it started, as a hung host or a paused VM would: connections
// stay open and new ones are accepted by the kernel, but nothing answers. thaw sends SIGCONT to
// the same processes; call it before Stop or Close. Linux only (it reads /proc).
func (c *Cluster) Freeze() (thaw func() error, err error) {
	if c.External() {
		return nil, errors.New("pgcluster: cannot freeze an external server")
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "data", "postmaster.pid"))
	if err != nil {
		return nil, err
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return nil, fmt.Errorf("pgcluster: postmaster.pid: %w", err)
	}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		return nil, err
	}
	pids := []int{pm}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pm) {
			_ = syscall.Kill(pid, syscall.SIGSTOP)
			pids = append(pids, pid)
		}
	}
	return func() error {
		var errs []error
		for i := len(pids) - 1; i >= 0; i-- {
			if err := syscall.Kill(pids[i], syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}, nil
}
