package proxy

import (
	"fmt"
	"strconv"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
)

// undo records that the server skipped the request e answered. Called by readLoop.
func (t *txSession) undo(e *entry) {
	t.undoMu.Lock()
	t.undone = append(t.undone, e)
	t.undoMu.Unlock()
	t.hasUndo.Store(true)
}

// applyUndone reverts the statements of skipped Parses and Closes.
func (t *txSession) applyUndone() {
	t.undoMu.Lock()
	undone := t.undone
	t.undone = nil
	t.hasUndo.Store(false)
	t.undoMu.Unlock()
	for _, e := range undone {
		if e.closed {
			if t.stmts[e.stmtName] == nil {
				t.keepStmt(e.stmtName, e.stmt)
				t.srv.stmts.ref(e.stmt) // the Close's put is undone too
			}
			continue
		}
		if t.stmts[e.stmtName] == e.stmt {
			t.dropStmt(e.stmtName, e.stmt)
			t.srv.stmts.put(e.stmt)
		}
	}
}

// forgetStatements drops the client's named statements.
func (t *txSession) forgetStatements() {
	for name, st := range t.stmts {
		t.srv.stmts.put(st)
		t.dropStmt(name, st)
	}
}

// Bounds on one client's named statements in transaction mode, where the proxy keeps their
// text: without them one client could make the proxy hold any amount of it.
const (
	maxClientStatements     = 10000
	maxClientStatementBytes = 64 << 20
)

// statementRefused is the error for a named Parse of a statement of n bytes, or "" to accept it.
func (t *txSession) statementRefused(name string, n int) (code, msg string) {
	if _, dup := t.stmts[name]; dup {
		return "42P05", fmt.Sprintf("prepared statement %q already exists", name)
	}
	if len(t.stmts) >= maxClientStatements || t.stmtBytes+n > maxClientStatementBytes {
		return "53400", fmt.Sprintf("too many prepared statements in this session: the proxy keeps at most %d, of %d MiB of text in all; close some first",
			maxClientStatements, maxClientStatementBytes>>20)
	}
	return "", ""
}

func (t *txSession) keepStmt(name string, st *pstmt) {
	t.stmts[name] = st
	t.stmtBytes += len(st.key)
}

func (t *txSession) dropStmt(name string, st *pstmt) {
	delete(t.stmts, name)
	t.stmtBytes -= len(st.key)
}

// stmtScope is the registry scope of the client's new statements: its own once it is pinned.
// The held connection's mu is held, if there is one.
func (t *txSession) stmtScope() string {
	if t.pin == "" {
		return ""
	}
	return "pinned " + strconv.FormatUint(uint64(t.pid), 10) + "\x00"
}

// namedStmt is what the proxy keeps of a whole session's statement, which the server holds
// under the client's name: enough to measure its executions and take its effect.
type namedStmt struct {
	op  pool.Operation
	sql string
	eff sessionsql.Effect
}

// parseWhole queues the answer to a whole session's Parse, which goes to the server as it
// came, and keeps the statement's operation and text for its executions.
func (t *txSession) parseWhole(c *srvConn, body []byte) (pool.Operation, string) {
	name, rest := cstring(body)
	sqlb, _ := cbytes(rest)
	ns := namedStmt{sql: sqlPrefix(sqlb), eff: t.srv.analysis.Analyze(sqlb)}
	ns.op = pool.ClassifyOperation(ns.sql)
	if _, ok := t.named[name]; ok || len(t.named) < maxClientStatements {
		t.named[name] = ns
	}
	t.queueLocked(c, &entry{kind: 'P'})
	return ns.op, ns.sql
}

// prepareOn makes sure st is prepared on c before the client's request that uses it, appending
// the Parse (and the Closes of the statements it evicts) to pre. It reports stale, and sends
// nothing for the request, when st is a version whose result type changed and c does not have
// it: the client then gets the error it gets where st is prepared, rather than st prepared
// afresh with a result its driver would decode with the old row description.
func (t *txSession) prepareOn(c *srvConn, st *pstmt, pre []byte) (_ []byte, stale bool) {
	s := t.srv
	c.mu.Lock()
	pre = t.closeUnused(c, pre)
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
	if !t.queue(c, &entry{kind: 'P', skip: true, prepared: st}) {
		c.mu.Unlock()
		return pre, false
	}
	pre = appendMsg(pre, 'P', st.parseBody())
	pre = t.describeOn(c, st, verdict, pre)
	pre = t.addPrepared(c, st, pre)
	c.mu.Unlock()
	if verdict == nil {
		return pre, false
	}
	// The server answers extended-protocol messages at a Flush (which it does not answer).
	_, _ = t.sw.Write(appendMsg(pre, 'H', nil))
	t.flushServer()
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
	pre = t.closeUnused(c, pre)
	c.mu.Unlock()
	return pre, true
}

