package proxy

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
)

// request is one client message on its way to the server, and what the proxy sends for it.
type request struct {
	typ  byte
	n    int    // the body's length as the client sent it
	body []byte // the body to send (read or rewritten), or nil to copy n bytes from the client
	pre  []byte // messages the proxy sends first, on the client's behalf
	post []byte // and after, on the client's behalf
	// answered: the proxy answers the message itself, or the server would skip it; only pre
	// goes to the server.
	answered bool
}

// loop relays the client's messages until it leaves or its server connection fails.
func (cl *client) loop() {
	for {
		if cl.fr != nil && !cl.core.ending() && !cl.relayRaw(cl.fr) {
			return
		}
		if !cl.step() {
			return
		}
	}
}

// step relays the client's next message, waiting for it if need be. It reports false when the
// session ends.
func (cl *client) step() bool {
	if cl.cr == nil || needFlush(cl.cr) {
		cl.beforeWait()
	}
	typ, n, ok := cl.next(cl.hdr[:])
	if !ok {
		return false
	}
	cl.bytesIn += n + 5
	if cl.hungUp.Load() {
		return false // a client that goes on sending to a connection hung up
	}
	// Always answered, at least with a ReadyForQuery (rawread.go). Not a Flush, which may have
	// nothing to send, nor a CopyDone or CopyFail, which the server ignores outside a COPY.
	cl.awaits = typ == 'Q' || typ == 'S' || typ == 'F'
	if typ == 'X' {
		cl.terminated = true
		return false
	}
	return cl.relay(typ, n)
}

// beforeWait sends what is buffered for the server (and, when it can, for the client) before
// the client's goroutine may wait for the client, and lets go of what an idle client need not
// keep.
func (cl *client) beforeWait() {
	cl.endWrite()
	cl.offerFlush()
	if cl.current() == nil {
		cl.releaseClientWriter()
	}
	if cl.bytesIn > 0 {
		cl.core.m.bytesIn.Add(float64(cl.bytesIn))
		cl.bytesIn = 0
	}
}

// next reads the header of the client's next message, watching for a client idle in a
// transaction on the way. It reports false when the session ends: the client is gone, idled
// out, or sent a message the proxy refuses (answered with its FATAL error).
func (cl *client) next(hdr []byte) (typ byte, n int, ok bool) {
	s := cl.core
	for {
		if s.cfg.IdleTransactionTimeout > 0 {
			cl.armIdleTimeout()
		}
		cl.armPark()
		if s.ending() && cl.endDue() {
			return 0, 0, false
		}
		err := cl.readHeader(hdr)
		if err == nil {
			break
		}
		if err == errIdleWait && cl.parkArmed {
			if cl.parkDue() {
				return 0, 0, false
			}
			continue
		}
		if err == errIdleWait && (s.ending() || !cl.idleTooLong()) {
			continue
		}
		return 0, 0, false
	}
	if !cl.idleDeadline.IsZero() {
		cl.idleDeadline = time.Time{}
		_ = cl.conn.SetReadDeadline(time.Time{})
	}
	cl.disarmPark()
	if s.ending() && cl.endDue() {
		return 0, 0, false
	}
	typ = hdr[0]
	n = int(binary.BigEndian.Uint32(hdr[1:])) - 4
	switch {
	case n < 0:
		s.refuse(cl, reject("08P01", "invalid message length %d", n+4))
		cl.flushClient()
		return 0, 0, false
	case n > s.cfg.MaxMessageSize:
		s.refuse(cl, reject("54000", "message of type %q too large (more than %d bytes)", typ, s.cfg.MaxMessageSize))
		cl.flushClient()
		cl.endOversized(n)
		return 0, 0, false
	}
	return typ, n, true
}

