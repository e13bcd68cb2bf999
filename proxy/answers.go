package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// The server side's reading of answers: each server connection's goroutine reads what the
// server sends and forwards it to the client holding the connection, in the order of the
// connection's queue.

// answerReader is readLoop's state from one server message to the next.
type answerReader struct {
	hdr      [5]byte
	body     []byte
	out      *clientEnd // written to since the last flush
	bytesOut int
	fatal    bool // the server said FATAL: it ends the session itself, and says why
	idle     bool // the last message was a ReadyForQuery: the server waits for a request
}

// answer is one server message on its way to the client holding the connection.
type answer struct {
	typ     byte // as the server sent it
	as      byte // as the client gets it: an EmptyQueryResponse may become a CommandComplete
	n       int
	body    []byte // read when inspected, else copied through
	inspect bool
	h       *entry     // the request it answers: the head of the queue
	cl      *clientEnd // the client holding the connection when it came
	forward bool       // the client gets it
	replace []byte     // the body the client gets instead
	prev    byte       // a ReadyForQuery's: the transaction status before it
	ends    bool       // a FATAL error kept from a client that stays: it answers no request
}

// readLoop forwards the server's messages until the connection fails or retire stops it. A
// connection lost is forgotten, and closed, only once the loop has left its read.
func (c *srvConn) readLoop() {
	defer close(c.exited)
	var rd answerReader
	for {
		if c.fr != nil && !c.readRaw(c.fr, &rd) {
			break
		}
		if !c.step(&rd) {
			break
		}
	}
	if c.forgotten {
		c.home.forget(c)
	}
}

// step forwards the server's next message, waiting for it if need be. It reports false when
// the connection is done with.
func (c *srvConn) step(rd *answerReader) bool {
	if needFlush(c.sr) {
		rd.flush(c.core)
	}
	a, ok := c.next(rd)
	if !ok {
		return false
	}
	rd.idle = a.typ == 'Z'
	c.decide(&a, rd)
	if !c.deliver(&a, rd) {
		return false
	}
	if a.ends {
		return true
	}
	switch a.typ {
	case 'D', 'd', 'N', 'A', 'S', 't', 'G', 'H', 'W', 'c':
		return true // never the last answer to a request
	}
	c.advance(&a, rd)
	return true
}

// flush sends the client what was written to it, and counts the bytes read.
func (rd *answerReader) flush(s *core) {
	if rd.out != nil {
		rd.out.flushClient()
		rd.out = nil
	}
	if rd.bytesOut > 0 {
		s.m.bytesOut.Add(float64(rd.bytesOut))
		rd.bytesOut = 0
	}
}

// next reads the server's next message: its header, and its body when the proxy inspects it.
// It reports false when the connection is done with: lost, or stopped by retire.
func (c *srvConn) next(rd *answerReader) (answer, bool) {
	got, err := io.ReadFull(c.sr, rd.hdr[:])
	if err != nil {
		c.mu.Lock()
		stopping := c.stopping
		if stopping && (got != 0 || !isTimeout(err)) {
			c.broken = true
		}
		c.mu.Unlock()
		if !stopping {
			c.lost(err, rd.fatal)
		}
		// Else retire stopped the read, and gives the connection back or closes it.
		return answer{}, false
	}
	a := answer{typ: rd.hdr[0], as: rd.hdr[0], n: int(binary.BigEndian.Uint32(rd.hdr[1:])) - 4}
	if a.n < 0 || (a.typ == 'E' || a.typ == 'S' || a.typ == 'Z' || a.typ == 'C') && a.n > 1<<20 || a.typ == 'Z' && a.n != 1 {
		c.lost(errors.New("invalid message from server"), rd.fatal)
		return answer{}, false
	}
	// The messages the proxy reads: the rest are copied through.
	a.inspect = a.typ == 'Z' || a.typ == 'E' || a.typ == 'S' || a.typ == 'I' || a.typ == 'D' && c.capturing.Load() || a.typ == 'T' && c.describing()
	if a.inspect {
		if cap(rd.body) < a.n {
			rd.body = make([]byte, a.n)
		}
		a.body = rd.body[:a.n]
		if _, err := io.ReadFull(c.sr, a.body); err != nil {
			c.lost(err, rd.fatal)
			return answer{}, false
		}
	}
	rd.bytesOut += a.n + 5
	return a, true
}

