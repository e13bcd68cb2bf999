package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/prometheus/client_golang/prometheus"
)

// The client side of transaction mode: one goroutine per client reads its messages, checks out
// a server connection when a request needs one, maps the client's prepared statements onto the
// proxy's and queues an entry for every answer it expects (see entry). The server connection's
// readLoop forwards the answers and gives the connection back.

// Idle clients hold no buffers: readers and writers come from these pools while messages are in
// flight.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ioBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, ioBufSize) }}
)

// txSession is a client session in transaction mode.
type txSession struct {
	*session
	startWant map[string]string   // settings from the startup packet, by lower-cased name
	want      map[string]string   // the session's own settings as last read back; guarded by the holding connection's mu
	custom    map[string]struct{} // custom settings the client has named, read back by name
	wantPin   string              // a pin to take at the next checkout (asked for at login)
	// whole: session mode, a client pinned from login. Its statements are the server's, relayed
	// under the client's names; named keeps what measuring their executions needs.
	whole     bool
	named     map[string]namedStmt
	stmts     map[string]*pstmt // the client's named statements
	stmtBytes int               // text the client's named statements hold, bounded by maxClientStatementBytes
	unnamed   []byte            // the body of the client's last unnamed Parse, to prepare it again elsewhere
	unnamedN  uint64            // counts the client's unnamed Parses
	unnamedFx sessionsql.Effect // what the unnamed statement does to the session
	// What the current extended-protocol batch does, taken at its Sync.
	batchResets  []string
	batchDiscard bool // DISCARD ALL
	batchDealloc bool // DEALLOCATE ALL
	// pending: named Parses and Closes of a batch begun without a server connection, answered
	// when the batch needs none (Sync, Flush) or sent ahead of the first request that does.
	pending []*entry
	failed  bool   // such a batch failed: its messages are skipped up to its Sync
	batch   uint64 // counts the client's Syncs
	pin     string // why the session keeps its server connection, or ""
	// transactions counts transactions and single statements outside one; a connection draining
	// a client's last answers counts after the client's goroutine ended.
	transactions atomic.Int64

	// undone: Parses and Closes the proxy answered but the server would have skipped (an
	// earlier request of their batch failed); the client applies them before its next request.
	undoMu  sync.Mutex
	undone  []*entry
	hasUndo atomic.Bool

	sc    *srvConn // held now; guarded by session.mu
	state prometheus.Gauge

	cr      *bufio.Reader // from readerPool while the client has bytes buffered
	sw      *bufio.Writer // to the server connection, from writerPool while writing
	swc     *srvConn      // what sw writes to
	buf     []byte
	rewrite []byte // a Bind or Describe with the client's statement name replaced by the proxy's

	wmu sync.Mutex
	cw  *bufio.Writer // to the client, from writerPool

	idleDeadline time.Time // the client's read deadline for --proxy.idle-transaction-timeout, or zero
	terminated   bool      // the client said goodbye (Terminate) rather than dropping the connection
}

// setState moves the client between the waiting, active and idle gauges.
func (t *txSession) setState(g prometheus.Gauge) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != nil {
		t.state.Dec()
	}
	t.state = g
	if g != nil {
		g.Inc()
	}
}

func (t *txSession) current() *srvConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sc
}

// detach lets go of c. c.mu is held.
func (t *txSession) detach(c *srvConn) {
	c.client = nil
	c.writing, c.leaving = false, false
	t.mu.Lock()
	if t.sc == c {
		t.sc = nil
		t.server = nil
	}
	if t.state == t.srv.m.active {
		t.state.Dec()
		t.state = t.srv.m.idle
		t.state.Inc()
	}
	t.mu.Unlock()
}

// writeClient buffers bytes for the client.
func (t *txSession) writeClient(b []byte) {
	t.wmu.Lock()
	if t.cw == nil {
		t.cw = writerPool.Get().(*bufio.Writer)
		t.cw.Reset(t.client)
	}
	_, _ = t.cw.Write(b)
	t.wmu.Unlock()
}

