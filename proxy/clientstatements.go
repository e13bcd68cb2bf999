package proxy

import (
	"fmt"
	"strconv"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
)

// applyUndone reverts the statements of skipped Parses and Closes.
func (cl *client) applyUndone() {
	cl.undoMu.Lock()
	undone := cl.undone
	cl.undone = nil
	cl.hasUndo.Store(false)
	cl.undoMu.Unlock()
	for _, e := range undone {
		if e.closed {
			if cl.stmts[e.stmtName] == nil {
				cl.keepStmt(e.stmtName, e.stmt, pool.StatementID{})
				cl.core.stmts.ref(e.stmt) // the Close's put is undone too
			}
			continue
		}
		if cl.stmts[e.stmtName] == e.stmt {
			cl.dropStmt(e.stmtName, e.stmt)
			cl.core.stmts.put(e.stmt)
		}
	}
}

// forgetStatements drops the client's named statements.
func (cl *client) forgetStatements() {
	for name, st := range cl.stmts {
		cl.core.stmts.put(st)
		cl.dropStmt(name, st)
	}
}

// Bounds on one client's named statements in transaction mode, where the proxy keeps their
// text: without them one client could make the proxy hold any amount of it.
const (
	maxClientStatements     = 10000
	maxClientStatementBytes = 64 << 20
)

// statementRefused is the error for a named Parse of a statement of n bytes, or "" to accept it.
func (cl *client) statementRefused(name string, n int) (code, msg string) {
	if _, dup := cl.stmts[name]; dup {
		return "42P05", fmt.Sprintf("prepared statement %q already exists", name)
	}
	if len(cl.stmts) >= maxClientStatements || cl.stmtBytes+n > maxClientStatementBytes {
		return "53400", fmt.Sprintf("too many prepared statements in this session: the proxy keeps at most %d, of %d MiB of text in all; close some first",
			maxClientStatements, maxClientStatementBytes>>20)
	}
	return "", ""
}

// keepStmt maps the client's statement name onto st; id names its text, with the trace context
// of its sqlcommenter comment, which the executions of name carry as their exemplar.
func (cl *client) keepStmt(name string, st *pstmt, id pool.StatementID) {
	if cl.stmts == nil {
		cl.stmts = map[string]*pstmt{} // made when first needed: most clients never need it
	}
	cl.stmts[name] = st
	cl.stmtBytes += len(st.key)
	if id.Traced() {
		if cl.traced == nil {
			cl.traced = map[string]pool.StatementID{}
		}
		cl.traced[name] = id
	}
}

func (cl *client) dropStmt(name string, st *pstmt) {
	delete(cl.stmts, name)
	delete(cl.traced, name)
	cl.stmtBytes -= len(st.key)
}

// stmtID names the client's statement name, which maps onto st, for measuring an execution.
func (cl *client) stmtID(name []byte, st *pstmt) pool.StatementID {
	if id, ok := cl.traced[string(name)]; ok {
		return id
	}
	return st.id
}

// stmtScope is the registry scope of the client's new statements: its own once it is pinned.
// The held connection's mu is held, if there is one.
func (cl *client) stmtScope() string {
	if cl.pin == "" {
		return ""
	}
	return "pinned " + strconv.FormatUint(uint64(cl.pid), 10) + "\x00"
}

// parseWhole queues the answer to a whole session's Parse, which goes to the server as it
// came, and keeps the statement's operation and text for its executions.
func (cl *client) parseWhole(c *srvConn, body []byte) (pool.Operation, string, pool.StatementID) {
	name, rest := cstring(body)
	sqlb, _ := cbytes(rest)
	ns := namedStmt{sql: sqlPrefix(sqlb), eff: cl.core.analysis.Analyze(sqlb)}
	ns.op = pool.ClassifyOperation(ns.sql)
	ns.id = cl.core.mgr.Identify(ns.op, sqlb) // the client's own: with its trace context
	if _, ok := cl.named[name]; ok || len(cl.named) < maxClientStatements {
		cl.named[name] = ns
	}
	cl.queueLocked(c, &entry{kind: 'P'})
	return ns.op, ns.sql, ns.id
}

// prepareOn makes sure st is prepared on c before the client's request that uses it, appending
// the Parse (and the Closes of the statements it evicts) to pre. It reports stale, and sends
// nothing for the request, when st is a version whose result type changed and c does not have
// it: the client then gets the error it gets where st is prepared, rather than st prepared
// afresh with a result its driver would decode with the old row description.
func (cl *client) prepareOn(c *srvConn, st *pstmt, pre []byte) (_ []byte, stale bool) {
	s := cl.core
	c.mu.Lock()
	pre = cl.closeUnused(c, pre)
	if c.stmts.has(st) {
		s.m.stmtHits.Inc()
		c.mu.Unlock()
		return pre, false
	}
	if st.stale.Load() {
		c.mu.Unlock()
		return pre, true
	}
	s.m.stmtMisses.Inc()
	// With nothing else for the client outstanding, wait for the check of the result type
	// before the request goes out: the answers the server sends meanwhile are not the client's,
	// so the wait cannot depend on the client reading. Otherwise the check only marks st stale
	// for later requests.
	var verdict chan bool
	if st.result.Load() != nil && c.quiet() {
		verdict = make(chan bool, 1)
	}
	if !cl.queue(c, &entry{kind: 'P', skip: true, prepared: st}) {
		c.mu.Unlock()
		return pre, false
	}
	pre = appendMsg(pre, 'P', st.parseBody())
	pre = cl.describeOn(c, st, verdict, pre)
	pre = cl.addPrepared(c, st, pre)
	c.mu.Unlock()
	if verdict == nil {
		return pre, false
	}
	// The server answers extended-protocol messages at a Flush (which it does not answer).
	_, _ = cl.sw.Write(appendMsg(pre, 'H', nil))
	cl.flushServer()
	pre = pre[:0]
	select {
	case differs := <-verdict:
		if !differs {
			return pre, false
		}
	case <-time.After(s.cfg.ResetTimeout):
		return pre, false // a stalled server: the request waits behind the check there
	}
	c.mu.Lock()
	pre = cl.closeUnused(c, pre)
	c.mu.Unlock()
	return pre, true
}