// decide, under the lock, whether and as what the client gets a, and takes what a says about
// the session. The answer's entry stays at the head of the queue while a is written (deliver),
// so no made-up answer can overtake it.
func (c *srvConn) decide(a *answer, rd *answerReader) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a.typ != 'N' && a.typ != 'A' && a.typ != 'S' && c.emitSynth() {
		rd.out = c.holder
	}
	a.cl, a.h = c.holder, c.head()
	h := a.h
	a.forward = a.cl != nil && (h == nil || !h.skip)
	switch a.typ {
	case 'S':
		name, rest := cstring(a.body)
		value, _ := cstring(rest)
		c.reported[name] = value
		if a.forward {
			// A client's request changed a setting (in a function, maybe, out of the
			// analysis's sight): read the settings back before anyone else gets the
			// connection.
			c.dirty++
		}
	case 'D':
		if h != nil && h.readBack {
			if row, ok := textRow(a.body); ok {
				h.rows = append(h.rows, row)
			} else {
				h.failed = true
			}
		}
	case 'E':
		c.serverError(a, rd)
	case 'I':
		if h != nil && h.emptyAs != "" {
			a.as = 'C'
			a.replace = append([]byte(h.emptyAs), 0)
		}
	case 'Z':
		if h != nil {
			a.prev = c.status
			c.ready(h, a.body[0])
		}
	case 'G', 'H', 'W':
		c.copying = a.typ
	case 'T', 'n':
		if h != nil && h.describes != nil {
			c.checkResult(h, a.typ, a.body)
		}
	}
}

// serverError takes an ErrorResponse: the first of its batch is kept for measuring, a FATAL
// one breaks the connection, and a statement whose use failed may be stale or no longer
// valid. c.mu is held.
func (c *srvConn) serverError(a *answer, rd *answerReader) {
	h := a.h
	e := decodeError(a.body)
	if e.Severity == "FATAL" || e.Severity == "PANIC" {
		rd.fatal = true
		// The server is ending the session (terminated, shut down): no client must check the
		// connection out before the read of its end drops it.
		c.broken = true
		if c.keepsClient() {
			// The client stays connected: it gets the proxy's ERROR when the read of the
			// connection's end drops it (lost), not the server's FATAL.
			a.forward, a.ends = false, true
			return
		}
	}
	if c.batchErr == nil {
		c.batchErr = e
	}
	if h != nil && h.uses != nil {
		switch {
		case e.Code == staleCode:
			c.core.stmts.markStale(h.uses)
		case strings.HasPrefix(e.Code, "42"):
			// No longer valid as it stands (a dropped table): the next Parse of it goes to a
			// server, to fail there as it would directly.
			h.uses.valid.Store(false)
		}
	}
	// The client's request failed, also when the proxy sent it on its behalf (a statement
	// prepared for its Bind).
	a.forward = a.cl != nil && (h == nil || h.done == nil && !h.quiet)
	if h != nil && h.errMsg != nil {
		a.replace = h.errMsg
	}
}

