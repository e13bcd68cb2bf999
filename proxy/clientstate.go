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
func (cl *client) takeEffect(c *srvConn, eff *sessionsql.Effect, sqlb []byte) {
	if eff.Pin != "" {
		cl.pinFor(eff.Pin, sqlb)
	}
	if !eff.Settings {
		return
	}
	c.dirty++
	for _, n := range eff.Custom {
		if _, ok := cl.custom[n]; ok {
			continue
		}
		if len(cl.custom) >= maxCustomSettings {
			cl.pinFor(sessionsql.PinSetConfig, sqlb)
			return
		}
		if cl.custom == nil {
			cl.custom = map[string]struct{}{} // made when first needed: most clients never need it
		}
		cl.custom[n] = struct{}{}
	}
}

// pinFor pins the session, logging the statement that did it (rate-limited) so that operators
// can find what pins. c.mu is held.
func (cl *client) pinFor(reason string, sqlb []byte) {
	if cl.pin != "" {
		return
	}
	cl.setPin(reason)
	fp := "unnormalisable"
	if f, err := fingerprint.Sum(string(sqlb)); err == nil {
		fp = f.String()
	}
	cl.core.pinLog.event("reason", reason, "fingerprint", fp, "user", cl.user, "client", cl.remote)
}

// pinRefusal is the in-band error that answers a statement that would pin the session when
// --proxy.pin-policy is error, or nil when it may pin.
func (cl *client) pinRefusal(c *srvConn, reason string) []byte {
	if reason == "" || cl.core.cfg.PinPolicy != PinPolicyError {
		return nil
	}
	c.mu.Lock()
	pinned := cl.pin != ""
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

// queryEffect applies what a simple Query's statements do to the session, and returns the body
// to send (a DEALLOCATE of the proxy's own statements is answered without the server) and a
// Query to send after it (start-up values to restore), or nil.
func (cl *client) queryEffect(c *srvConn, e *entry, eff *sessionsql.Effect, sqlb, body []byte) ([]byte, []byte) {
	s := cl.core
	c.mu.Lock()
	cl.takeEffect(c, eff, sqlb)
	pinned := cl.pin != ""
	// In a failed transaction the server refuses a DEALLOCATE (25P02) as it would directly, and
	// the statements stay: it goes to the server as it came.
	failed := c.status == 'E' && c.quiet()
	c.mu.Unlock()
	e.discard = eff.Discard
	if eff.Discard {
		// Whether or not it succeeds, the statements the client can still use are the
		// server's, which the proxy does not track for a pinned session.
		cl.unnamed = nil
		cl.forgetStatements()
		clear(cl.named)
	}
	alone := eff.Statements == 1
	if failed && len(eff.Dealloc) > 0 {
		return body, restoreQuery(cl.startWant, eff.Resets)
	}
	for _, name := range eff.Dealloc {
		if name == "*" {
			cl.forgetStatements()
			if !pinned && alone {
				body, e.emptyAs = []byte{0}, "DEALLOCATE ALL"
			} else {
				e.deallocAll = true
			}
			continue
		}
		if st := cl.stmts[name]; st != nil && alone {
			s.stmts.put(st)
			cl.dropStmt(name, st)
			body, e.emptyAs = []byte{0}, "DEALLOCATE"
		}
	}
	return body, restoreQuery(cl.startWant, eff.Resets)
}

// bindEffect queues the entry of a Bind of a statement with effect eff, and takes what running
// it does to the session.
func (cl *client) bindEffect(c *srvConn, e *entry, eff *sessionsql.Effect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl.queue(c, e)
	if eff.Harmless() {
		return
	}
	cl.takeEffect(c, eff, nil)
	cl.batchResets = append(cl.batchResets, eff.Resets...)
	cl.batchDiscard = cl.batchDiscard || eff.Discard
	cl.batchDealloc = cl.batchDealloc || slices.Contains(eff.Dealloc, "*")
}