// relay handles one client message of type typ with an n-byte body: answered without a server
// connection if it can be, else sent on the one the client holds (checked out if need be),
// with what the proxy sends on its behalf. It reports false when the session ends.
func (cl *client) relay(typ byte, n int) bool {
	if c := cl.lostConn.Load(); c != nil && cl.lostConn.CompareAndSwap(c, nil) {
		cl.afterLoss(c)
	}
	if cl.hasUndo.Load() {
		cl.applyUndone()
	}
	if cl.stmtsGone.Load() && cl.stmtsGone.Swap(false) {
		cl.unnamed = nil
		cl.forgetStatements()
		clear(cl.named)
	}
	r := request{typ: typ, n: n}
	switch typ {
	case 'Q', 'P', 'B', 'D', 'C':
		body, err := cl.readBody(n)
		if err != nil {
			return false
		}
		r.body = body
	}
	if cl.current() == nil && cl.answerAlone(typ, r.body) {
		return cl.skipBody(&r)
	}
	c, err := cl.hold()
	if err != nil {
		cl.skipBody(&r)
		if cl.failInBand(typ, err) {
			return true
		}
		cl.core.refuse(cl, err)
		cl.flushClient()
		return false
	}
	if cl.batchStart.IsZero() {
		cl.batchStart = time.Now() // the wait for a server connection is not the query's time
	}
	for _, p := range cl.pending {
		if p.closed {
			cl.answer(c, p)
		} else {
			r.pre = cl.parseOn(c, p.stmt, p.stmtName, r.pre)
		}
	}
	cl.pending = cl.pending[:0]
	switch typ {
	case 'Q':
		cl.query(c, &r)
	case 'P':
		cl.parse(c, &r)
	case 'B':
		cl.bind(c, &r)
	case 'D':
		cl.describe(c, &r)
	case 'C':
		cl.close(c, &r)
	case 'E':
		e := &entry{kind: 'E'}
		if !cl.executed {
			// The statement it runs, for the answer to an Execute the server leaves
			// unanswered (serverloss.go): a COMMIT's is 08007.
			e.op, e.sql = cl.batchOp, cl.batchSQL
		}
		cl.executed = true
		cl.queueLocked(c, e)
	case 'S':
		cl.sync(c, &r)
	case 'F':
		cl.queueLocked(c, &entry{kind: 'F', start: cl.batchStart, op: pool.OpOther, sql: "function call", measure: true})
		cl.batchStart = time.Time{}
	}
	return cl.forward(&r)
}

// skipBody consumes the body of a message that is not relayed, unless it was read. It reports
// whether the client is still there.
func (cl *client) skipBody(r *request) bool {
	if r.body != nil {
		return true
	}
	_, err := cl.cr.Discard(r.n)
	return err == nil
}

// forward writes a request and what the proxy sends for it to the server writer. It reports
// whether the client is still there.
func (cl *client) forward(r *request) bool {
	if len(r.pre) > 0 {
		_, _ = cl.sw.Write(r.pre)
	}
	switch {
	case r.answered:
		if !cl.skipBody(r) {
			return false
		}
	case r.body != nil:
		var hdr [5]byte
		hdr[0] = r.typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(r.body)+4))
		_, _ = cl.sw.Write(hdr[:])
		_, _ = cl.sw.Write(r.body)
	default:
		var hdr [5]byte
		hdr[0] = r.typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(r.n+4))
		_, _ = cl.sw.Write(hdr[:])
		if readErr, _ := copyBody(cl.sw, cl.cr, r.n); readErr != nil {
			return false
		}
	}
	if r.post != nil {
		_, _ = cl.sw.Write(r.post)
	}
	if cap(cl.buf) > 1<<20 {
		cl.buf = nil
	}
	if cap(cl.rewrite) > 1<<20 {
		cl.rewrite = nil
	}
	return true
}

// measureAs names the statement that measures the batch: its first, or the first executed.
func (cl *client) measureAs(op pool.Operation, sql string, id pool.StatementID) {
	if !cl.batchNamed || !cl.executed {
		if cl.batchNamed {
			id = id.TracedAs(cl.batchID) // a Bind keeps the trace of its Parse
		}
		cl.batchOp, cl.batchSQL, cl.batchID, cl.batchNamed = op, sql, id, true
	}
}

