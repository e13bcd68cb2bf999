package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/prometheus/client_golang/prometheus"
)

// client is one logged-in client connection, from its login to its logout. Its goroutine reads
// its messages (requests.go) and relays them over the server connection it holds, whose own
// goroutine forwards the answers (serverconn.go). In session mode the client is pinned to its
// server connection from login.
type client struct {
	clientEnd
	set *serverSet
	clientStatements
	batchState

	pid, secret uint32 // the cancel key the proxy gave the client

	cr           *bufio.Reader // from readerPool while the client has bytes buffered
	fr           *fdReader     // what cr reads from on a plaintext socket, else nil
	hdr          [5]byte       // the header of the message being relayed
	bytesIn      int           // read from the client and not yet counted
	awaits       bool          // the last message read gets an answer
	buf          []byte
	rewrite      []byte        // a Bind or Describe with the client's statement name replaced by the proxy's
	sw           *bufio.Writer // to the server connection, from writerPool while writing
	swc          *srvConn      // what sw writes to
	idleDeadline time.Time     // the client's read deadline for --proxy.idle-transaction-timeout, or zero
	terminated   bool          // the client said goodbye (Terminate) rather than dropping the connection
	parkArmed    bool          // the wait has the park deadline (idlewatch.go)
	parkNow      bool          // the wait reached it: the client parks
	ended        func()        // what ends the session for the Server, once the client is gone
}

// clientStatements are the client's prepared statements, as the proxy maps them onto its own.
type clientStatements struct {
	// whole: a session-mode client, pinned from login. Its statements are the server's, relayed
	// under the client's names; named keeps what measuring their executions needs.
	whole     bool
	named     map[string]namedStmt
	stmts     map[string]*pstmt // the client's named statements
	stmtBytes int               // text the client's named statements hold, bounded by maxClientStatementBytes
	unnamed   []byte            // the body of the client's last unnamed Parse, to prepare it again elsewhere
	unnamedN  uint64            // counts the client's unnamed Parses
	// unnamedFx: what the unnamed statement does to the session; nil before the client's first
	// unnamed Parse, so that clients that send none (most idle ones) do not carry it.
	unnamedFx *sessionsql.Effect
	// pending: named Parses and Closes of a batch begun without a server connection, answered
	// when the batch needs none (Sync, Flush) or sent ahead of the first request that does.
	pending []*entry
	failed  bool // such a batch failed: its messages are skipped up to its Sync ...
	// ... which gets this ReadyForQuery (readyIdle unless set otherwise).
	failedReady []byte

	// After the loss of a server connection the client kept its session through
	// (serverloss.go): lostTx is 'N' while its explicit transaction is lost and it has not been
	// told, 'E' once it has, 0 otherwise; copyLost: its COPY FROM STDIN failed, and its
	// ReadyForQuery waits for CopyDone or CopyFail. lostEnding and portalEnding: the unnamed
	// statement, or the unnamed portal, ends the lost transaction.
	lostTx                   byte
	copyLost                 bool
	lostEnding, portalEnding bool
	// traced: those of stmts whose text carried a trace context, what their executions'
	// exemplars name.
	traced map[string]pool.StatementID
}

// batchState is the client's current batch: its requests up to and including a Sync (a Query
// or FunctionCall is one alone), what it does to the session, taken at the Sync, and what
// measures it.
type batchState struct {
	batch        uint64    // counts the client's Syncs
	batchStart   time.Time // the batch's first message once a server connection is held
	batchOp      pool.Operation
	batchSQL     string
	batchNamed   bool // batchOp and batchSQL are a statement's
	executed     bool // the batch has an Execute
	batchResets  []string
	batchDiscard bool // DISCARD ALL
	batchDealloc bool // DEALLOCATE ALL

	batchID pool.StatementID // names batchSQL by its whole text
}

