package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// reloadSidecar posts /-/reload and returns the status and body.
func reloadSidecar(t *testing.T, addr string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second}
	r, err := c.Post("http://"+addr+"/-/reload", "text/plain", nil)
	if err != nil {
		t.Fatalf("POST /-/reload: %v", err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// sample returns the line of an unlabelled series in the sidecar's /metrics.
func sample(t *testing.T, addr, name string) string {
	t.Helper()
	_, body := get(t, "http://"+addr+"/metrics")
	for line := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return ""
}

// writeCertFiles writes a new self-signed certificate and key and returns the certificate PEM.
func writeCertFiles(t *testing.T, certFile, keyFile string) []byte {
	t.Helper()
	cert, key := selfSignedCert(t)
	must(t, os.WriteFile(certFile, cert, 0o600))
	must(t, os.WriteFile(keyFile, key, 0o600))
	return cert
}

// presented is the certificate (PEM) a proxy session got.
func presented(t *testing.T, c *pgx.Conn) []byte {
	t.Helper()
	tc, ok := c.PgConn().Conn().(*tls.Conn)
	if !ok {
		t.Fatal("the session is not TLS")
	}
	return tc.ConnectionState().PeerCertificates[0].Raw
}

// sameCert reports whether der is the certificate of certPEM.
func sameCert(t *testing.T, der []byte, certPEM []byte) bool {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return bytes.Equal(der, b.Bytes)
}

func refused(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err == nil {
		_ = c.Close(ctx)
		t.Fatalf("login succeeded: %s", url)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("login: %v, want 28P01", err)
	}
}

func connectProxy(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestReloadRotatesCertificateAndUsersFile is the outcome of a rotation: the TLS certificate
// (as cert-manager renews it) and the users file change, SIGHUP's twin POST /-/reload is sent;
// new logins see the new ones and a running session is untouched.
func TestReloadRotatesCertificateAndUsersFile(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	users, certFile, keyFile := filepath.Join(dir, "users.txt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	must(t, os.WriteFile(users, []byte(`"app" "app-pw-before"`+"\n"), 0o600))
	oldCert := writeCertFiles(t, certFile, keyFile)
	proxyAddr := testutil.FreeAddr(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--proxy.listen-address="+proxyAddr,
		"--proxy.users-file="+users, "--proxy.tls-cert-file="+certFile, "--proxy.tls-key-file="+keyFile,
		"--db.min-connections=1", "--db.max-connections=4")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := func(pw, sslmode string) string {
		return fmt.Sprintf("postgres://app:%s@%s/postgres?sslmode=%s", pw, proxyAddr, sslmode)
	}
	running := connectProxy(t, ctx, url("app-pw-before", "require"))
	if !sameCert(t, presented(t, running), oldCert) {
		t.Fatal("the first session did not get the first certificate")
	}

	must(t, os.WriteFile(users, []byte(`"app" "app-pw-after"`+"\n"), 0o600))
	newCert := writeCertFiles(t, certFile, keyFile)
	if code, body := reloadSidecar(t, addr); code != 200 {
		t.Fatalf("reload: %d %s\nlogs:\n%s", code, body, logs.String())
	}
	fresh := connectProxy(t, ctx, url("app-pw-after", "require"))
	if !sameCert(t, presented(t, fresh), newCert) {
		t.Fatal("a login after the reload did not get the new certificate")
	}
	refused(t, ctx, url("app-pw-before", "disable"))
	var n int
	if err := running.QueryRow(ctx, "select 1").Scan(&n); err != nil {
		t.Fatalf("the session running across the reload: %v", err)
	}
	if got := sample(t, addr, "pgsidecar_config_last_reload_successful"); got != "pgsidecar_config_last_reload_successful 1" {
		t.Fatalf("%s after a good reload", got)
	}
	if strings.Contains(logs.String(), "Server password changed") {
		t.Fatalf("a reload with the same DATABASE_URL took the password as changed:\n%s", logs.String())
	}
}

// TestReloadWithBrokenCertificate: a certificate that does not parse fails the reload, which
// says so (500, the log naming the flag, the reload metric at 0) and keeps everything: logins
// still get the old certificate. Fixed, the next reload takes it.
func TestReloadWithBrokenCertificate(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	oldCert := writeCertFiles(t, certFile, keyFile)
	proxyAddr := testutil.FreeAddr(t)
	addr, logs, _ := startSidecar(t, "--database-url="+cluster.URL(""), "--proxy.listen-address="+proxyAddr,
		"--proxy.tls-cert-file="+certFile, "--proxy.tls-key-file="+keyFile, "--db.min-connections=1", "--db.max-connections=4")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=require", pgtest.SuperuserPassword, proxyAddr)

	key, err := os.ReadFile(keyFile)
	must(t, err)
	must(t, os.WriteFile(certFile, oldCert[:len(oldCert)/2], 0o600)) // cut off half-way through a copy
	code, body := reloadSidecar(t, addr)
	if code != 500 || !strings.Contains(body, "--proxy.tls-cert-file") {
		t.Fatalf("reload with a broken certificate: %d %s", code, body)
	}
	if !strings.Contains(logs.String(), "Reload failed, the previous configuration stays") || !strings.Contains(logs.String(), "--proxy.tls-cert-file") {
		t.Fatalf("the log does not say why:\n%s", logs.String())
	}
	assertNoSecret(t, "the log", strings.ReplaceAll(logs.String(), string(key), "KEY"))
	if strings.Contains(logs.String(), string(key[30:60])) {
		t.Fatal("the log shows the key")
	}
	if got := sample(t, addr, "pgsidecar_config_last_reload_successful"); got != "pgsidecar_config_last_reload_successful 0" {
		t.Fatalf("%s after a failed reload", got)
	}
	c := connectProxy(t, ctx, url)
	if !sameCert(t, presented(t, c), oldCert) {
		t.Fatal("a login after the failed reload did not get the old certificate")
	}

	newCert := writeCertFiles(t, certFile, keyFile)
	if code, body := reloadSidecar(t, addr); code != 200 {
		t.Fatalf("reload with the certificate fixed: %d %s", code, body)
	}
	if !sameCert(t, presented(t, connectProxy(t, ctx, url)), newCert) {
		t.Fatal("the fixed certificate was not taken")
	}
	if got := sample(t, addr, "pgsidecar_config_last_reload_successful"); got != "pgsidecar_config_last_reload_successful 1" {
		t.Fatalf("%s after a good reload", got)
	}
}

// TestPasswordRotatedAtServerThenReconnect rotates the password of DATABASE_URL's user at the
// server and in DATABASE_URL_FILE, and reloads. Server connections opened after the reload log
// in with the new password; clients log in with the new one, or the old one during the rotation
// window (each such login logged, without the password); a session running across it goes on.
func TestPasswordRotatedAtServerThenReconnect(t *testing.T) {
	clearPoolEnv(t)
	const role = "rotated_sidecar"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must(t, cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %[1]s; CREATE ROLE %[1]s LOGIN PASSWORD 'rotation-pw-one'", role)))
	t.Cleanup(func() {
		_ = cluster.Exec(context.Background(), fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'", role))
		_ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
	})
	urlFile := filepath.Join(t.TempDir(), "database-url")
	must(t, os.WriteFile(urlFile, []byte(cluster.URLFor(role, "rotation-pw-one", "postgres")+"\n"), 0o600))
	proxyAddr := testutil.FreeAddr(t)
	addr, logs, _ := startSidecar(t, "--database-url-file="+urlFile, "--proxy.listen-address="+proxyAddr,
		"--db.min-connections=1", "--db.max-connections=6", "--db.application-name=rotated-sidecar")
	proxyURL := func(pw string) string {
		return fmt.Sprintf("postgres://%s:%s@%s/postgres?sslmode=disable", role, pw, proxyAddr)
	}
	running := connectProxy(t, ctx, proxyURL("rotation-pw-one"))
	// Sessions that come and go leave idle server connections with the old password behind.
	for i := range 3 {
		c, err := pgx.Connect(ctx, proxyURL("rotation-pw-one"))
		must(t, err)
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("session %d before the reload: %v", i, err)
		}
		must(t, c.Close(ctx))
	}

	must(t, cluster.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'rotation-pw-two'"))
	must(t, os.WriteFile(urlFile, []byte(cluster.URLFor(role, "rotation-pw-two", "postgres")+"\n"), 0o600))
	reloadedAt := time.Now() // the server runs on this host, on the same clock
	if code, body := reloadSidecar(t, addr); code != 200 {
		t.Fatalf("reload: %d %s\nlogs:\n%s", code, body, logs.String())
	}
	// The reload reconnects: every server connection from before it is gone but the one the
	// running session holds (session mode replaces that one at its logout).
	var held int
	must(t, running.QueryRow(ctx, "select pg_backend_pid()").Scan(&held))
	deadline := time.Now().Add(10 * time.Second)
	for {
		before, err := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where usename = $1 and application_name = 'rotated-sidecar' and backend_start < $2 and pid <> $3", role, reloadedAt, held)
		must(t, err)
		if before == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server connections from before the reload are still open", before)
		}
		time.Sleep(50 * time.Millisecond)
	}
	openServerConnectionsAfterReload(t, ctx, proxyURL("rotation-pw-two"))
	opened, err := cluster.QueryInt(ctx, "select count(*) from pg_stat_activity where usename = $1 and application_name = 'rotated-sidecar' and backend_start > $2", role, reloadedAt)
	must(t, err)
	if opened == 0 {
		t.Fatal("no server connection was opened after the reload")
	}

	old := connectProxy(t, ctx, proxyURL("rotation-pw-one"))
	if _, err := old.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("a login with the previous password in the rotation window: %v", err)
	}
	if !strings.Contains(logs.String(), "logged in with the previous server password") {
		t.Fatalf("the login with the previous password was not logged:\n%s", logs.String())
	}
	refused(t, ctx, proxyURL("rotation-pw-three"))
	if _, err := running.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("the session running across the reload: %v", err)
	}
	for _, pw := range []string{"rotation-pw-one", "rotation-pw-two"} {
		if strings.Contains(logs.String(), pw) {
			t.Fatalf("a password in the log:\n%s", logs.String())
		}
	}
}

// openServerConnectionsAfterReload makes the sidecar use server connections it opens after a
// reload: sessions at once, more than the pool had open (session mode gives each its own). A
// reconnect, which replaces every server connection, proves the same for all of them.
func openServerConnectionsAfterReload(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	for i := range 4 {
		c := connectProxy(t, ctx, url)
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("session %d after the reload: %v", i, err)
		}
	}
}

// TestDatabaseURLFileConflicts: DATABASE_URL_FILE is one more way to give the connection string;
// with another one as well, the sidecar refuses to start.
func TestDatabaseURLFileConflicts(t *testing.T) {
	clearPoolEnv(t)
	clearUpstreamEnv(t)
	f := filepath.Join(t.TempDir(), "url")
	must(t, os.WriteFile(f, []byte(cluster.URL("")), 0o600))
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--database-url-file=" + f, "--database-url=" + cluster.URL("")}, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "DATABASE_URL_FILE") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	empty := filepath.Join(t.TempDir(), "empty")
	must(t, os.WriteFile(empty, nil, 0o600))
	stderr.Reset()
	if code := run(context.Background(), []string{"--database-url-file=" + empty}, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "is empty") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// TestSIGHUPReloads: the signal systemd's ExecReload sends reloads as POST /-/reload does, and a
// second one after it as well (the process neither ends nor stops listening for it).
func TestSIGHUPReloads(t *testing.T) {
	clearPoolEnv(t)
	dir := t.TempDir()
	users := filepath.Join(dir, "users.txt")
	must(t, os.WriteFile(users, []byte(`"app" "hup-pw-one"`+"\n"), 0o600))
	addr, proxyAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	out, err := os.Create(filepath.Join(dir, "log"))
	must(t, err)
	defer out.Close()
	p := startProcess(t, out, "--web.listen-address="+addr, "--database-url="+cluster.URL(""),
		"--proxy.listen-address="+proxyAddr, "--proxy.users-file="+users, "--db.min-connections=1", "--db.metrics-log-interval=0")
	logs := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	if !pgtest.WaitFor(20*time.Second, func() bool { return strings.Contains(logs(), "Proxy listening") }) {
		t.Fatalf("never listened:\n%s", logs())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := func(pw string) string {
		return fmt.Sprintf("postgres://app:%s@%s/postgres?sslmode=disable", pw, proxyAddr)
	}
	for i, pw := range []string{"hup-pw-two", "hup-pw-three"} {
		must(t, os.WriteFile(users, []byte(`"app" "`+pw+`"`+"\n"), 0o600))
		must(t, p.cmd.Process.Signal(syscall.SIGHUP))
		if !pgtest.WaitFor(10*time.Second, func() bool { return strings.Count(logs(), "msg=Reloaded") == i+1 }) {
			t.Fatalf("SIGHUP %d did not reload:\n%s", i+1, logs())
		}
		c := connectProxy(t, ctx, url(pw))
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if !p.running() {
		t.Fatal("the process ended")
	}
}