// query handles a simple Query: measured alone, its statements' effects taken, refused if
// it would pin the session against --proxy.pin-policy.
func (cl *client) query(c *srvConn, r *request) {
	s := cl.core
	sqlb := r.body[:max(len(r.body)-1, 0)]
	sql := sqlPrefix(sqlb)
	op := pool.ClassifyOperation(sql)
	e := &entry{kind: 'Q', start: cl.batchStart, op: op, sql: sql, id: s.mgr.Identify(op, sqlb), measure: true}
	cl.batchStart = time.Time{}
	if eff := s.analysis.Analyze(sqlb); !eff.Harmless() {
		if refusal := cl.pinRefusal(c, eff.Pin); refusal != nil {
			r.body, e.errMsg = failingQuery, refusal
		} else {
			r.body, r.post = cl.queryEffect(c, e, &eff, sqlb, r.body)
		}
	}
	c.mu.Lock()
	cl.queue(c, e)
	if r.post != nil {
		cl.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
	}
	c.unnamedBy = nil // a simple Query drops the unnamed statement
	c.mu.Unlock()
}

// parse handles a Parse: a whole session's goes as it is; otherwise the unnamed statement is
// remembered to be prepared again elsewhere, and a named one is mapped onto the proxy's
// statement of its text (parseOn).
func (cl *client) parse(c *srvConn, r *request) {
	s := cl.core
	if cl.whole {
		cl.measureAs(cl.parseWhole(c, r.body))
		return
	}
	name, rest := cstring(r.body)
	sqlb, _ := cbytes(rest)
	sql := sqlPrefix(sqlb)
	op := pool.ClassifyOperation(sql)
	id := s.mgr.Identify(op, sqlb)
	cl.measureAs(op, sql, id)
	eff := s.analysis.Analyze(sqlb)
	if refusal := cl.pinRefusal(c, eff.Pin); refusal != nil {
		r.body, r.typ = cl.failRequest(c, refusal), 'B'
		return
	}
	if eff.Pin != "" {
		c.mu.Lock()
		cl.pinFor(eff.Pin, sqlb)
		c.mu.Unlock()
	}
	if name == "" {
		cl.parseUnnamed(c, r.body, eff)
		return
	}
	r.answered = true
	if c.skips(cl.batch) {
		return
	}
	if code, msg := cl.statementRefused(name, len(rest)); code != "" {
		r.body, r.typ, r.answered = cl.failRequest(c, errorBody(code, msg)), 'B', false
		return
	}
	c.mu.Lock()
	scope := cl.stmtScope()
	c.mu.Unlock()
	st := s.stmts.get(scope, registryKey(rest, sqlb), id.Untraced())
	cl.keepStmt(name, st, id)
	r.pre = cl.parseOn(c, st, name, r.pre)
}

// parseUnnamed queues the answer to a Parse of the unnamed statement, keeping its body to
// prepare it again on another connection (unnamedOn) unless it is large.
func (cl *client) parseUnnamed(c *srvConn, body []byte, eff sessionsql.Effect) {
	cl.keepUnnamedFx(eff)
	if len(body) <= 64<<10 {
		cl.unnamed = append(cl.unnamed[:0], body...)
	} else {
		cl.unnamed = nil
	}
	cl.unnamedN++
	c.mu.Lock()
	if cl.queue(c, &entry{kind: 'P'}) {
		c.unnamedBy, c.unnamedN = &cl.clientEnd, cl.unnamedN
	}
	c.mu.Unlock()
}

// bind handles a Bind: of a named statement, renamed to the proxy's statement (prepared on c
// first if need be); of the unnamed one, prepared again on c if it was parsed elsewhere. The
// statement's effect on the session is taken.
func (cl *client) bind(c *srvConn, r *request) {
	portal, rest := cbytes(r.body)
	name, params := cbytes(rest)
	e := &entry{kind: 'B'}
	eff := cl.unnamedEffect()
	if cl.whole {
		if ns, ok := cl.named[string(name)]; ok {
			eff = &ns.eff
			cl.measureAs(ns.op, ns.sql, ns.id)
		}
	} else if st := cl.stmts[string(name)]; len(name) > 0 && st != nil {
		eff = &st.eff
		var stale bool
		if r.pre, stale = cl.prepareOn(c, st, r.pre); stale {
			r.body = cl.failRequest(c, errorBody(staleCode, staleMsg))
			return
		}
		e.uses = st
		// The body lives in cl.buf: the rewrite goes to cl.rewrite.
		cl.rewrite = append(append(cl.rewrite[:0], portal...), 0)
		cl.rewrite = append(append(cl.rewrite, st.name...), 0)
		cl.rewrite = append(cl.rewrite, params...)
		r.body = cl.rewrite
		cl.measureAs(st.op, st.sql, cl.stmtID(name, st))
	} else if len(name) == 0 {
		r.pre = cl.unnamedOn(c, r.pre)
	}
	cl.bindEffect(c, e, eff)
}

