package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
)

// writeCert writes a fresh self-signed certificate and its key as PEM files, and returns the
// certificate's DER to recognise it by.
func writeCert(t *testing.T, certFile, keyFile string) []byte {
	t.Helper()
	c := selfSigned(t)
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c.Certificate[0]
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// peerCert is the certificate the proxy presented to c.
func peerCert(t *testing.T, c *pgx.Conn) []byte {
	t.Helper()
	tc, ok := c.PgConn().Conn().(*tls.Conn)
	if !ok {
		t.Fatal("the connection is not TLS")
	}
	return tc.ConnectionState().PeerCertificates[0].Raw
}

// loginFails checks that a login is refused with 28P01.
func loginFails(t *testing.T, ctx context.Context, url string) {
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

// pausedLogin starts a login over a connection that stops before the client's last SCRAM
// message (the proof) until resume is called: a login in progress across a reload.
type pausedLogin struct {
	paused chan struct{} // closed when the client is about to send its proof
	resume chan struct{}
	done   chan error
	conn   *pgx.Conn
}

type pausingConn struct {
	net.Conn
	l     *pausedLogin
	mu    sync.Mutex
	sasls int
}

func (c *pausingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if len(b) > 0 && b[0] == 'p' {
		c.sasls++
		if c.sasls == 2 { // SASLInitialResponse, then SASLResponse with the proof
			close(c.l.paused)
			<-c.l.resume
		}
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func startPausedLogin(t *testing.T, ctx context.Context, url string) *pausedLogin {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	l := &pausedLogin{paused: make(chan struct{}), resume: make(chan struct{}), done: make(chan error, 1)}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &pausingConn{Conn: c, l: l}, nil
	}
	go func() {
		c, err := pgx.ConnectConfig(ctx, cfg)
		l.conn = c
		l.done <- err
	}()
	select {
	case <-l.paused:
	case err := <-l.done:
		t.Fatalf("the login ended before its proof: %v", err)
	case <-ctx.Done():
		t.Fatal("the login never reached its proof")
	}
	t.Cleanup(func() {
		if l.conn != nil {
			_ = l.conn.Close(context.Background())
		}
	})
	return l
}

// finish lets the login send its proof and returns how the login ended.
func (l *pausedLogin) finish() error {
	close(l.resume)
	return <-l.done
}

// TestReloadRotatesUsersFileAndCertificate rotates the users file and the TLS certificate and
// reloads: new logins see the new ones, a session that was running and a login that was half
// way through are untouched.
func TestReloadRotatesUsersFileAndCertificate(t *testing.T) {
	dir := t.TempDir()
	users, certFile, keyFile := filepath.Join(dir, "users.txt"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, users, `"postgres" "old-proxy-pw"`+"\n")
	oldCert := writeCert(t, certFile, keyFile)
	h := newHarness(t, func(pc *pool.Config, c *Config) {
		pc.MaxConns = 4
		c.UsersFile, c.TLSCertFile, c.TLSKeyFile = users, certFile, keyFile
	})
	ctx := ctxTimeout(t, time.Minute)
	tlsURL := func(user, pw string) string {
		return strings.Replace(h.url(user, pw, ""), "sslmode=disable", "sslmode=require", 1)
	}
	running := h.connect(t, ctx, tlsURL("postgres", "old-proxy-pw"))
	if !bytes.Equal(peerCert(t, running), oldCert) {
		t.Fatal("the first session did not get the first certificate")
	}
	inProgress := startPausedLogin(t, ctx, h.url("postgres", "old-proxy-pw", ""))

	writeFile(t, users, `"postgres" "new-proxy-pw"`+"\n"+`"reporting" "reporting-pw"`+"\n")
	newCert := writeCert(t, certFile, keyFile)
	if err := h.srv.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}

	if err := inProgress.finish(); err != nil {
		t.Fatalf("the login in progress during the reload: %v", err)
	}
	if _, err := inProgress.conn.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("the session of the login in progress: %v", err)
	}
	loginFails(t, ctx, h.url("postgres", "old-proxy-pw", ""))
	fresh := h.connect(t, ctx, tlsURL("postgres", "new-proxy-pw"))
	if !bytes.Equal(peerCert(t, fresh), newCert) {
		t.Fatal("a login after the reload did not get the new certificate")
	}
	h.connect(t, ctx, h.url("reporting", "reporting-pw", ""))
	var n int
	if err := running.QueryRow(ctx, "select 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("the session running across the reload: %d, %v", n, err)
	}
	if !bytes.Equal(peerCert(t, running), oldCert) {
		t.Fatal("the running session's certificate changed")
	}
}

// TestReloadWithBrokenCertificateChangesNothing: a certificate file that does not parse fails
// the reload with an error naming the flag and holding no key material, and neither it nor the
// users file read with it is taken: logins go on with the old ones.
func TestReloadWithBrokenCertificateChangesNothing(t *testing.T) {
	dir := t.TempDir()
	users, certFile, keyFile := filepath.Join(dir, "users.txt"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, users, `"postgres" "kept-proxy-pw"`+"\n")
	oldCert := writeCert(t, certFile, keyFile)
	h := newHarness(t, func(pc *pool.Config, c *Config) {
		c.UsersFile, c.TLSCertFile, c.TLSKeyFile = users, certFile, keyFile
	})
	ctx := ctxTimeout(t, time.Minute)

	writeFile(t, users, `"postgres" "unused-proxy-pw"`+"\n")
	key, _ := os.ReadFile(keyFile)
	writeFile(t, certFile, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
	err := h.srv.Reload()
	if err == nil || !strings.Contains(err.Error(), "--proxy.tls-cert-file") {
		t.Fatalf("Reload = %v, want an error naming --proxy.tls-cert-file", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), string(key[40:60])) {
		t.Fatalf("the error shows the key: %v", err)
	}
	c := h.connect(t, ctx, strings.Replace(h.url("postgres", "kept-proxy-pw", ""), "sslmode=disable", "sslmode=require", 1))
	if !bytes.Equal(peerCert(t, c), oldCert) {
		t.Fatal("the certificate changed")
	}
	loginFails(t, ctx, h.url("postgres", "unused-proxy-pw", ""))
}

// TestPreviousPoolPasswordAcceptedForTheWindow: without a users file, clients log in with the
// pool's password. Rotated at the server and reloaded, new server connections use the new
// password, and clients may log in with the new one or, within the rotation window, the old
// one, each such login logged without the password.
func TestPreviousPoolPasswordAcceptedForTheWindow(t *testing.T) {
	for _, tc := range []struct {
		name       string
		method     AuthMethod
		window     time.Duration
		brokenCert bool // the same reload finds the TLS certificate broken
	}{
		{"scram", AuthSCRAM, time.Hour, false},
		{"md5", AuthMD5, time.Hour, false},
		{"no window", AuthSCRAM, 0, false},
		{"broken certificate", AuthSCRAM, time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			role := "rotating_" + strings.ReplaceAll(tc.name, " ", "_")
			ctx := ctxTimeout(t, time.Minute)
			if err := cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %[1]s; CREATE ROLE %[1]s LOGIN PASSWORD 'rot-old-pw'", role)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = cluster.Exec(context.Background(), fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'", role))
				_ = cluster.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
			})
			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
			writeCert(t, certFile, keyFile)
			h := newHarness(t, func(pc *pool.Config, c *Config) {
				pc.DatabaseURL = cluster.URLFor(role, "rot-old-pw", "postgres")
				pc.MaxConns, pc.MinConns = 5, 1
				c.Auth, c.PasswordRotationWindow = tc.method, tc.window
				c.TLSCertFile, c.TLSKeyFile = certFile, keyFile
			})
			running := h.connect(t, ctx, h.url(role, "rot-old-pw", ""))

			if err := cluster.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'rot-new-pw'"); err != nil {
				t.Fatal(err)
			}
			if _, err := h.mgr.ReloadPassword(cluster.URLFor(role, "rot-new-pw", "postgres")); err != nil {
				t.Fatal(err)
			}
			if tc.brokenCert {
				writeFile(t, certFile, "not a certificate")
				if err := h.srv.Reload(); err == nil {
					t.Fatal("Reload with a broken certificate succeeded")
				}
			} else if err := h.srv.Reload(); err != nil {
				t.Fatal(err)
			}
			// Three sessions at once (each stays open until the test ends) need server
			// connections the pool opens after the reload.
			for range 3 {
				c := h.connect(t, ctx, h.url(role, "rot-new-pw", ""))
				if _, err := c.Exec(ctx, "select 1"); err != nil {
					t.Fatalf("a session after the reload: %v", err)
				}
			}
			if tc.window == 0 {
				loginFails(t, ctx, h.url(role, "rot-old-pw", ""))
				if strings.Contains(h.log.String(), "previous server password") {
					t.Fatal("logged a login with the previous password")
				}
			} else {
				old := h.connect(t, ctx, h.url(role, "rot-old-pw", ""))
				if _, err := old.Exec(ctx, "select 1"); err != nil {
					t.Fatal(err)
				}
				if got := h.metric(t, "pgsidecar_proxy_previous_password_logins_total", nil); got != 1 {
					t.Fatalf("previous password logins = %v, want 1", got)
				}
				logs := h.log.String()
				if !strings.Contains(logs, "logged in with the previous server password") || !strings.Contains(logs, "user="+role) {
					t.Fatalf("no log line of the login with the previous password:\n%s", logs)
				}
				if strings.Contains(logs, "rot-old-pw") || strings.Contains(logs, "rot-new-pw") {
					t.Fatalf("a password in the logs:\n%s", logs)
				}
			}
			loginFails(t, ctx, h.url(role, "some-other-pw", ""))
			if _, err := running.Exec(ctx, "select 1"); err != nil {
				t.Fatalf("the session running across the reload: %v", err)
			}
		})
	}
}