// writeMsg buffers a message for the client: its body, or n body bytes copied from r. Only a
// failed read is returned: the client's own read notices a client that is gone.
func (t *txSession) writeMsg(typ byte, body []byte, r *bufio.Reader, n int) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.cw == nil {
		t.cw = writerPool.Get().(*bufio.Writer)
		t.cw.Reset(t.client)
	}
	var hdr [5]byte
	hdr[0] = typ
	if r == nil {
		n = len(body)
	}
	binary.BigEndian.PutUint32(hdr[1:], uint32(n+4))
	_, _ = t.cw.Write(hdr[:])
	if r == nil {
		_, _ = t.cw.Write(body)
		return nil
	}
	readErr, _ := copyBody(t.cw, r, n)
	return readErr
}

// flushClient sends what is buffered for the client.
func (t *txSession) flushClient() {
	t.wmu.Lock()
	if t.cw != nil && t.cw.Buffered() > 0 {
		if err := t.cw.Flush(); err != nil {
			_ = t.client.Close() // the client's read fails and ends the session
		}
	}
	t.wmu.Unlock()
}

// offerFlush is flushClient for the client's own goroutine before it waits for the client: it
// does nothing while the server side holds the writer. That side may be waiting, in the middle
// of an answer, for the rest of it, which the server sends only once it gets a request this
// goroutine has still to read; and it flushes what it wrote once it is done.
func (t *txSession) offerFlush() {
	if !t.wmu.TryLock() {
		return
	}
	if t.cw != nil && t.cw.Buffered() > 0 {
		if err := t.cw.Flush(); err != nil {
			_ = t.client.Close()
		}
	}
	t.wmu.Unlock()
}

// releaseClientWriter gives the client writer back to its pool when nothing is buffered.
func (t *txSession) releaseClientWriter() {
	t.wmu.Lock()
	if t.cw != nil && t.cw.Buffered() == 0 {
		t.cw.Reset(nil)
		writerPool.Put(t.cw)
		t.cw = nil
	}
	t.wmu.Unlock()
}

// runTx serves a logged-in client in transaction mode until it leaves.
func (s *Server) runTx(sess *session, params map[string]string) {
	t := &txSession{session: sess, startWant: startupWant(params), stmts: map[string]*pstmt{},
		custom: map[string]struct{}{}}
	if requestsPin(params) {
		t.wantPin = sessionsql.PinRequested
	}
	if s.cfg.PoolMode == PoolSession {
		t.whole, t.wantPin, t.named = true, pinWhole, map[string]namedStmt{}
	}
	t.want = clone(t.startWant)
	t.cr = sess.cr
	t.cw = sess.cw
	sess.cr, sess.cw = nil, nil
	t.setState(s.m.idle)
	defer func() {
		t.leave()
		t.setState(nil)
		s.m.sessionTx.Observe(float64(t.transactions.Load()))
		t.unpin()
		for _, st := range t.stmts {
			s.stmts.put(st)
		}
		if t.cr != nil {
			t.cr.Reset(nil)
			readerPool.Put(t.cr)
			t.cr = nil
		}
		t.releaseClientWriter()
	}()
	if !t.login(params) {
		return
	}
	t.loop()
}

// login reports the server's parameters, as PostgreSQL does at the end of its startup. With a
// server connection free it checks the client's startup settings there, so that a bad one fails
// the login as on PostgreSQL. With every connection in use the client logs in without one: the
// parameters are those of the set's connections, with the settings the client asked for as it
// asked for them, applied when it first checks out a connection (where a bad one fails its
// first request). Only before the set has opened any connection does a login wait for one.
func (t *txSession) login(params map[string]string) bool {
	s := t.srv
	var c *srvConn
	var err error
	if !t.whole {
		c, err = t.checkout(false)
	}
	if err == nil && c == nil && !t.whole {
		if reported := s.txSet.reportedParams(); reported != nil {
			t.welcome(reported, t.startWant)
			return true
		}
	}
	if err == nil && c == nil {
		c, err = t.hold()
	}
	if err != nil {
		s.refuse(t, err)
		t.flushClient()
		return false
	}
	// hold queued the settings; wait for the server to take them.
	c.mu.Lock()
	var done chan error
	if len(c.queue) > 0 {
		done = make(chan error, 1)
		c.queue[len(c.queue)-1].done = done
	}
	c.mu.Unlock()
	t.flushServer()
	if done != nil {
		if err := <-done; err != nil {
			t.endWrite()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				s.refuse(t, reject(pgErr.Code, "%s", pgErr.Message))
			}
			t.flushClient()
			return false
		}
	}
	c.mu.Lock()
	reported := clone(c.reported)
	c.mu.Unlock()
	t.endWrite()
	t.welcome(reported, nil)
	return true
}