// newClient is a client that logged in on conn with params.
func newClient(co *core, set *serverSet, conn net.Conn, params map[string]string, remote string) *client {
	cl := &client{set: set}
	cl.core, cl.user, cl.remote = co, params["user"], remote
	cl.conn = conn
	cl.fr = newFDReader(conn)
	cl.startWant = startupWant(params)
	cl.want = cl.startWant // both only ever replaced whole, never written to: no copy
	if requestsPin(params) {
		cl.wantPin = sessionsql.PinRequested
	}
	if co.cfg.PoolMode == PoolSession {
		cl.whole, cl.wantPin, cl.named = true, pinWhole, map[string]namedStmt{}
	}
	return cl
}

// cancelServer sends a cancel request for the client's server connection. It reports whether
// there was one to cancel.
func (cl *client) cancelServer(ctx context.Context) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.server == nil {
		return false
	}
	if err := cl.server.CancelRequest(ctx); err != nil {
		cl.core.log.Warn("Proxy cancel request failed", "error", err.Error())
	}
	return true
}

// interrupt makes blocked reads and writes on the client's server connection fail now, so that
// shutdown does not wait on a server that stopped answering. The connection is then discarded.
func (cl *client) interrupt() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.server != nil {
		_ = cl.server.Conn().SetDeadline(time.Now())
	}
}

// setState moves the client between the waiting, active and idle gauges.
func (cl *client) setState(g prometheus.Gauge) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.state != nil {
		cl.state.Dec()
	}
	cl.state = g
	if g != nil {
		g.Inc()
	}
}

func (cl *client) current() *srvConn {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.sc
}

// login reports the server's parameters, as PostgreSQL does at the end of its startup. With a
// server connection free it checks the client's startup settings there, so that a bad one fails
// the login as on PostgreSQL. With every connection in use the client logs in without one: the
// parameters are those of the set's connections, with the settings the client asked for as it
// asked for them, applied when it first checks out a connection (where a bad one fails its
// first request). Only before the set has opened any connection does a login wait for one.
func (cl *client) login(params map[string]string) bool {
	s := cl.core
	var c *srvConn
	var err error
	if !cl.whole {
		c, err = cl.checkout(false)
	}
	if err == nil && c == nil && !cl.whole {
		if reported := cl.set.reportedParams(); reported != nil {
			cl.welcome(reported, cl.startWant)
			return true
		}
	}
	if err == nil && c == nil {
		c, err = cl.hold()
	}
	if err != nil {
		s.refuse(cl, err)
		cl.flushClient()
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
	cl.flushServer()
	if done != nil {
		if err := <-done; err != nil {
			cl.endWrite()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				s.refuse(cl, reject(pgErr.Code, "%s", pgErr.Message))
			}
			cl.flushClient()
			return false
		}
	}
	c.mu.Lock()
	reported := clone(c.reported)
	c.mu.Unlock()
	cl.endWrite()
	cl.welcome(reported, nil)
	return true
}

// welcome ends the client's login: ParameterStatus for each reported parameter (with the
// client's own start-up setting of it, by lower-cased name, when asked), BackendKeyData and
// ReadyForQuery.
func (cl *client) welcome(reported, asked map[string]string) {
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
	binary.BigEndian.PutUint32(key, cl.secret)
	msgs, _ = (&pgproto3.BackendKeyData{ProcessID: cl.pid, SecretKey: key}).Encode(msgs)
	msgs, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(msgs)
	cl.writeClient(msgs)
	cl.flushClient()
}

// hold returns the server connection the client holds, checking one out (and bringing its
// settings in line with the client's) when it holds none, and marks it as being written to so
// that it stays attached until endWrite.
func (cl *client) hold() (*srvConn, error) { return cl.checkout(true) }

