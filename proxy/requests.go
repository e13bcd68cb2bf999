package proxy

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/pool"
)

// noStatement names no statement on any server connection: a Bind of it fails, which is how the
// proxy makes the server fail a request in-band with the proxy's own error.
const noStatement = "pgsidecar_none"

// queue adds an entry for an answer the client expects, unless the server skips the request
// (an earlier request of its batch failed). c.mu is held.
func (t *txSession) queue(c *srvConn, e *entry) bool {
	e.batch = t.batch
	switch e.kind {
	case 'P', 'B', 'D', 'C', 'E':
		c.midBatch = true
	case 'S':
		c.midBatch = false
	}
	if c.errSkip && c.errBatch == t.batch && e.kind != 'S' {
		return false
	}
	c.queue = append(c.queue, e)
	return true
}

// queueLocked is queue under c's lock.
func (t *txSession) queueLocked(c *srvConn, e *entry) {
	c.mu.Lock()
	t.queue(c, e)
	c.mu.Unlock()
}

// answer makes up an answer for the client in its place in the stream: e.synth.
func (t *txSession) answer(c *srvConn, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		t.writeClient(e.synth)
		return
	}
	e.batch = t.batch
	c.queue = append(c.queue, e)
}

// loop relays the client's messages until it leaves or its server connection fails.
func (t *txSession) loop() {
	s := t.srv
	var (
		hdr      [5]byte
		bytesIn  int
		start    time.Time // of the batch: its first message
		batchOp  = pool.OpOther
		batchSQL string
		batchSet bool
		executed bool
	)
	setBatch := func(op pool.Operation, sql string) {
		if !batchSet || !executed {
			batchOp, batchSQL, batchSet = op, sql, true
		}
	}
	for {
		if t.cr == nil || needFlush(t.cr) {
			t.endWrite()
			t.offerFlush()
			if t.current() == nil {
				t.releaseClientWriter()
			}
			if bytesIn > 0 {
				s.m.bytesIn.Add(float64(bytesIn))
				bytesIn = 0
			}
		}
		if s.cfg.IdleTransactionTimeout > 0 {
			t.armIdleTimeout()
		}
		if err := t.readHeader(hdr[:]); err != nil {
			if err == errIdleWait && !t.idleTooLong() {
				continue
			}
			return
		}
		if !t.idleDeadline.IsZero() {
			t.idleDeadline = time.Time{}
			_ = t.client.SetReadDeadline(time.Time{})
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			s.refuse(t, reject("08P01", "invalid message length %d", n+4))
			t.flushClient()
			return
		}
		if n > s.cfg.MaxMessageSize {
			s.refuse(t, reject("54000", "message of type %q too large (more than %d bytes)", typ, s.cfg.MaxMessageSize))
			t.flushClient()
			s.endOversized(t.session, t.cr, n)
			return
		}
		bytesIn += n + 5
		if typ == 'X' {
			t.terminated = true
			return
		}
		// Messages that need no server connection when none is held.
		if t.hasUndo.Load() {
			t.applyUndone()
		}
		var body []byte
		var err error
		switch typ {
		case 'Q', 'P', 'B', 'D', 'C':
			if body, err = t.readBody(n); err != nil {
				return
			}
		}
		if t.current() == nil && t.answerAlone(typ, body) {
			if body == nil {
				if _, err := t.cr.Discard(n); err != nil {
					return
				}
			}
			continue
		}
		c, err := t.hold()
		if err != nil {
			if body == nil {
				_, _ = t.cr.Discard(n)
			}
			if t.failInBand(typ, err) {
				continue
			}
			s.refuse(t, err)
			t.flushClient()
			return
		}
		if start.IsZero() {
			start = time.Now() // the wait for a server connection is not the query's time
		}
		var pre []byte  // messages the proxy sends first, on the client's behalf
		var post []byte // and after, on the client's behalf
		for _, p := range t.pending {
			if p.closed {
				t.answer(c, p)
			} else {
				pre = t.parseOn(c, p.stmt, p.stmtName, pre)
			}
		}
		t.pending = t.pending[:0]
		switch typ {
		case 'Q':
			sqlb := body[:max(len(body)-1, 0)]
			sql := sqlPrefix(sqlb)
			e := &entry{kind: 'Q', start: start, op: pool.ClassifyOperation(sql), sql: sql, measure: true}
			start = time.Time{}
			if eff := s.analysis.Analyze(sqlb); !eff.Harmless() {
				if refusal := t.pinRefusal(c, eff.Pin); refusal != nil {
					body, e.errMsg = failingQuery, refusal
				} else {
					body, post = t.queryEffect(c, e, &eff, sqlb, body)
				}
			}
			c.mu.Lock()
			t.queue(c, e)
			if post != nil {
				t.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
			}
			c.unnamedBy = nil // a simple Query drops the unnamed statement
			c.mu.Unlock()
		case 'P':
			if t.whole {
				op, sql := t.parseWhole(c, body)
				setBatch(op, sql)
				break
			}
			name, rest := cstring(body)
			sqlb, _ := cbytes(rest)
			sql := sqlPrefix(sqlb)
			setBatch(pool.ClassifyOperation(sql), sql)
			eff := s.analysis.Analyze(sqlb)
			if refusal := t.pinRefusal(c, eff.Pin); refusal != nil {
				body = t.failRequest(c, refusal)
				typ = 'B'
				break
			}
			if eff.Pin != "" {
				c.mu.Lock()
				t.pinFor(eff.Pin, sqlb)
				c.mu.Unlock()
			}
			if name == "" {
				t.unnamedFx = eff
				if len(body) <= 64<<10 {
					t.unnamed = append(t.unnamed[:0], body...)
				} else {
					t.unnamed = nil
				}
				t.unnamedN++
				c.mu.Lock()
				if t.queue(c, &entry{kind: 'P'}) {
					c.unnamedBy, c.unnamedN = t, t.unnamedN
				}
				c.mu.Unlock()
				break
			}
			c.mu.Lock()
			skipped := c.errSkip && c.errBatch == t.batch
			c.mu.Unlock()
			if skipped {
				continue
			}
			if code, msg := t.statementRefused(name, len(rest)); code != "" {
				body = t.failRequest(c, errorBody(code, msg))
				typ = 'B'
				break
			}
			c.mu.Lock()
			scope := t.stmtScope()
			c.mu.Unlock()
			st := s.stmts.get(scope, string(rest))
			t.keepStmt(name, st)
			if pre = t.parseOn(c, st, name, pre); len(pre) > 0 {
				_, _ = t.sw.Write(pre)
			}
			continue
		case 'B':
			portal, rest := cbytes(body)
			name, params := cbytes(rest)
			e := &entry{kind: 'B'}
			eff := &t.unnamedFx
			if t.whole {
				if ns, ok := t.named[string(name)]; ok {
					eff = &ns.eff
					setBatch(ns.op, ns.sql)
				}
			} else if st := t.stmts[string(name)]; len(name) > 0 && st != nil {
				eff = &st.eff
				var stale bool
				if pre, stale = t.prepareOn(c, st, pre); stale {
					body = t.failRequest(c, errorBody(staleCode, staleMsg))
					break
				}
				e.uses = st
				// The body lives in t.buf: the rewrite goes to t.rewrite.
				t.rewrite = append(append(t.rewrite[:0], portal...), 0)
				t.rewrite = append(append(t.rewrite, st.name...), 0)
				t.rewrite = append(t.rewrite, params...)
				body = t.rewrite
				setBatch(st.op, st.sql)
			} else if len(name) == 0 {
				pre = t.unnamedOn(c, pre)
			}
			t.bindEffect(c, e, eff)
		case 'D':
			e := &entry{kind: 'D'}
			if len(body) > 0 && body[0] == 'S' && !t.whole {
				name, _ := cbytes(body[1:])
				if st := t.stmts[string(name)]; len(name) > 0 && st != nil {
					var stale bool
					if pre, stale = t.prepareOn(c, st, pre); stale {
						body, typ = t.failRequest(c, errorBody(staleCode, staleMsg)), 'B'
						break
					}
					e.uses = st
					t.rewrite = append(append(append(t.rewrite[:0], 'S'), st.name...), 0)
					body = t.rewrite
				} else if len(name) == 0 {
					pre = t.unnamedOn(c, pre)
				}
			}
			t.queueLocked(c, e)
		case 'C':
			if t.whole {
				if len(body) > 0 && body[0] == 'S' {
					name, _ := cbytes(body[1:])
					delete(t.named, string(name))
				}
			} else if len(body) > 0 && body[0] == 'S' {
				name, _ := cstring(body[1:])
				if st := t.stmts[name]; name != "" && st != nil {
					c.mu.Lock()
					skipped := c.errSkip && c.errBatch == t.batch
					c.mu.Unlock()
					if skipped {
						continue
					}
					t.dropStmt(name, st)
					t.answer(c, &entry{synth: closeComplete, stmtName: name, stmt: st, closed: true})
					s.stmts.put(st)
					continue
				}
			}
			t.queueLocked(c, &entry{kind: 'C'})
		case 'E':
			executed = true
			t.queueLocked(c, &entry{kind: 'E'})
		case 'S':
			if !batchSet {
				batchOp, batchSQL = pool.OpOther, ""
			}
			sync := &entry{kind: 'S', start: start, op: batchOp, sql: batchSQL, measure: executed,
				discard: t.batchDiscard, deallocAll: t.batchDealloc}
			post = restoreQuery(t.startWant, t.batchResets)
			c.mu.Lock()
			t.queue(c, sync)
			if post != nil {
				t.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
			}
			c.mu.Unlock()
			t.batchResets, t.batchDiscard, t.batchDealloc = t.batchResets[:0], false, false
			t.batch++
			start, batchSet, executed = time.Time{}, false, false
		case 'F':
			t.queueLocked(c, &entry{kind: 'F', start: start, op: pool.OpOther, sql: "function call", measure: true})
			start = time.Time{}
		}
		if len(pre) > 0 {
			_, _ = t.sw.Write(pre)
		}
		if body != nil {
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
			hdr[0] = typ
			_, _ = t.sw.Write(hdr[:])
			_, _ = t.sw.Write(body)
		} else {
			_, _ = t.sw.Write(hdr[:])
			if readErr, _ := copyBody(t.sw, t.cr, n); readErr != nil {
				return
			}
		}
		if post != nil {
			_, _ = t.sw.Write(post)
			post = nil
		}
		if cap(t.buf) > 1<<20 {
			t.buf = nil
		}
		if cap(t.rewrite) > 1<<20 {
			t.rewrite = nil
		}
	}
}

