package proxy

import (
	"context"
	"time"
)

// The drain at shutdown. A sidecar's clients are its own app, which gets SIGTERM at the same
// time and is still finishing its requests: so the proxy keeps serving, new logins included,
// until they leave (ClientCount reaches 0). At the drain timeout the binary calls EndSessions,
// which ends the sessions outside a transaction at once and gives those inside one a grace
// period; then Close ends whatever is left.

// drainPoll is how often WaitNoClients looks at the client count.
const drainPoll = 25 * time.Millisecond

// ClientCount returns the number of client connections, logged in or still in startup.
func (s *Server) ClientCount() int { return s.table.clientCount() }

// WaitNoClients waits until the proxy has no client connection, or ctx ends. It reports
// whether the last client left.
func (s *Server) WaitNoClients(ctx context.Context) bool {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for s.ClientCount() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// EndSessions ends the clients' sessions for a shutdown: a client outside a transaction gets
// FATAL 57P01 and is closed now; one inside a transaction is closed once it is outside it
// (when it sends its next request after the transaction ended) or when grace has passed,
// whichever comes first. Clients a pause queued get 57P01 too. New logins are refused with
// 57P03. Close ends what is left.
func (s *Server) EndSessions(grace time.Duration) {
	by := time.Now().Add(grace)
	s.endBy.Store(&by)
	s.table.wake()
	s.watch.wakeAll()
	s.maint.endQueued()
}

// ending reports whether EndSessions was called.
func (s *core) ending() bool { return s.endBy.Load() != nil }

// wake makes every logged-in client's wait for its next message return now, so that it sees
// EndSessions.
func (s *clientTable) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.byKey {
		_ = cl.conn.SetReadDeadline(time.Now())
	}
}

// endDue is called by the client's goroutine, once EndSessions was called, before it waits for
// the client's next message and once it has its header. A client outside a transaction, or any
// client once the grace period has passed, gets FATAL 57P01 and true: its session ends (and
// leave rolls back what it had open). Otherwise its read deadline is the end of the grace.
func (cl *client) endDue() bool {
	by := *cl.core.endBy.Load()
	if !cl.outsideTransaction() && time.Now().Before(by) {
		_ = cl.conn.SetReadDeadline(by)
		return false
	}
	cl.core.refuse(cl, reject("57P01", "terminating connection due to administrator command: the proxy is shutting down"))
	cl.flushClient()
	return true
}

// outsideTransaction reports whether the client has no transaction open and no request
// outstanding: it holds no server connection, or its connection is idle.
func (cl *client) outsideTransaction() bool {
	c := cl.current()
	if c == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holder != &cl.clientEnd ||
		c.status == 'I' && len(c.queue) == 0 && !c.midBatch && c.copying == 0
}