// describe handles a Describe, of a named statement renamed to the proxy's as for bind.
func (cl *client) describe(c *srvConn, r *request) {
	e := &entry{kind: 'D'}
	if len(r.body) > 0 && r.body[0] == 'S' && !cl.whole {
		name, _ := cbytes(r.body[1:])
		if st := cl.stmts[string(name)]; len(name) > 0 && st != nil {
			var stale bool
			if r.pre, stale = cl.prepareOn(c, st, r.pre); stale {
				r.body, r.typ = cl.failRequest(c, errorBody(staleCode, staleMsg)), 'B'
				return
			}
			e.uses = st
			cl.rewrite = append(append(append(cl.rewrite[:0], 'S'), st.name...), 0)
			r.body = cl.rewrite
		} else if len(name) == 0 {
			r.pre = cl.unnamedOn(c, r.pre)
		}
	}
	cl.queueLocked(c, e)
}

// close handles a Close: of a named statement, answered by the proxy (the proxy's statement
// stays prepared for other clients).
func (cl *client) close(c *srvConn, r *request) {
	if cl.whole {
		if len(r.body) > 0 && r.body[0] == 'S' {
			name, _ := cbytes(r.body[1:])
			delete(cl.named, string(name))
		}
	} else if len(r.body) > 0 && r.body[0] == 'S' {
		name, _ := cstring(r.body[1:])
		if st := cl.stmts[name]; name != "" && st != nil {
			r.answered = true
			if c.skips(cl.batch) {
				return
			}
			cl.dropStmt(name, st)
			cl.answer(c, &entry{synth: closeComplete, stmtName: name, stmt: st, closed: true})
			cl.core.stmts.put(st)
			return
		}
	}
	cl.queueLocked(c, &entry{kind: 'C'})
}

// sync handles a Sync: the batch ends, measured, with what it did to the session (start-up
// values restored after a RESET in it).
func (cl *client) sync(c *srvConn, r *request) {
	if !cl.batchNamed {
		cl.batchOp, cl.batchSQL, cl.batchID = pool.OpOther, "", pool.StatementID{}
	}
	e := &entry{kind: 'S', start: cl.batchStart, op: cl.batchOp, sql: cl.batchSQL, id: cl.batchID, measure: cl.executed,
		discard: cl.batchDiscard, deallocAll: cl.batchDealloc}
	r.post = restoreQuery(cl.startWant, cl.batchResets)
	c.mu.Lock()
	cl.queue(c, e)
	if r.post != nil {
		cl.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
	}
	c.mu.Unlock()
	cl.batchResets, cl.batchDiscard, cl.batchDealloc = cl.batchResets[:0], false, false
	cl.batch++
	cl.batchStart, cl.batchNamed, cl.executed = time.Time{}, false, false
}