// answerAlone handles, without a server connection, a message of a client that holds none:
// named Parses of statements a server has prepared and Closes wait in t.pending, and a Sync or
// Flush with nothing else in its batch is answered by the proxy. Such clients (pgbench -M
// prepared, libpq's PQprepare) do not then wait for a server connection to prepare a statement
// that another client prepared first, which could deadlock a client that serves several
// connections from one thread while others hold the server connections. A Parse of a statement
// not yet known to be valid goes to a server connection, so that its errors come at the Parse as
// PostgreSQL gives them. It reports whether it handled the message.
func (t *txSession) answerAlone(typ byte, body []byte) bool {
	s := t.srv
	if t.failed {
		if typ != 'S' {
			return true
		}
		t.failed = false
		t.pending = t.pending[:0]
		t.writeClient(readyIdle)
		t.batch++
		return true
	}
	switch typ {
	case 'P':
		name, rest := cstring(body)
		if sqlb, _ := cbytes(rest); name == "" || !s.analysis.Analyze(sqlb).Harmless() {
			// Statements that may pin the session are seen on a server connection.
			return false
		}
		if code, msg := t.statementRefused(name, len(rest)); code != "" {
			t.writePending()
			e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
			b, _ := e.Encode(nil)
			t.writeClient(b)
			t.failed = true
			return true
		}
		st := s.stmts.known(t.stmtScope(), string(rest))
		if st == nil {
			return false
		}
		t.keepStmt(name, st)
		t.pending = append(t.pending, &entry{synth: parseComplete, stmtName: name, stmt: st})
		return true
	case 'C':
		if len(body) == 0 || body[0] != 'S' {
			return false
		}
		name, _ := cstring(body[1:])
		st := t.stmts[name]
		if name == "" || st == nil {
			return false
		}
		t.dropStmt(name, st)
		s.stmts.put(st)
		t.pending = append(t.pending, &entry{synth: closeComplete, stmtName: name, stmt: st, closed: true})
		return true
	case 'S':
		t.writePending()
		t.writeClient(readyIdle)
		t.batch++
		return true
	case 'H':
		t.writePending()
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
func (t *txSession) failInBand(typ byte, err error) bool {
	var r *rejectError
	if !errors.As(err, &r) || !r.inBand {
		return false
	}
	t.writePending()
	b, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: r.code, Message: r.msg}).Encode(nil)
	t.writeClient(b)
	if typ == 'Q' || typ == 'F' {
		t.writeClient(readyIdle)
	} else {
		t.failed = true
	}
	return true
}

// writePending answers the waiting Parses and Closes.
func (t *txSession) writePending() {
	for _, p := range t.pending {
		t.writeClient(p.synth)
	}
	t.pending = t.pending[:0]
}

// failRequest turns a client request into one the server fails (a Bind of a statement that
// does not exist), with the error replaced by the proxy's: the client gets it in-band, in its
// place among the answers, and the server skips the rest of the batch and fails the
// transaction as PostgreSQL would. It returns the Bind's body.
func (t *txSession) failRequest(c *srvConn, errMsg []byte) []byte {
	t.queueLocked(c, &entry{kind: 'B', errMsg: errMsg})
	body := append([]byte{0}, noStatement...)
	return append(body, 0, 0, 0, 0, 0, 0, 0)
}

// failingQuery is a Query body the server fails in-band, where the proxy answers a Query with
// an error of its own (entry.errMsg replaces the server's): the transaction then fails as
// PostgreSQL would fail it.
var failingQuery = []byte("SELECT 1/0\x00")
