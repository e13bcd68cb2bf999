package proxy

import (
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
)

// takeEffect applies what a client's statement does to the session before it is sent: a pin,
// or settings to read back before the connection goes to anyone else. c.mu is held.
func (t *txSession) takeEffect(c *srvConn, eff *sessionsql.Effect, sqlb []byte) {
	if eff.Pin != "" {
		t.pinFor(eff.Pin, sqlb)
	}
	if !eff.Settings {
		return
	}
	c.dirty++
	for _, n := range eff.Custom {
		if _, ok := t.custom[n]; ok {
			continue
		}
		if len(t.custom) >= maxCustomSettings {
			t.pinFor(sessionsql.PinSetConfig, sqlb)
			return
		}
		t.custom[n] = struct{}{}
	}
}

// pinFor pins the session, logging the statement that did it (rate-limited) so that operators
// can find what pins. c.mu is held.
func (t *txSession) pinFor(reason string, sqlb []byte) {
	if t.pin != "" {
		return
	}
	t.setPin(reason)
	fp := "unnormalisable"
	if f, err := fingerprint.Sum(string(sqlb)); err == nil {
		fp = f.String()
	}
	t.srv.pinLog.event("reason", reason, "fingerprint", fp, "user", t.user, "client", t.remote)
}

// pinRefusal is the in-band error that answers a statement that would pin the session when
// --proxy.pin-policy is error, or nil when it may pin.
func (t *txSession) pinRefusal(c *srvConn, reason string) []byte {
	if reason == "" || t.srv.cfg.PinPolicy != PinPolicyError {
		return nil
	}
	c.mu.Lock()
	pinned := t.pin != ""
	c.mu.Unlock()
	if pinned {
		return nil
	}
	e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
		Message: fmt.Sprintf("this statement would pin the session to one server connection (%s), which --proxy.pin-policy=error refuses", reason),
		Hint:    "Connect with options='-c " + requestPinOption + "=session' for a session of your own."}
	b, _ := e.Encode(nil)
	return b[5:]
}

// setPin pins the session to its server connection. The connection's mu is held.
func (t *txSession) setPin(reason string) {
	if t.pin != "" || reason == "" {
		return
	}
	t.pin = reason
	if reason != pinWhole {
		t.srv.m.pinned.WithLabelValues(reason).Inc()
		t.srv.m.pinnedTotal.WithLabelValues(reason).Inc()
	}
}

func (t *txSession) unpin() {
	if t.pin != "" && t.pin != pinWhole {
		t.srv.m.pinned.WithLabelValues(t.pin).Dec()
	}
	t.pin = ""
}

// queryEffect applies what a simple Query's statements do to the session, and returns the body
// to send (a DEALLOCATE of the proxy's own statements is answered without the server) and a
// Query to send after it (start-up values to restore), or nil.
func (t *txSession) queryEffect(c *srvConn, e *entry, eff *sessionsql.Effect, sqlb, body []byte) ([]byte, []byte) {
	s := t.srv
	c.mu.Lock()
	t.takeEffect(c, eff, sqlb)
	pinned := t.pin != ""
	c.mu.Unlock()
	e.discard = eff.Discard
	if eff.Discard {
		// Whether or not it succeeds, the statements the client can still use are the
		// server's, which the proxy does not track for a pinned session.
		t.unnamed = nil
		t.forgetStatements()
		clear(t.named)
	}
	alone := eff.Statements == 1
	for _, name := range eff.Dealloc {
		if name == "*" {
			t.forgetStatements()
			if !pinned && alone {
				body, e.emptyAs = []byte{0}, "DEALLOCATE ALL"
			} else {
				e.deallocAll = true
			}
			continue
		}
		if st := t.stmts[name]; st != nil && alone {
			s.stmts.put(st)
			t.dropStmt(name, st)
			body, e.emptyAs = []byte{0}, "DEALLOCATE"
		}
	}
	return body, restoreQuery(t.startWant, eff.Resets)
}

// bindEffect queues the entry of a Bind of a statement with effect eff, and takes what running
// it does to the session.
func (t *txSession) bindEffect(c *srvConn, e *entry, eff *sessionsql.Effect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.queue(c, e)
	if eff.Harmless() {
		return
	}
	t.takeEffect(c, eff, nil)
	t.batchResets = append(t.batchResets, eff.Resets...)
	t.batchDiscard = t.batchDiscard || eff.Discard
	t.batchDealloc = t.batchDealloc || slices.Contains(eff.Dealloc, "*")
}
