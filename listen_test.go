package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestSystemdSocketActivation: with --web.systemd-socket the binary serves on the socket it
// inherits as systemd passes it (file descriptor 3, LISTEN_FDS and LISTEN_PID naming it), and
// not on --web.listen-address.
func TestSystemdSocketActivation(t *testing.T) {
	bin := sidecarBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	f, err := l.(*net.TCPListener).File()
	must(t, err)
	addr := l.Addr().String()
	unused := testutil.FreeAddr(t)
	// LISTEN_PID must be the pid of the process that reads it: sh execs the binary in its place.
	cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"`, bin,
		"--web.systemd-socket", "--web.listen-address="+unused, "--db.metrics-log-interval=0")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+cluster.URL(""))
	cmd.ExtraFiles = []*os.File{f}
	var out testutil.LogBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	// Only the child holds the socket now: an answer on it comes from the child.
	_ = f.Close()
	_ = l.Close()
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		r, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK
	}) {
		t.Fatalf("no /metrics on the passed socket %s; output:\n%s", addr, out.String())
	}
	if c, err := net.DialTimeout("tcp", unused, time.Second); err == nil {
		c.Close()
		t.Errorf("also listening on --web.listen-address %s", unused)
	}
}

// TestVsockListenAddress: a vsock://:PORT address listens on a VM socket beside a TCP one (the
// port is then taken). A request over it needs a vsock transport between two machines, which a
// test cannot count on.
func TestVsockListenAddress(t *testing.T) {
	probe, err := vsock.Listen(0, nil)
	if err != nil {
		t.Skipf("no vsock on this machine: %v", err)
	}
	port := probe.Addr().(*vsock.Addr).Port
	_ = probe.Close()
	clearPoolEnv(t)
	_, logs, stop := startSidecar(t, "--database-url="+cluster.URL(""), "--web.listen-address=vsock://:"+strconv.FormatUint(uint64(port), 10))
	if l, err := vsock.Listen(port, nil); err == nil {
		l.Close()
		t.Errorf("vsock port %d is free while the sidecar runs:\n%s", port, logs.String())
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, logs.String())
	}
}