// describeOn appends to pre a Describe of st, just prepared on c, that records or checks its
// result type (see checkResult). c.mu is held.
func (t *txSession) describeOn(c *srvConn, st *pstmt, verdict chan bool, pre []byte) []byte {
	if !t.queue(c, &entry{kind: 'D', skip: true, describes: st, verdict: verdict}) {
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
func (t *txSession) parseOn(c *srvConn, st *pstmt, name string, pre []byte) []byte {
	s := t.srv
	c.mu.Lock()
	defer c.mu.Unlock()
	pre = t.closeUnused(c, pre)
	if c.stmts.has(st) {
		// Not yet valid: the client's own Parse of it is unanswered. In the same batch, this
		// one stands or falls with it; in an earlier batch, that one may fail, so this one gets
		// the server's answer too, after a Close (of nothing, if that Parse fails).
		if st.valid.Load() || c.parsing(st, t.batch) {
			s.m.stmtHits.Inc()
			e := &entry{synth: parseComplete, stmtName: name, stmt: st}
			if len(c.queue) == 0 {
				t.writeClient(e.synth)
			} else {
				e.batch = t.batch
				c.queue = append(c.queue, e)
			}
			return pre
		}
		s.m.stmtMisses.Inc()
		if t.queue(c, &entry{kind: 'C', skip: true}) {
			pre = appendMsg(pre, 'C', closeBody(st.name))
			t.queue(c, &entry{kind: 'P', prepared: st, reparse: true, stmtName: name, stmt: st})
			pre = appendMsg(pre, 'P', st.parseBody())
			pre = t.describeOn(c, st, nil, pre)
		}
		return pre
	}
	s.m.stmtMisses.Inc()
	t.queue(c, &entry{kind: 'P', prepared: st, stmtName: name, stmt: st})
	pre = appendMsg(pre, 'P', st.parseBody())
	pre = t.describeOn(c, st, nil, pre)
	return t.addPrepared(c, st, pre)
}

// addPrepared records st as prepared on c (the caller holds c.mu and has appended its Parse to
// pre), appending the Closes of the statements it evicts.
func (t *txSession) addPrepared(c *srvConn, st *pstmt, pre []byte) []byte {
	s := t.srv
	for _, old := range c.stmts.add(st, s.cfg.MaxPreparedStatements) {
		s.m.stmtEvicted.Inc()
		t.queue(c, &entry{kind: 'C', skip: true, closes: old})
		pre = appendMsg(pre, 'C', closeBody(old.name))
	}
	return pre
}

// closeUnused appends to pre the Closes of the statements c prepared with another result type
// than their first, and of the stale statements c has prepared that no client holds any more
// when some statement has become such since c last looked. c.mu is held.
func (t *txSession) closeUnused(c *srvConn, pre []byte) []byte {
	s := t.srv
	if c.errSkip && c.errBatch == t.batch {
		return pre
	}
	for _, st := range c.closeDue {
		t.queue(c, &entry{kind: 'C', skip: true})
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
		t.queue(c, &entry{kind: 'C', skip: true, closes: st})
		pre = appendMsg(pre, 'C', closeBody(st.name))
	}
	return pre
}

// unnamedOn prepares the client's unnamed statement again when the connection does not hold it
// (the client parsed it in an earlier transaction, on another connection).
func (t *txSession) unnamedOn(c *srvConn, pre []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unnamedBy == t && c.unnamedN == t.unnamedN || t.unnamed == nil {
		return pre
	}
	if !t.queue(c, &entry{kind: 'P', skip: true}) {
		return pre
	}
	c.unnamedBy, c.unnamedN = t, t.unnamedN
	return appendMsg(pre, 'P', t.unnamed)
}