// welcome ends the client's login: ParameterStatus for each reported parameter (with the
// client's own start-up setting of it, by lower-cased name, when asked), BackendKeyData and
// ReadyForQuery.
func (t *txSession) welcome(reported, asked map[string]string) {
	var msgs []byte
	for _, name := range reportedParams {
		v := reported[name]
		if a, ok := asked[strings.ToLower(name)]; ok {
			v = a
		}
		if v != "" {
			msgs, _ = (&pgproto3.ParameterStatus{Name: name, Value: v}).Encode(msgs)
		}
	}
	key := make([]byte, 4)
	binary.BigEndian.PutUint32(key, t.secret)
	msgs, _ = (&pgproto3.BackendKeyData{ProcessID: t.pid, SecretKey: key}).Encode(msgs)
	msgs, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(msgs)
	t.writeClient(msgs)
	t.flushClient()
}

// Write lets the proxy's refuse write to the client.
func (t *txSession) Write(b []byte) (int, error) {
	t.writeClient(b)
	return len(b), nil
}

// hold returns the server connection the client holds, checking one out (and bringing its
// settings in line with the client's) when it holds none, and marks it as being written to so
// that it stays attached until endWrite.
func (t *txSession) hold() (*srvConn, error) { return t.checkout(true) }

// checkout is hold; without wait, it returns nil when every server connection is in use.
func (t *txSession) checkout(wait bool) (*srvConn, error) {
	s := t.srv
	if c := t.current(); c != nil {
		c.mu.Lock()
		if c.client == t {
			c.writing = true
			c.mu.Unlock()
			t.bindWriter(c)
			return c, nil
		}
		c.mu.Unlock()
	}
	t.setState(s.m.waiting)
	var c *srvConn
	for {
		var err error
		if wait {
			c, err = s.txSet.get()
		} else {
			c, err = s.txSet.take()
		}
		if c == nil {
			t.setState(s.m.idle)
			return nil, err
		}
		c.mu.Lock()
		if !c.broken {
			break
		}
		c.mu.Unlock()
	}
	c.client = t
	c.writing, c.reset = true, false
	t.mu.Lock()
	t.sc = c
	t.server = c.pc
	t.mu.Unlock()
	t.setState(s.m.active)
	if t.wantPin != "" {
		t.setPin(t.wantPin)
		t.wantPin = ""
	}
	apply := c.settingsFor(t.want)
	if apply != "" {
		c.queue = append(c.queue, &entry{kind: 'Q', skip: true})
	}
	c.mu.Unlock()
	t.bindWriter(c)
	if apply != "" {
		b, _ := (&pgproto3.Query{String: apply}).Encode(nil)
		_, _ = t.sw.Write(b)
	}
	return c, nil
}

func (t *txSession) bindWriter(c *srvConn) {
	if t.sw == nil {
		t.sw = writerPool.Get().(*bufio.Writer)
		t.sw.Reset(c.net)
		t.swc = c
	} else if t.swc != c {
		t.flushServer()
		t.sw.Reset(c.net)
		t.swc = c
	}
}

// flushServer sends what is buffered for the server; a failed write breaks the connection,
// which its readLoop then drops.
func (t *txSession) flushServer() {
	if t.sw != nil && t.sw.Buffered() > 0 {
		if err := t.sw.Flush(); err != nil {
			_ = t.swc.net.Close()
			t.sw.Reset(t.swc.net)
		}
	}
}