// answerAlone handles, without a server connection, a message of a client that holds none:
// named Parses of statements a server has prepared and Closes wait in cl.pending, and a Sync or
// Flush with nothing else in its batch is answered by the proxy. Such clients (pgbench -M
// prepared, libpq's PQprepare) do not then wait for a server connection to prepare a statement
// that another client prepared first, which could deadlock a client that serves several
// connections from one thread while others hold the server connections. A Parse of a statement
// not yet known to be valid goes to a server connection, so that its errors come at the Parse as
// PostgreSQL gives them. It reports whether it handled the message.
func (cl *client) answerAlone(typ byte, body []byte) bool {
	s := cl.core
	if cl.failed {
		if typ != 'S' {
			return true
		}
		cl.failed = false
		cl.pending = cl.pending[:0]
		ready := readyIdle
		if cl.failedReady != nil {
			ready, cl.failedReady = cl.failedReady, nil
		}
		cl.writeClient(ready)
		cl.batch++
		return true
	}
	if cl.copyLost && (typ == 'c' || typ == 'f') {
		// The end of a simple Query's COPY FROM STDIN whose server connection was lost.
		cl.copyLost = false
		ready := readyIdle
		if cl.lostTx != 0 {
			ready = readyFailed
		}
		cl.writeClient(ready)
		return true
	}
	if cl.lostTx != 0 {
		return cl.answerLostTx(typ, body)
	}
	switch typ {
	case 'P':
		name, rest := cstring(body)
		if sqlb, _ := cbytes(rest); name == "" || !s.analysis.Analyze(sqlb).Harmless() {
			// Statements that may pin the session are seen on a server connection.
			return false
		}
		if code, msg := cl.statementRefused(name, len(rest)); code != "" {
			cl.writePending()
			e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
			b, _ := e.Encode(nil)
			cl.writeClient(b)
			cl.failed = true
			return true
		}
		sqlb, _ := cbytes(rest)
		st := s.stmts.known(cl.stmtScope(), registryKey(rest, sqlb))
		if st == nil {
			return false
		}
		cl.keepStmt(name, st, s.mgr.Identify(st.op, sqlb))
		cl.pending = append(cl.pending, &entry{synth: parseComplete, stmtName: name, stmt: st})
		return true
	case 'C':
		if len(body) == 0 || body[0] != 'S' {
			return false
		}
		name, _ := cstring(body[1:])
		st := cl.stmts[name]
		if name == "" || st == nil {
			return false
		}
		cl.dropStmt(name, st)
		s.stmts.put(st)
		cl.pending = append(cl.pending, &entry{synth: closeComplete, stmtName: name, stmt: st, closed: true})
		return true
	case 'S':
		cl.writePending()
		cl.writeClient(readyIdle)
		cl.batch++
		return true
	case 'H':
		cl.writePending()
		return true
	case 'd', 'c', 'f':
		return true // no COPY runs without a server connection
	}
	return false
}

// failInBand answers a request of a client that holds no server connection, when err lets the
// client stay connected, with an ERROR as PostgreSQL gives one for a failed request: a Query or
// FunctionCall's is followed by ReadyForQuery, an extended-protocol request's skips the rest of
// its batch up to the Sync (answerAlone). It reports whether it did.
func (cl *client) failInBand(typ byte, err error) bool {
	var r *rejectError
	if !errors.As(err, &r) || !r.inBand {
		return false
	}
	cl.writePending()
	b, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: r.code, Message: r.msg}).Encode(nil)
	cl.writeClient(b)
	if typ == 'Q' || typ == 'F' {
		cl.writeClient(readyIdle)
	} else {
		cl.failed = true
	}
	return true
}

// writePending answers the waiting Parses and Closes.
func (cl *client) writePending() {
	for _, p := range cl.pending {
		cl.writeClient(p.synth)
	}
	cl.pending = cl.pending[:0]
}

// failRequest turns a client request into one the server fails (a Bind of a statement that
// does not exist), with the error replaced by the proxy's: the client gets it in-band, in its
// place among the answers, and the server skips the rest of the batch and fails the
// transaction as PostgreSQL would. It returns the Bind's body.
func (cl *client) failRequest(c *srvConn, errMsg []byte) []byte {
	cl.queueLocked(c, &entry{kind: 'B', errMsg: errMsg})
	body := append([]byte{0}, noStatement...)
	return append(body, 0, 0, 0, 0, 0, 0, 0)
}

// failingQuery is a Query body the server fails in-band, where the proxy answers a Query with
// an error of its own (entry.errMsg replaces the server's): the transaction then fails as
// PostgreSQL would fail it.
var failingQuery = []byte("SELECT 1/0\x00")

// run serves the client until it leaves: the session may go on in other goroutines (serve), and
// end in whichever of them sees the client go.
func (cl *client) run(params map[string]string) {
	cl.setState(cl.core.m.idle)
	if !cl.login(params) {
		cl.end()
		return
	}
	cl.serve()
}

// end ends the session of a client that is gone.
func (cl *client) end() {
	s := cl.core
	cl.leave()
	cl.setState(nil)
	s.m.sessionTx.Observe(float64(cl.transactions.Load()))
	cl.unpin()
	for _, st := range cl.stmts {
		s.stmts.put(st)
	}
	if cl.cr != nil {
		cl.cr.Reset(nil)
		readerPool.Put(cl.cr)
		cl.cr = nil
	}
	cl.releaseClientWriter()
	cl.ended()
}
