package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
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

// noStatement names no statement on any server connection: a Bind of it fails, which is how the
// proxy makes the server fail a request in-band with the proxy's own error.
const noStatement = "pgsidecar_none"

// txSession is a client session in transaction mode.
type txSession struct {
	*session
	startWant map[string]string   // settings from the startup packet, by lower-cased name
	want      map[string]string   // the session's own settings as last read back; guarded by the holding connection's mu
	custom    map[string]struct{} // custom settings the client has named, read back by name
	wantPin   string              // a pin to take at the next checkout (asked for at login)
	// whole: session mode, a client pinned from login. Its statements are the server's, relayed
	// under the client's names; named keeps what measuring their executions needs.
	whole bool
	named map[string]namedStmt
	stmts     map[string]*pstmt   // the client's named statements
	stmtBytes int                 // text the client's named statements hold, bounded by maxClientStatementBytes
	unnamed   []byte              // the body of the client's last unnamed Parse, to prepare it again elsewhere
	unnamedN  uint64              // counts the client's unnamed Parses
	unnamedFx sessionsql.Effect   // what the unnamed statement does to the session
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

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// stmtScope is the registry scope of the client's new statements: its own once it is pinned.
// The held connection's mu is held, if there is one.
func (t *txSession) stmtScope() string {
	if t.pin == "" {
		return ""
	}
	return "pinned " + strconv.FormatUint(uint64(t.pid), 10) + "\x00"
}

// maxCustomSettings bounds the custom settings one client may name; one more pins it, since
// the proxy could no longer read them all back.
const maxCustomSettings = 100

// takeEffect applies what a client's statement does to the session before it is sent: a pin,
// or settings to read back before the connection goes to anyone else. c.mu is held.
func (t *txSession) takeEffect(c *srvConn, eff *sessionsql.Effect, sqlb []byte) {
	if eff.Pin != "" {
		t.pinFor(eff.Pin, sqlb)
	}
	if !eff.Settings {
		return
	}
	c.dirty++
	for _, n := range eff.Custom {
		if _, ok := t.custom[n]; ok {
			continue
		}
		if len(t.custom) >= maxCustomSettings {
			t.pinFor(sessionsql.PinSetConfig, sqlb)
			return
		}
		t.custom[n] = struct{}{}
	}
}

// pinFor pins the session, logging the statement that did it (rate-limited) so that operators
// can find what pins. c.mu is held.
func (t *txSession) pinFor(reason string, sqlb []byte) {
	if t.pin != "" {
		return
	}
	t.setPin(reason)
	fp := "unnormalisable"
	if f, err := fingerprint.Sum(string(sqlb)); err == nil {
		fp = f.String()
	}
	t.srv.pinLog.event("reason", reason, "fingerprint", fp, "user", t.user, "client", t.remote)
}

// pinRefusal is the in-band error that answers a statement that would pin the session when
// --proxy.pin-policy is error, or nil when it may pin.
func (t *txSession) pinRefusal(c *srvConn, reason string) []byte {
	if reason == "" || t.srv.cfg.PinPolicy != PinPolicyError {
		return nil
	}
	c.mu.Lock()
	pinned := t.pin != ""
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

// pinWhole pins a session-mode client from login. It is no pin of transaction mode's, and is
// not counted as one.
const pinWhole = "session_mode"

// setPin pins the session to its server connection. The connection's mu is held.
func (t *txSession) setPin(reason string) {
	if t.pin != "" || reason == "" {
		return
	}
	t.pin = reason
	if reason != pinWhole {
		t.srv.m.pinned.WithLabelValues(reason).Inc()
		t.srv.m.pinnedTotal.WithLabelValues(reason).Inc()
	}
}

func (t *txSession) unpin() {
	if t.pin != "" && t.pin != pinWhole {
		t.srv.m.pinned.WithLabelValues(t.pin).Dec()
	}
	t.pin = ""
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

// settingsFor returns the SQL that brings the connection's tracked settings to want, or "".
// c.mu is held; the connection's settings are then want's.
func (c *srvConn) settingsFor(want map[string]string) string {
	var sets []string
	for name, v := range want {
		if cur, ok := c.params[name]; !ok || cur != v {
			sets = append(sets, "pg_catalog.set_config("+literal(name)+", "+literal(v)+", false)")
			c.params[name] = v
		}
	}
	var sql string
	if len(sets) > 0 {
		sql = "SELECT " + strings.Join(sets, ", ") + ";"
	}
	for name := range c.params {
		if _, ok := want[name]; !ok {
			sql += "RESET " + settingIdent(name) + ";"
			delete(c.params, name)
		}
	}
	return sql
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

// quiet reports whether every answer outstanding on c is one the client does not get: waiting
// for c's answers then cannot wait for the client. c.mu is held.
func (c *srvConn) quiet() bool {
	for _, e := range c.queue {
		if !e.skip {
			return false
		}
	}
	return true
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

// parsing reports whether a Parse of st in the client's batch is unanswered on c. c.mu is held.
func (c *srvConn) parsing(st *pstmt, batch uint64) bool {
	for _, e := range c.queue {
		if e.kind == 'P' && e.prepared == st && e.batch == batch {
			return true
		}
	}
	return false
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

// failingQuery is a Query body the server fails in-band, where the proxy answers a Query with
// an error of its own (entry.errMsg replaces the server's): the transaction then fails as
// PostgreSQL would fail it.
var failingQuery = []byte("SELECT 1/0\x00")

// queryEffect applies what a simple Query's statements do to the session, and returns the body
// to send (a DEALLOCATE of the proxy's own statements is answered without the server) and a
// Query to send after it (start-up values to restore), or nil.
func (t *txSession) queryEffect(c *srvConn, e *entry, eff *sessionsql.Effect, sqlb, body []byte) ([]byte, []byte) {
	s := t.srv
	c.mu.Lock()
	t.takeEffect(c, eff, sqlb)
	pinned := t.pin != ""
	c.mu.Unlock()
	e.discard = eff.Discard
	if eff.Discard {
		// Whether or not it succeeds, the statements the client can still use are the
		// server's, which the proxy does not track for a pinned session.
		t.unnamed = nil
		t.forgetStatements()
		clear(t.named)
	}
	alone := eff.Statements == 1
	for _, name := range eff.Dealloc {
		if name == "*" {
			t.forgetStatements()
			if !pinned && alone {
				body, e.emptyAs = []byte{0}, "DEALLOCATE ALL"
			} else {
				e.deallocAll = true
			}
			continue
		}
		if st := t.stmts[name]; st != nil && alone {
			s.stmts.put(st)
			t.dropStmt(name, st)
			body, e.emptyAs = []byte{0}, "DEALLOCATE"
		}
	}
	return body, restoreQuery(t.startWant, eff.Resets)
}

// bindEffect queues the entry of a Bind of a statement with effect eff, and takes what running
// it does to the session.
func (t *txSession) bindEffect(c *srvConn, e *entry, eff *sessionsql.Effect) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.queue(c, e)
	if eff.Harmless() {
		return
	}
	t.takeEffect(c, eff, nil)
	t.batchResets = append(t.batchResets, eff.Resets...)
	t.batchDiscard = t.batchDiscard || eff.Discard
	t.batchDealloc = t.batchDealloc || slices.Contains(eff.Dealloc, "*")
}