// checkout is hold; without wait, it returns nil when every server connection is in use.
func (cl *client) checkout(wait bool) (*srvConn, error) {
	s := cl.core
	if c := cl.current(); c != nil {
		c.mu.Lock()
		if c.holder == &cl.clientEnd {
			c.writing = true
			c.mu.Unlock()
			cl.bindWriter(c)
			return c, nil
		}
		c.mu.Unlock()
	}
	cl.setState(s.m.waiting)
	if err := cl.pauseQueue(wait); err != nil {
		cl.setState(s.m.idle)
		if err == errPausedNoWait {
			return nil, nil
		}
		return nil, err
	}
	var c *srvConn
	for {
		var err error
		if wait {
			c, err = cl.set.get()
		} else {
			c, err = cl.set.take()
		}
		if c == nil {
			cl.setState(s.m.idle)
			return nil, err
		}
		c.mu.Lock()
		if !c.broken {
			break
		}
		c.mu.Unlock()
	}
	c.holder = &cl.clientEnd
	c.writing, c.reset = true, false
	cl.mu.Lock()
	cl.sc = c
	cl.server = c.pc
	cl.mu.Unlock()
	cl.setState(s.m.active)
	if cl.wantPin != "" {
		cl.setPin(cl.wantPin)
		cl.wantPin = ""
	}
	apply := c.settingsFor(cl.want)
	if apply != "" {
		c.queue = append(c.queue, &entry{kind: 'Q', skip: true})
	}
	c.mu.Unlock()
	cl.bindWriter(c)
	if apply != "" {
		b, _ := (&pgproto3.Query{String: apply}).Encode(nil)
		_, _ = cl.sw.Write(b)
	}
	return c, nil
}

func (cl *client) bindWriter(c *srvConn) {
	if cl.sw == nil {
		cl.sw = getWriter(c.net)
		cl.swc = c
	} else if cl.swc != c {
		cl.flushServer()
		cl.sw.Reset(c.net)
		cl.swc = c
	}
}

// flushServer sends what is buffered for the server; a failed write breaks the connection,
// which its readLoop then drops.
func (cl *client) flushServer() {
	if cl.sw != nil && cl.sw.Buffered() > 0 {
		if err := cl.sw.Flush(); err != nil {
			hangUp(cl.swc.net)
			cl.sw.Reset(cl.swc.net)
		}
	}
}

// endWrite flushes the server writer, gives it back, and lets the connection go if nothing
// holds it any more.
func (cl *client) endWrite() {
	cl.flushServer()
	if cl.sw != nil {
		cl.sw.Reset(nil)
		writerPool.Put(cl.sw)
		cl.sw, cl.swc = nil, nil
	}
	if c := cl.current(); c != nil {
		c.mu.Lock()
		if c.holder == &cl.clientEnd {
			c.writing = false
			c.settle()
		}
		c.mu.Unlock()
	}
}

// leave lets go of the server connection when the client is gone: outstanding queries are
// canceled, an open transaction rolled back and a pinned session's state discarded before the
// connection serves anyone else.
func (cl *client) leave() {
	cl.flushServer()
	if cl.sw != nil {
		cl.sw.Reset(nil)
		writerPool.Put(cl.sw)
		cl.sw, cl.swc = nil, nil
	}
	c := cl.current()
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holder != &cl.clientEnd {
		return
	}
	if cl.pin != "" {
		c.discardDue = true
	}
	if cl.drain(c) {
		return
	}
	cl.detach(c)
	if len(c.queue) > 0 && !c.quiet() {
		// Only the client's own requests are cancelled: a cancel would fail the proxy's (a
		// read-back of settings), and with it the connection.
		c.cancelOutstanding()
	}
	var end []byte
	if c.copying == 'G' || len(c.queue) > 0 {
		// Also when readLoop has not seen the server start a COPY FROM STDIN that a request
		// outstanding may start: a cancel does not end one waiting for data, and the server
		// ignores a CopyFail outside a COPY.
		end = append(end, copyFailLeft...)
	}
	if c.midBatch {
		end = cl.abortBatch(c, end)
	}
	if len(end) > 0 {
		c.writeOwn(end)
	}
	c.settle()
}

