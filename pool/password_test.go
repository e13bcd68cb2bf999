package pool

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rotatingRole creates a login role for a password rotation test, dropped at its end.
func rotatingRole(t *testing.T, role, password string) {
	t.Helper()
	ctx := ctxTimeout(t, 30*time.Second)
	if err := cluster.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN PASSWORD '%s'", role, role, password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cluster.Exec(ctx, fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'", role))
		_ = cluster.Exec(ctx, "DROP ROLE IF EXISTS "+role)
	})
}

// TestReloadPasswordNewConnectionsUseIt rotates the pool user's password at the server, then
// gives the pool the new one: connections opened after that log in with it, the one opened
// before keeps its session, and the credential a front end checks clients against follows.
func TestReloadPasswordNewConnectionsUseIt(t *testing.T) {
	const role = "rotating_app"
	rotatingRole(t, role, "first-secret-pw")
	cfg := testConfig(t)
	cfg.DatabaseURL = cluster.URLFor(role, "first-secret-pw", "postgres")
	cfg.MinConns, cfg.MaxConns = 1, 4
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, time.Minute)
	old, err := h.m.ClientCredential()
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := h.m.ReloadPassword(cfg.DatabaseURL); err != nil || changed {
		t.Fatalf("ReloadPassword with the password in use = %v, %v; want false, nil", changed, err)
	}

	if err := cluster.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'second-secret-pw'"); err != nil {
		t.Fatal(err)
	}
	held, err := h.m.Pool().Acquire(ctx) // opened with the old password, before the reload
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() { // before Close, which waits for it
		if !released {
			held.Release()
		}
	})
	changed, err := h.m.ReloadPassword(cluster.URLFor(role, "second-secret-pw", "postgres"))
	if err != nil || !changed {
		t.Fatalf("ReloadPassword = %v, %v; want true, nil", changed, err)
	}
	if changed, err := h.m.ReloadPassword(cluster.URLFor(role, "second-secret-pw", "postgres")); err != nil || changed {
		t.Fatalf("ReloadPassword with the same password = %v, %v; want false, nil", changed, err)
	}
	// Every idle connection goes; the next ones are opened with the password now in use.
	h.m.Pool().Reset()
	for i := range 3 {
		if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("query %d after the reload: %v", i, err)
		}
	}
	if _, err := held.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	held.Release()
	released = true
	mon, err := h.m.NewMonitorPool(MonitorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a monitor pool made after the reload: %v", err)
	}
	now, err := h.m.ClientCredential()
	if err != nil {
		t.Fatal(err)
	}
	if now.MD5 == old.MD5 || now.MD5 != "md5"+md5hex("second-secret-pw"+role) {
		t.Fatalf("ClientCredential after the reload has md5 %s, want the new password's", now.MD5)
	}
}

// TestReloadPasswordRereadsThePasswordFile: with the password in a password file, a reload reads
// the file again.
func TestReloadPasswordRereadsThePasswordFile(t *testing.T) {
	const role = "passfile_app"
	rotatingRole(t, role, "file-pw-one")
	passfile := filepath.Join(t.TempDir(), "pgpass")
	write := func(pw string) {
		if err := os.WriteFile(passfile, []byte("*:*:*:"+role+":"+pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("file-pw-one")
	u, _ := url.Parse(cluster.URLFor(role, "", "postgres"))
	u.User = url.User(role)
	q := u.Query()
	q.Set("passfile", passfile)
	u.RawQuery = q.Encode()
	cfg := testConfig(t)
	cfg.DatabaseURL = u.String()
	cfg.MinConns, cfg.MaxConns = 1, 2
	h := newManager(t, cfg)
	h.waitHealthy(t)
	ctx := ctxTimeout(t, time.Minute)

	if err := cluster.Exec(ctx, "ALTER ROLE "+role+" PASSWORD 'file-pw-two'"); err != nil {
		t.Fatal(err)
	}
	write("file-pw-two")
	if changed, err := h.m.ReloadPassword(cfg.DatabaseURL); err != nil || !changed {
		t.Fatalf("ReloadPassword = %v, %v; want true, nil", changed, err)
	}
	h.m.Pool().Reset()
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
}

// TestReloadPasswordRefusesAnotherTarget: a URL naming another user, database or host is refused
// with an error that names what changed and holds no password, and the old password stays.
func TestReloadPasswordRefusesAnotherTarget(t *testing.T) {
	cfg := testConfig(t)
	h := newManager(t, cfg)
	h.waitHealthy(t)
	for _, dsn := range []string{
		cluster.URLFor("someone_else", "other-secret-pw", "postgres"),
		strings.Replace(cluster.URLFor("postgres", "other-secret-pw", "postgres"), "/postgres?", "/template1?", 1),
	} {
		changed, err := h.m.ReloadPassword(dsn)
		if err == nil || changed {
			t.Fatalf("ReloadPassword(%s) = %v, %v; want an error", dsn, changed, err)
		}
		if strings.Contains(err.Error(), "other-secret-pw") || !strings.Contains(err.Error(), "only the password can change") {
			t.Fatalf("error %q", err)
		}
	}
	h.m.Pool().Reset()
	if _, err := h.m.Pool().Exec(ctxTimeout(t, 30*time.Second), "SELECT 1"); err != nil {
		t.Fatalf("the old password no longer works: %v", err)
	}
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