// deliver writes a to the client, or drops it, without the lock: a client slow to read must
// not stop its own requests from being queued. It reports false when the connection is lost.
func (c *srvConn) deliver(a *answer, rd *answerReader) bool {
	switch {
	case !a.forward:
		if !a.inspect {
			if _, err := c.sr.Discard(a.n); err != nil {
				c.lost(err, rd.fatal)
				return false
			}
		}
	case a.replace != nil:
		_ = a.cl.writeMsg(a.as, a.replace, nil, 0)
	case a.inspect:
		_ = a.cl.writeMsg(a.as, a.body, nil, 0)
	default:
		if err := a.cl.writeMsg(a.as, nil, c.sr, a.n); err != nil {
			c.lost(err, rd.fatal)
			return false
		}
	}
	if a.forward {
		rd.out = a.cl
	}
	if a.as == 'Z' && rd.out != nil {
		rd.out.flushClient()
		rd.out = nil
	}
	return true
}

// advance, after the last answer to a request (or an error that ends it), takes the request
// off the queue: a ReadyForQuery applies what its Query or Sync did and may give the
// connection back; an extended-protocol request's error skips the rest of its batch.
func (c *srvConn) advance(a *answer, rd *answerReader) {
	c.mu.Lock()
	cl, h := a.cl, a.h
	if c.holder != cl {
		cl = nil // it left meanwhile
	}
	if h != nil && len(c.queue) > 0 && c.queue[0] == h {
		switch {
		case a.typ == 'E':
			h.failed = true
			if h.kind != 'Q' && h.kind != 'F' && h.kind != 'S' {
				c.failBatch(h)
			}
		case a.typ == 'Z':
			c.pop()
			c.readyForQuery(h, a.prev, a.body[0], cl)
		case endsRequest(h.kind, a.typ):
			if a.typ == '1' && h.prepared != nil {
				h.prepared.valid.Store(true)
				if h.reparse {
					c.stmts.keep(h.prepared) // an earlier Parse of it may have failed
				}
			}
			c.pop()
		}
	}
	if a.typ == 'Z' || a.typ == 'E' {
		if c.emitSynth() && c.holder != nil {
			rd.out = c.holder
		}
	}
	if a.typ == 'Z' {
		c.settle()
	}
	c.mu.Unlock()
	if a.typ == 'Z' && rd.out != nil {
		rd.out.flushClient()
		rd.out = nil
	}
	if a.typ == 'Z' && a.cl != nil && a.cl.holdsNone() {
		// The client's goroutine let go of its writer before it waited for its next request,
		// but this answer took one: give it back, or an idle client keeps 32 KiB.
		a.cl.releaseClientWriter()
	}
}

// failBatch handles an error answer to h, an extended-protocol request: the server now skips
// the batch's messages up to its Sync, so their entries (and the answers the proxy was to make
// up for them) go.
func (c *srvConn) failBatch(h *entry) {
	c.errSkip, c.errBatch = true, h.batch
	keep := c.queue[:0]
	for i, e := range c.queue {
		if i == 0 || e.batch != h.batch || e.kind == 'S' || e.kind == 'Q' {
			keep = append(keep, e)
			continue
		}
		switch {
		case e.prepared != nil && !e.reparse:
			c.stmts.remove(e.prepared)
		case e.closes != nil:
			c.stmts.keep(e.closes) // the server skipped its Close: still prepared
		}
		e.report(false)
		if e.stmt != nil && c.holder != nil {
			c.holder.undo(e)
		}
	}
	for i := len(keep); i < len(c.queue); i++ {
		c.queue[i] = nil
	}
	c.queue = keep
	c.pop() // h itself, at the head
	h.report(false)
	if h.prepared != nil {
		c.stmts.remove(h.prepared)
	}
	if h.stmt != nil && c.holder != nil {
		c.holder.undo(h) // a named Parse that failed: the client has no such statement
	}
}

// describing reports whether the answer awaited is that of an injected Describe.
func (c *srvConn) describing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.head()
	return h != nil && h.describes != nil
}