// drain keeps the connection of a client that said goodbye right after its last request
// without reading the answers (node-postgres' pool does after an error) until the answers come,
// for at most the reset timeout: those requests are measured, and the connection stays
// reusable instead of being cancelled. The client will not read them, so writes to it fail at
// once. It reports whether it drains. c.mu is held.
func (cl *client) drain(c *srvConn) bool {
	if !cl.terminated || c.quiet() || c.midBatch || cl.core.ctx.Err() != nil {
		return false
	}
	_ = cl.conn.SetWriteDeadline(time.Now())
	c.leaving, c.writing = true, false
	if c.copying == 'G' {
		c.writeOwn(copyFailLeft)
	}
	time.AfterFunc(cl.core.cfg.ResetTimeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.holder != &cl.clientEnd || !c.leaving {
			return
		}
		// The answers did not come in time: cancel what still runs.
		cl.detach(c)
		c.cancelOutstanding()
	})
	return true
}

// abortBatch ends the batch of a client that left before its Sync, appending the messages to
// b: without a Sync the server would wait for the rest of the batch while the connection
// stays out of use, and a Sync alone would commit the batch's implicit transaction, which
// PostgreSQL rolls back when its client goes. So a request that fails first (a Bind of a
// statement that does not exist; skipped if the batch already failed), then the Sync. An
// explicit transaction is left failed, and settle rolls it back. c.mu is held.
func (cl *client) abortBatch(c *srvConn, b []byte) []byte {
	if cl.queue(c, &entry{kind: 'B', skip: true}) {
		bind := append([]byte{0}, noStatement...)
		b = appendMsg(b, 'B', append(bind, 0, 0, 0, 0, 0, 0, 0))
	}
	cl.queue(c, &entry{kind: 'S', skip: true})
	return appendMsg(b, 'S', nil)
}

// errIdleWait: the client sent nothing before its idle-transaction deadline, or before a
// deadline EndSessions set.
var errIdleWait = errors.New("idle transaction deadline")

// armIdleTimeout sets a read deadline on a client about to wait for its next message while it
// holds a server connection, so that one idle in a transaction is noticed (idleTooLong).
func (cl *client) armIdleTimeout() {
	if !cl.idleDeadline.IsZero() || cl.cr != nil && cl.cr.Buffered() > 0 || cl.current() == nil {
		return
	}
	cl.idleDeadline = time.Now().Add(cl.core.cfg.IdleTransactionTimeout)
	_ = cl.conn.SetReadDeadline(cl.idleDeadline)
}

// idleTooLong is called when the client's idle deadline passed. A client idle in a transaction
// (no request outstanding) for --proxy.idle-transaction-timeout gets FATAL 25P03 and true: its
// session ends, and leave rolls the transaction back. Otherwise the deadline moves to when the
// client would have been idle that long.
func (cl *client) idleTooLong() bool {
	s := cl.core
	timeout := s.cfg.IdleTransactionTimeout
	cl.idleDeadline = time.Time{}
	_ = cl.conn.SetReadDeadline(time.Time{})
	c := cl.current()
	if c == nil {
		return false
	}
	c.mu.Lock()
	idle := c.holder == &cl.clientEnd && len(c.queue) == 0 && c.copying == 0 && !c.writing && (c.status == 'T' || c.status == 'E')
	since := c.readyAt
	c.mu.Unlock()
	if !idle {
		return false // armIdleTimeout sets a new deadline
	}
	if left := timeout - time.Since(since); left > 0 {
		cl.idleDeadline = time.Now().Add(left)
		_ = cl.conn.SetReadDeadline(cl.idleDeadline)
		return false
	}
	s.m.idleTxEnded.Inc()
	s.idleTxLog.event("user", cl.user, "client", cl.remote, "timeout", timeout)
	s.refuse(cl, reject("25P03", "terminating connection due to idle-in-transaction timeout (--proxy.idle-transaction-timeout is %s)", timeout))
	cl.flushClient()
	return true
}

// readHeader reads a message header from the client. With nothing buffered it gives the reader
// back to its pool and waits on the connection itself, so an idle client holds no buffer.
func (cl *client) readHeader(hdr []byte) error {
	if cl.cr == nil || cl.cr.Buffered() == 0 {
		cl.releaseReader()
		if got, err := io.ReadFull(cl.conn, hdr); err != nil {
			if got == 0 && (!cl.idleDeadline.IsZero() || cl.core.ending() || cl.parkArmed) && isTimeout(err) {
				return errIdleWait
			}
			return err
		}
		cl.cr = cl.newReader()
		return nil
	}
	_, err := io.ReadFull(cl.cr, hdr)
	return err
}

