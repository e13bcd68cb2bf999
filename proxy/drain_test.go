package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestEndSessions: a client outside a transaction gets FATAL 57P01 at once; one inside a
// transaction finishes it and gets 57P01 at its next statement; a new login gets 57P03; then
// WaitNoClients returns.
func TestEndSessions(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = mode })
			ctx := ctxTimeout(t, 30*time.Second)
			idle := h.pgconnect(t, ctx, "")
			inTx := h.pgconnect(t, ctx, "")
			if _, err := simple(ctx, inTx, "BEGIN; SELECT 1"); err != nil {
				t.Fatal(err)
			}
			h.srv.EndSessions(10 * time.Second)
			code := func(err error) string {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					return pgErr.Code
				}
				return ""
			}
			if !pgtest.WaitFor(5*time.Second, func() bool { return idle.IsClosed() || h.srv.ClientCount() == 1 }) {
				t.Fatal("the idle client was not closed")
			}
			if _, err := simple(ctx, idle, "SELECT 1"); err == nil {
				t.Fatal("the idle client still runs statements")
			}
			if v, err := simple(ctx, inTx, "SELECT 2"); err != nil || v != "2" {
				t.Fatalf("inside the transaction: %q %v", v, err)
			}
			if _, err := simple(ctx, inTx, "COMMIT"); err != nil {
				t.Fatal(err)
			}
			if _, err := simple(ctx, inTx, "SELECT 3"); code(err) != "57P01" {
				t.Fatalf("after the transaction: %v, want 57P01", err)
			}
			if _, err := pgconn.Connect(ctx, h.superURL()); code(err) != "57P03" {
				t.Fatalf("a login after EndSessions: %v, want 57P03", err)
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if !h.srv.WaitNoClients(wctx) {
				t.Fatalf("%d clients left", h.srv.ClientCount())
			}
		})
	}
}

// TestEndSessionsWhilePaused: a client a pause queued gets FATAL 57P01 at EndSessions, rather
// than waiting for a resume until Close.
func TestEndSessionsWhilePaused(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.pgconnect(t, ctx, "")
	done := queueBehindPause(t, ctx, h, c)
	h.srv.EndSessions(10 * time.Second)
	var pgErr *pgconn.PgError
	select {
	case err := <-done:
		if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
			t.Fatalf("the queued client: %v, want 57P01", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued client still waits")
	}
}
