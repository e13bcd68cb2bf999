package proxy

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/pool"
)

// loop relays the client's messages until it leaves or its server connection fails.
func (cl *client) loop() {
	s := cl.core
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
		if cl.cr == nil || needFlush(cl.cr) {
			cl.endWrite()
			cl.offerFlush()
			if cl.current() == nil {
				cl.releaseClientWriter()
			}
			if bytesIn > 0 {
				s.m.bytesIn.Add(float64(bytesIn))
				bytesIn = 0
			}
		}
		if s.cfg.IdleTransactionTimeout > 0 {
			cl.armIdleTimeout()
		}
		if err := cl.readHeader(hdr[:]); err != nil {
			if err == errIdleWait && !cl.idleTooLong() {
				continue
			}
			return
		}
		if !cl.idleDeadline.IsZero() {
			cl.idleDeadline = time.Time{}
			_ = cl.conn.SetReadDeadline(time.Time{})
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			s.refuse(cl, reject("08P01", "invalid message length %d", n+4))
			cl.flushClient()
			return
		}
		if n > s.cfg.MaxMessageSize {
			s.refuse(cl, reject("54000", "message of type %q too large (more than %d bytes)", typ, s.cfg.MaxMessageSize))
			cl.flushClient()
			cl.endOversized(n)
			return
		}
		bytesIn += n + 5
		if typ == 'X' {
			cl.terminated = true
			return
		}
		// Messages that need no server connection when none is held.
		if cl.hasUndo.Load() {
			cl.applyUndone()
		}
		var body []byte
		var err error
		switch typ {
		case 'Q', 'P', 'B', 'D', 'C':
			if body, err = cl.readBody(n); err != nil {
				return
			}
		}
		if cl.current() == nil && cl.answerAlone(typ, body) {
			if body == nil {
				if _, err := cl.cr.Discard(n); err != nil {
					return
				}
			}
			continue
		}
		c, err := cl.hold()
		if err != nil {
			if body == nil {
				_, _ = cl.cr.Discard(n)
			}
			if cl.failInBand(typ, err) {
				continue
			}
			s.refuse(cl, err)
			cl.flushClient()
			return
		}
		if start.IsZero() {
			start = time.Now() // the wait for a server connection is not the query's time
		}
		var pre []byte  // messages the proxy sends first, on the client's behalf
		var post []byte // and after, on the client's behalf
		for _, p := range cl.pending {
			if p.closed {
				cl.answer(c, p)
			} else {
				pre = cl.parseOn(c, p.stmt, p.stmtName, pre)
			}
		}
		cl.pending = cl.pending[:0]
		switch typ {
		case 'Q':
			sqlb := body[:max(len(body)-1, 0)]
			sql := sqlPrefix(sqlb)
			e := &entry{kind: 'Q', start: start, op: pool.ClassifyOperation(sql), sql: sql, measure: true}
			start = time.Time{}
			if eff := s.analysis.Analyze(sqlb); !eff.Harmless() {
				if refusal := cl.pinRefusal(c, eff.Pin); refusal != nil {
					body, e.errMsg = failingQuery, refusal
				} else {
					body, post = cl.queryEffect(c, e, &eff, sqlb, body)
				}
			}
			c.mu.Lock()
			cl.queue(c, e)
			if post != nil {
				cl.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
			}
			c.unnamedBy = nil // a simple Query drops the unnamed statement
			c.mu.Unlock()
		case 'P':
			if cl.whole {
				op, sql := cl.parseWhole(c, body)
				setBatch(op, sql)
				break
			}
			name, rest := cstring(body)
			sqlb, _ := cbytes(rest)
			sql := sqlPrefix(sqlb)
			setBatch(pool.ClassifyOperation(sql), sql)
			eff := s.analysis.Analyze(sqlb)
			if refusal := cl.pinRefusal(c, eff.Pin); refusal != nil {
				body = cl.failRequest(c, refusal)
				typ = 'B'
				break
			}
			if eff.Pin != "" {
				c.mu.Lock()
				cl.pinFor(eff.Pin, sqlb)
				c.mu.Unlock()
			}
			if name == "" {
				cl.unnamedFx = eff
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
				break
			}
			c.mu.Lock()
			skipped := c.errSkip && c.errBatch == cl.batch
			c.mu.Unlock()
			if skipped {
				continue
			}
			if code, msg := cl.statementRefused(name, len(rest)); code != "" {
				body = cl.failRequest(c, errorBody(code, msg))
				typ = 'B'
				break
			}
			c.mu.Lock()
			scope := cl.stmtScope()
			c.mu.Unlock()
			st := s.stmts.get(scope, string(rest))
			cl.keepStmt(name, st)
			if pre = cl.parseOn(c, st, name, pre); len(pre) > 0 {
				_, _ = cl.sw.Write(pre)
			}
			continue
		case 'B':
			portal, rest := cbytes(body)
			name, params := cbytes(rest)
			e := &entry{kind: 'B'}
			eff := &cl.unnamedFx
			if cl.whole {
				if ns, ok := cl.named[string(name)]; ok {
					eff = &ns.eff
					setBatch(ns.op, ns.sql)
				}
			} else if st := cl.stmts[string(name)]; len(name) > 0 && st != nil {
				eff = &st.eff
				var stale bool
				if pre, stale = cl.prepareOn(c, st, pre); stale {
					body = cl.failRequest(c, errorBody(staleCode, staleMsg))
					break
				}
				e.uses = st
				// The body lives in cl.buf: the rewrite goes to cl.rewrite.
				cl.rewrite = append(append(cl.rewrite[:0], portal...), 0)
				cl.rewrite = append(append(cl.rewrite, st.name...), 0)
				cl.rewrite = append(cl.rewrite, params...)
				body = cl.rewrite
				setBatch(st.op, st.sql)
			} else if len(name) == 0 {
				pre = cl.unnamedOn(c, pre)
			}
			cl.bindEffect(c, e, eff)
		case 'D':
			e := &entry{kind: 'D'}
			if len(body) > 0 && body[0] == 'S' && !cl.whole {
				name, _ := cbytes(body[1:])
				if st := cl.stmts[string(name)]; len(name) > 0 && st != nil {
					var stale bool
					if pre, stale = cl.prepareOn(c, st, pre); stale {
						body, typ = cl.failRequest(c, errorBody(staleCode, staleMsg)), 'B'
						break
					}
					e.uses = st
					cl.rewrite = append(append(append(cl.rewrite[:0], 'S'), st.name...), 0)
					body = cl.rewrite
				} else if len(name) == 0 {
					pre = cl.unnamedOn(c, pre)
				}
			}
			cl.queueLocked(c, e)
		case 'C':
			if cl.whole {
				if len(body) > 0 && body[0] == 'S' {
					name, _ := cbytes(body[1:])
					delete(cl.named, string(name))
				}
			} else if len(body) > 0 && body[0] == 'S' {
				name, _ := cstring(body[1:])
				if st := cl.stmts[name]; name != "" && st != nil {
					c.mu.Lock()
					skipped := c.errSkip && c.errBatch == cl.batch
					c.mu.Unlock()
					if skipped {
						continue
					}
					cl.dropStmt(name, st)
					cl.answer(c, &entry{synth: closeComplete, stmtName: name, stmt: st, closed: true})
					s.stmts.put(st)
					continue
				}
			}
			cl.queueLocked(c, &entry{kind: 'C'})
		case 'E':
			executed = true
			cl.queueLocked(c, &entry{kind: 'E'})
		case 'S':
			if !batchSet {
				batchOp, batchSQL = pool.OpOther, ""
			}
			sync := &entry{kind: 'S', start: start, op: batchOp, sql: batchSQL, measure: executed,
				discard: cl.batchDiscard, deallocAll: cl.batchDealloc}
			post = restoreQuery(cl.startWant, cl.batchResets)
			c.mu.Lock()
			cl.queue(c, sync)
			if post != nil {
				cl.queue(c, &entry{kind: 'Q', skip: true, quiet: true})
			}
			c.mu.Unlock()
			cl.batchResets, cl.batchDiscard, cl.batchDealloc = cl.batchResets[:0], false, false
			cl.batch++
			start, batchSet, executed = time.Time{}, false, false
		case 'F':
			cl.queueLocked(c, &entry{kind: 'F', start: start, op: pool.OpOther, sql: "function call", measure: true})
			start = time.Time{}
		}
		if len(pre) > 0 {
			_, _ = cl.sw.Write(pre)
		}
		if body != nil {
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
			hdr[0] = typ
			_, _ = cl.sw.Write(hdr[:])
			_, _ = cl.sw.Write(body)
		} else {
			_, _ = cl.sw.Write(hdr[:])
			if readErr, _ := copyBody(cl.sw, cl.cr, n); readErr != nil {
				return
			}
		}
		if post != nil {
			_, _ = cl.sw.Write(post)
			post = nil
		}
		if cap(cl.buf) > 1<<20 {
			cl.buf = nil
		}
		if cap(cl.rewrite) > 1<<20 {
			cl.rewrite = nil
		}
	}
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
		cl.writeClient(readyIdle)
		cl.batch++
		return true
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
		st := s.stmts.known(cl.stmtScope(), string(rest))
		if st == nil {
			return false
		}
		cl.keepStmt(name, st)
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

// run serves the client until it leaves.
func (cl *client) run(params map[string]string) {
	s := cl.core
	cl.setState(s.m.idle)
	defer func() {
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
	}()
	if !cl.login(params) {
		return
	}
	cl.loop()
}