// releaseReader gives the client's reader back to its pool when it holds nothing, with a large
// message's body.
func (cl *client) releaseReader() {
	if cl.cr != nil && cl.cr.Buffered() == 0 {
		cl.cr.Reset(nil)
		readerPool.Put(cl.cr)
		cl.cr = nil
	}
	if cap(cl.buf) > 4<<10 {
		cl.buf = nil
	}
	if cap(cl.rewrite) > 4<<10 {
		cl.rewrite = nil
	}
}

// newReader is a buffered reader of the client from readerPool.
func (cl *client) newReader() *bufio.Reader {
	if cl.fr != nil {
		return getReader(cl.fr)
	}
	return getReader(cl.conn)
}

func (cl *client) readBody(n int) ([]byte, error) {
	if cap(cl.buf) < n {
		cl.buf = make([]byte, n)
	}
	cl.buf = cl.buf[:n]
	_, err := io.ReadFull(cl.cr, cl.buf)
	return cl.buf, err
}

// endOversized ends the session of a client that sent a message of n bytes, over
// --proxy.max-message-size, once its 54000 is flushed, and logs it. Closing a socket with input
// unread makes the kernel reset the connection, and a client still writing its message would
// get the reset, not the error: so the proxy half-closes the connection and reads what the
// client still sends (the rest of the message and whatever it pipelined after it) until the
// client closes, for at most the reset timeout and n bytes plus 1 MiB.
func (cl *client) endOversized(n int) {
	s := cl.core
	s.oversizeLog.event("user", cl.user, "client", cl.remote, "size", n, "max", s.cfg.MaxMessageSize)
	if cw, ok := cl.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = cl.conn.SetReadDeadline(time.Now().Add(s.cfg.ResetTimeout))
	var r io.Reader = cl.conn
	if cl.cr != nil {
		r = cl.cr
	}
	_, _ = io.CopyN(io.Discard, r, int64(n)+1<<20)
}

// noStatement names no statement on any server connection: a Bind of it fails, which is how the
// proxy makes the server fail a request in-band with the proxy's own error.
const noStatement = "pgsidecar_none"

// queue adds an entry for an answer the client expects, unless the server skips the request
// (an earlier request of its batch failed). c.mu is held.
func (cl *client) queue(c *srvConn, e *entry) bool {
	e.batch = cl.batch
	switch e.kind {
	case 'P', 'B', 'D', 'C', 'E':
		c.midBatch = true
	case 'S':
		c.midBatch = false
	}
	if c.loss != nil && c.loss.cl == &cl.clientEnd {
		c.answerLost(e) // the connection was lost after the client took it for this request
		return false
	}
	if c.errSkip && c.errBatch == cl.batch && e.kind != 'S' {
		return false
	}
	c.queue = append(c.queue, e)
	return true
}

// queueLocked is queue under c's lock.
func (cl *client) queueLocked(c *srvConn, e *entry) {
	c.mu.Lock()
	cl.queue(c, e)
	c.mu.Unlock()
}

// answer makes up an answer for the client in its place in the stream: e.synth.
func (cl *client) answer(c *srvConn, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl.answerLocked(c, e)
}

// answerLocked is answer with c.mu held.
func (cl *client) answerLocked(c *srvConn, e *entry) {
	e.batch = cl.batch
	switch {
	case c.loss != nil && c.loss.cl == &cl.clientEnd:
		c.answerLost(e)
	case len(c.queue) == 0:
		cl.writeClient(e.synth)
	default:
		c.queue = append(c.queue, e)
	}
}

// namedStmt is what the proxy keeps of a whole session's statement, which the server holds
// under the client's name: enough to measure its executions and take its effect.
type namedStmt struct {
	op  pool.Operation
	sql string
	eff sessionsql.Effect

	id pool.StatementID // names sql by its whole text
}