// describeOn appends to pre a Describe of st, just prepared on c, that records or checks its
// result type (see checkResult). c.mu is held.
func (cl *client) describeOn(c *srvConn, st *pstmt, verdict chan bool, pre []byte) []byte {
	if !cl.queue(c, &entry{kind: 'D', skip: true, describes: st, verdict: verdict}) {
		return pre
	}
	b := make([]byte, 0, len(st.name)+2)
	b = append(append(append(b, 'S'), st.name...), 0)
	return appendMsg(pre, 'D', b)
}

// parseOn answers a client's named Parse of st: at once when c has st prepared and a server has
// accepted it, else by preparing it on c, appended to pre, so that errors in the statement come
// where PostgreSQL gives them. Other connections prepare it when a Bind or Describe needs it
// there.
func (cl *client) parseOn(c *srvConn, st *pstmt, name string, pre []byte) []byte {
	s := cl.core
	c.mu.Lock()
	defer c.mu.Unlock()
	pre = cl.closeUnused(c, pre)
	if c.stmts.has(st) {
		// Not yet valid: the client's own Parse of it is unanswered. In the same batch, this
		// one stands or falls with it; in an earlier batch, that one may fail, so this one gets
		// the server's answer too, after a Close (of nothing, if that Parse fails). So does a
		// Parse in a failed transaction, or behind requests that may fail one: the server
		// refuses it there (25P02), as it would directly.
		if st.valid.Load() && c.status != 'E' && c.quiet() || c.parsing(st, cl.batch) {
			s.m.stmtHits.Inc()
			cl.answerLocked(c, &entry{synth: parseComplete, stmtName: name, stmt: st})
			return pre
		}
		s.m.stmtMisses.Inc()
		if cl.queue(c, &entry{kind: 'C', skip: true}) {
			pre = appendMsg(pre, 'C', closeBody(st.name))
			cl.queue(c, &entry{kind: 'P', prepared: st, reparse: true, stmtName: name, stmt: st})
			pre = appendMsg(pre, 'P', st.parseBody())
			pre = cl.describeOn(c, st, nil, pre)
		}
		return pre
	}
	s.m.stmtMisses.Inc()
	cl.queue(c, &entry{kind: 'P', prepared: st, stmtName: name, stmt: st})
	pre = appendMsg(pre, 'P', st.parseBody())
	pre = cl.describeOn(c, st, nil, pre)
	return cl.addPrepared(c, st, pre)
}

// addPrepared records st as prepared on c (the caller holds c.mu and has appended its Parse to
// pre), appending the Closes of the statements it evicts.
func (cl *client) addPrepared(c *srvConn, st *pstmt, pre []byte) []byte {
	s := cl.core
	for _, old := range c.stmts.add(st, s.cfg.MaxPreparedStatements) {
		s.m.stmtEvicted.Inc()
		cl.queue(c, &entry{kind: 'C', skip: true, closes: old})
		pre = appendMsg(pre, 'C', closeBody(old.name))
	}
	return pre
}

// closeUnused appends to pre the Closes of the statements c prepared with another result type
// than their first, and of the stale statements c has prepared that no client holds any more
// when some statement has become such since c last looked. c.mu is held.
func (cl *client) closeUnused(c *srvConn, pre []byte) []byte {
	s := cl.core
	if c.errSkip && c.errBatch == cl.batch {
		return pre
	}
	for _, st := range c.closeDue {
		cl.queue(c, &entry{kind: 'C', skip: true})
		pre = appendMsg(pre, 'C', closeBody(st.name))
	}
	clear(c.closeDue)
	c.closeDue = c.closeDue[:0]
	n := s.stmts.unused.Load()
	if n == c.unusedSeen {
		return pre
	}
	c.unusedSeen = n
	for _, st := range s.stmts.unusedIn(&c.stmts) {
		c.stmts.remove(st)
		cl.queue(c, &entry{kind: 'C', skip: true, closes: st})
		pre = appendMsg(pre, 'C', closeBody(st.name))
	}
	return pre
}

// unnamedOn prepares the client's unnamed statement again when the connection does not hold it
// (the client parsed it in an earlier transaction, on another connection).
func (cl *client) unnamedOn(c *srvConn, pre []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unnamedBy == &cl.clientEnd && c.unnamedN == cl.unnamedN || cl.unnamed == nil {
		return pre
	}
	if !cl.queue(c, &entry{kind: 'P', skip: true}) {
		return pre
	}
	c.unnamedBy, c.unnamedN = &cl.clientEnd, cl.unnamedN
	return appendMsg(pre, 'P', cl.unnamed)
}

// keepUnnamedFx records what the unnamed statement does to the session.
func (cl *clientStatements) keepUnnamedFx(eff sessionsql.Effect) {
	if cl.unnamedFx == nil {
		if eff.Harmless() {
			return
		}
		cl.unnamedFx = new(sessionsql.Effect)
	}
	*cl.unnamedFx = eff
}

// unnamedEffect is what the unnamed statement does to the session.
func (cl *clientStatements) unnamedEffect() *sessionsql.Effect {
	if cl.unnamedFx == nil {
		return &harmless
	}
	return cl.unnamedFx
}

// harmless is the effect of a statement that does nothing to the session; never written.
var harmless sessionsql.Effect