// endWrite flushes the server writer, gives it back, and lets the connection go if nothing
// holds it any more.
func (t *txSession) endWrite() {
	t.flushServer()
	if t.sw != nil {
		t.sw.Reset(nil)
		writerPool.Put(t.sw)
		t.sw, t.swc = nil, nil
	}
	if c := t.current(); c != nil {
		c.mu.Lock()
		if c.client == t {
			c.writing = false
			c.settle()
		}
		c.mu.Unlock()
	}
}

// leave lets go of the server connection when the client is gone: outstanding queries are
// canceled, an open transaction rolled back and a pinned session's state discarded before the
// connection serves anyone else.
func (t *txSession) leave() {
	t.flushServer()
	if t.sw != nil {
		t.sw.Reset(nil)
		writerPool.Put(t.sw)
		t.sw, t.swc = nil, nil
	}
	c := t.current()
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != t {
		return
	}
	if t.pin != "" {
		c.discardDue = true
	}
	if t.drain(c) {
		return
	}
	t.detach(c)
	if len(c.queue) > 0 && !c.quiet() {
		// Only the client's own requests are cancelled: a cancel would fail the proxy's (a
		// read-back of settings), and with it the connection.
		_ = c.net.SetDeadline(time.Now().Add(t.srv.cfg.ResetTimeout))
		c.cancelling = true
		go c.cancelFor()
	}
	var end []byte
	if c.copying == 'G' || len(c.queue) > 0 {
		// Also when readLoop has not seen the server start a COPY FROM STDIN that a request
		// outstanding may start: a cancel does not end one waiting for data, and the server
		// ignores a CopyFail outside a COPY.
		end, _ = (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(end)
	}
	if c.midBatch {
		end = t.abortBatch(c, end)
	}
	if len(end) > 0 {
		_ = c.net.SetWriteDeadline(time.Now().Add(t.srv.cfg.ResetTimeout))
		if _, err := c.net.Write(end); err != nil {
			_ = c.net.Close() // readLoop sees it and drops the connection
		}
	}
	c.settle()
}

// drain keeps the connection of a client that said goodbye right after its last request
// without reading the answers (node-postgres' pool does after an error) until the answers come,
// for at most the reset timeout: those requests are measured, and the connection stays
// reusable instead of being cancelled. The client will not read them, so writes to it fail at
// once. It reports whether it drains. c.mu is held.
func (t *txSession) drain(c *srvConn) bool {
	if !t.terminated || c.quiet() || c.midBatch || t.srv.ctx.Err() != nil {
		return false
	}
	_ = t.client.SetWriteDeadline(time.Now())
	c.leaving, c.writing = true, false
	if c.copying == 'G' {
		b, _ := (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(nil)
		_ = c.net.SetWriteDeadline(time.Now().Add(t.srv.cfg.ResetTimeout))
		if _, err := c.net.Write(b); err != nil {
			_ = c.net.Close()
		}
	}
	time.AfterFunc(t.srv.cfg.ResetTimeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.client != t || !c.leaving {
			return
		}
		// The answers did not come in time: cancel what still runs.
		t.detach(c)
		_ = c.net.SetDeadline(time.Now().Add(t.srv.cfg.ResetTimeout))
		c.cancelling = true
		go c.cancelFor()
	})
	return true
}

// abortBatch ends the batch of a client that left before its Sync, appending the messages to
// b: without a Sync the server would wait for the rest of the batch while the connection
// stays out of use, and a Sync alone would commit the batch's implicit transaction, which
// PostgreSQL rolls back when its client goes. So a request that fails first (a Bind of a
// statement that does not exist; skipped if the batch already failed), then the Sync. An
// explicit transaction is left failed, and settle rolls it back. c.mu is held.
func (t *txSession) abortBatch(c *srvConn, b []byte) []byte {
	if t.queue(c, &entry{kind: 'B', skip: true}) {
		bind := append([]byte{0}, noStatement...)
		b = appendMsg(b, 'B', append(bind, 0, 0, 0, 0, 0, 0, 0))
	}
	t.queue(c, &entry{kind: 'S', skip: true})
	return appendMsg(b, 'S', nil)
}

// errIdleWait: the client sent nothing before its idle-transaction deadline.
var errIdleWait = errors.New("idle transaction deadline")

// armIdleTimeout sets a read deadline on a client about to wait for its next message while it
// holds a server connection, so that one idle in a transaction is noticed (idleTooLong).
func (t *txSession) armIdleTimeout() {
	if !t.idleDeadline.IsZero() || t.cr != nil && t.cr.Buffered() > 0 || t.current() == nil {
		return
	}
	t.idleDeadline = time.Now().Add(t.srv.cfg.IdleTransactionTimeout)
	_ = t.client.SetReadDeadline(t.idleDeadline)
}

// idleTooLong is called when the client's idle deadline passed. A client idle in a transaction
// (no request outstanding) for --proxy.idle-transaction-timeout gets FATAL 25P03 and true: its
// session ends, and leave rolls the transaction back. Otherwise the deadline moves to when the
// client would have been idle that long.
func (t *txSession) idleTooLong() bool {
	s := t.srv
	timeout := s.cfg.IdleTransactionTimeout
	t.idleDeadline = time.Time{}
	_ = t.client.SetReadDeadline(time.Time{})
	c := t.current()
	if c == nil {
		return false
	}
	c.mu.Lock()
	idle := c.client == t && len(c.queue) == 0 && c.copying == 0 && !c.writing && (c.status == 'T' || c.status == 'E')
	since := c.readyAt
	c.mu.Unlock()
	if !idle {
		return false // armIdleTimeout sets a new deadline
	}
	if left := timeout - time.Since(since); left > 0 {
		t.idleDeadline = time.Now().Add(left)
		_ = t.client.SetReadDeadline(t.idleDeadline)
		return false
	}
	s.m.idleTxEnded.Inc()
	s.idleTxLog.event("user", t.user, "client", t.remote, "timeout", timeout)
	s.refuse(t, reject("25P03", "terminating connection due to idle-in-transaction timeout (--proxy.idle-transaction-timeout is %s)", timeout))
	t.flushClient()
	return true
}

// readHeader reads a message header from the client. With nothing buffered it gives the reader
// back to its pool and waits on the connection itself, so an idle client holds no buffer.
func (t *txSession) readHeader(hdr []byte) error {
	if t.cr == nil || t.cr.Buffered() == 0 {
		if t.cr != nil {
			t.cr.Reset(nil)
			readerPool.Put(t.cr)
			t.cr = nil
		}
		if cap(t.buf) > 4<<10 {
			t.buf = nil // nor a large message's body
		}
		if cap(t.rewrite) > 4<<10 {
			t.rewrite = nil
		}
		if got, err := io.ReadFull(t.client, hdr); err != nil {
			if got == 0 && !t.idleDeadline.IsZero() && isTimeout(err) {
				return errIdleWait
			}
			return err
		}
		t.cr = readerPool.Get().(*bufio.Reader)
		t.cr.Reset(t.client)
		return nil
	}
	_, err := io.ReadFull(t.cr, hdr)
	return err
}

func (t *txSession) readBody(n int) ([]byte, error) {
	if cap(t.buf) < n {
		t.buf = make([]byte, n)
	}
	t.buf = t.buf[:n]
	_, err := io.ReadFull(t.cr, t.buf)
	return t.buf, err
}

// endOversized ends the session of a client that sent a message of n bytes, over
// --proxy.max-message-size, once its 54000 is flushed, and logs it. Closing a socket with input
// unread makes the kernel reset the connection, and a client still writing its message would
// get the reset, not the error: so the proxy half-closes the connection and reads what the
// client still sends (the rest of the message and whatever it pipelined after it) until the
// client closes, for at most the reset timeout and n bytes plus 1 MiB.
func (s *Server) endOversized(sess *session, r io.Reader, n int) {
	s.oversizeLog.event("user", sess.user, "client", sess.remote, "size", n, "max", s.cfg.MaxMessageSize)
	if cw, ok := sess.client.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = sess.client.SetReadDeadline(time.Now().Add(s.cfg.ResetTimeout))
	_, _ = io.CopyN(io.Discard, r, int64(n)+1<<20)
}

// send buffers one message for the client.
func (sess *session) send(m encoder) error {
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = sess.cw.Write(b)
	return err
}