// checkResult records the result type a server answered h's Describe with, the first time the
// statement is prepared, and otherwise compares it with the recorded one: a statement whose
// result type changed (DDL) is stale, as PostgreSQL would find where it was prepared before,
// and is closed again here, where it was prepared with the new one. c.mu is held.
func (c *srvConn) checkResult(h *entry, typ byte, body []byte) {
	st := h.describes
	sig := resultSig(typ, body)
	differs := false
	if resultVaries(st.sql) {
		// FETCH and EXECUTE describe the cursor or statement they name at the time, if it
		// exists: their result type is not the statement's own.
		h.report(false)
		return
	}
	if !st.result.CompareAndSwap(nil, &sig) && *st.result.Load() != sig {
		differs = true
		c.core.stmts.markStale(st)
		c.stmts.remove(st)
		c.closeDue = append(c.closeDue, st)
	}
	h.report(differs)
}

// ready takes what a ReadyForQuery says before the client can see it and send its next
// request, which may depend on it: the transaction status, and what the Query or Sync it ends
// did to the server connection's statements and settings (a request sent on the strength of
// the old ones would find them changed). A Sync's batch may have failed at any of its
// requests: DISCARD ALL or DEALLOCATE ALL in it then did nothing. c.mu is held.
func (c *srvConn) ready(h *entry, status byte) {
	c.status = status
	c.readyAt = time.Now()
	c.copying = 0
	if c.errSkip && c.errBatch == h.batch && h.kind == 'S' {
		c.errSkip = false
	}
	if h.failed || c.batchErr != nil {
		return
	}
	cl := c.holder
	if h.discard || h.deallocAll {
		c.stmts.clear()
		c.unnamedBy = nil
		if cl != nil && h.kind == 'S' {
			cl.stmtsGone.Store(true) // a simple Query's forgot them when it was sent
		}
	}
	if h.discard {
		clear(c.params)
		c.reset = h.skip
		if cl != nil && unpinnedByDiscard[cl.pin] {
			cl.unpin() // DISCARD ALL drops what pinned the session
		}
	}
}

// readyForQuery completes a Query or Sync, now answered and taken off the queue (ready took
// what it did to the connection): the client waiting on its done, a read-back's settings, and
// its measurement. c.mu is held.
func (c *srvConn) readyForQuery(h *entry, prev, status byte, cl *clientEnd) {
	s := c.core
	batchErr := c.batchErr
	c.batchErr = nil
	if h.done != nil {
		var err error
		if batchErr != nil {
			err = batchErr
		}
		h.done <- err
	}
	if h.readBack {
		c.readBackDone(h, status, cl)
	}
	if h.skip || cl == nil {
		return
	}
	if h.measure {
		var qerr error
		if batchErr != nil {
			qerr = batchErr
		}
		s.mgr.RecordStatement(h.op, h.sql, h.id, time.Since(h.start), qerr)
	}
	if status == 'I' && (prev != 'I' || h.measure) {
		cl.transactions.Add(1)
	}
	if prev != 'I' && status == 'I' {
		outcome := "commit"
		switch {
		case prev == 'E' || batchErr != nil:
			outcome = "error"
		case h.op == pool.OpRollback:
			outcome = "rollback"
		}
		s.m.transactions.WithLabelValues(outcome).Inc()
	}
}

// endsRequest reports whether a server message of type typ is the last answer to a request of kind.
func endsRequest(kind, typ byte) bool {
	switch kind {
	case 'P':
		return typ == '1'
	case 'B':
		return typ == '2'
	case 'D':
		return typ == 'T' || typ == 'n'
	case 'E':
		return typ == 'C' || typ == 'I' || typ == 's'
	case 'C':
		return typ == '3'
	}
	return false // Query, Sync and FunctionCall end at ReadyForQuery
}

// emitSynth writes the made-up answers at the head of the queue: every answer before them has
// been forwarded. It reports whether it wrote any.
func (c *srvConn) emitSynth() bool {
	wrote := false
	for len(c.queue) > 0 && c.queue[0].kind == 0 {
		if cl := c.holder; cl != nil {
			cl.writeClient(c.queue[0].synth)
			wrote = true
		}
		c.pop()
	}
	return wrote
}
