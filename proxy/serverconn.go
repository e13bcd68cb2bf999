package proxy

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/prometheus/client_golang/prometheus"
)

// entry is one request sent to the server, or one answer the proxy makes up, in the order the
// client expects the answers. Every message the proxy injects has one, which says what becomes
// of its answer.
type entry struct {
	kind  byte   // the request's message type: Query, Parse, Bind, ...; 0 for a made-up answer
	batch uint64 // the client's extended-protocol batch: requests up to and including a Sync
	skip  bool   // injected by the proxy: the answers (but errors) are not the client's
	quiet bool   // injected by the proxy: not even its errors are the client's
	synth []byte // the made-up answer (kind 0)
	// A made-up answer to a named Parse or Close: the client's statement it added or removed,
	// undone when the server skips the request.
	stmtName string
	stmt     *pstmt
	closed   bool

	errMsg   []byte // replaces the server's ErrorResponse body: an in-band error of the proxy's
	prepared *pstmt // a Parse of the proxy's statement: the statement it prepares
	reparse  bool   // that Parse follows a Close of the same statement (see parseOn)
	closes   *pstmt // an injected Close: the statement it closes
	uses     *pstmt // a Bind or Describe of the proxy's statement
	// An injected Describe of the statement just prepared: its result type is recorded, or
	// checked against the one recorded, and a client waiting on verdict learns whether it
	// differed (true) or could not be told (false: the Parse failed, the connection was lost).
	describes *pstmt
	verdict   chan bool
	emptyAs   string // the CommandComplete tag that replaces an EmptyQueryResponse

	// Effects on the session state once a Query succeeds.
	discard    bool // DISCARD ALL: every statement and setting of the connection is gone
	deallocAll bool // DEALLOCATE ALL: every statement of the connection is gone
	failed     bool

	// A read-back of the session's settings (readBackSQL): the rows, and the connection's
	// dirty count it covers.
	readBack bool
	rows     [][2]string
	seq      uint64

	// Measurement of a Query, Sync or FunctionCall.
	start   time.Time
	op      pool.Operation
	sql     string           // the first sqlKept bytes of the statement's text
	id      pool.StatementID // names the statement by its whole text
	measure bool

	done chan error // the client waits for this Query's ReadyForQuery (login)
}

// connHome takes a server connection back from the connection's side of the relay: giveBack
// when no client holds it and it is clean, forget when it failed (it is closed).
type connHome interface {
	giveBack(c *srvConn)
	forget(c *srvConn)
}

// srvConn is one of the proxy's server connections.
type srvConn struct {
	core   *core
	home   connHome // the set it came from
	pooled *pgxpool.Conn
	pc     *pgconn.PgConn
	net    net.Conn
	sr     *bufio.Reader // readLoop's
	fr     *fdReader     // what sr reads from on a plaintext socket, else nil
	born   time.Time
	exited chan struct{} // readLoop returned
	// forgotten: lost dropped the connection, and readLoop, once it left its read, lets the set
	// forget it, which closes it. Only readLoop's goroutine uses it.
	forgotten bool

	mu         sync.Mutex
	holder     *clientEnd // the client holding the connection, or nil
	queue      []*entry
	status     byte // the last ReadyForQuery status
	copying    byte // 'G' in COPY FROM STDIN, 'H' in COPY TO STDOUT, 0 otherwise
	errSkip    bool // the server skips the client's messages up to the Sync of errBatch
	errBatch   uint64
	batchErr   *pgconn.PgError // the first error since the last ReadyForQuery
	writing    bool            // the client is writing to the connection: it stays attached
	cancelling bool            // a cancel request for a client that left is on its way
	discardDue bool            // a pinned client left: DISCARD ALL before reuse
	reset      bool            // that DISCARD ALL was done, and no client has held it since
	leaving    bool            // its client said goodbye and the connection drains its answers
	stopping   bool            // retire stops readLoop
	broken     bool
	idleSince  time.Time
	stmts      stmtLRU
	unusedSeen uint64            // the registry's count of unused stale statements when last looked at
	closeDue   []*pstmt          // statements prepared with another result type than their first, to close
	params     map[string]string // the session's own settings, as last read back or set by the proxy
	dirty      uint64            // counts requests that may have changed settings ...
	clean      uint64            // ... up to the one the last read-back covered
	capturing  atomic.Bool       // a read-back is outstanding: readLoop reads its DataRows
	reported   map[string]string // the server's ParameterStatus values
	unnamedBy  *clientEnd        // whose unnamed statement the server holds
	unnamedN   uint64            // and which of its unnamed Parses
	// midBatch: extended-protocol requests went to the server since the last Sync, so the
	// server is inside their batch (and its implicit transaction) whatever status it last
	// reported.
	midBatch bool
	readyAt  time.Time  // of the last ReadyForQuery
	loss     *lossState // the connection was lost and its client kept: how its requests are answered

	counted byte // the gauge counting the connection (serverSet.count); guarded by set.mu
	// gone: the set let go of the connection, to retire or drop it (whichever came first does
	// it); guarded by set.mu.
	gone bool
}

// clientEnd is the client holding a server connection, as the connection's side of the relay
// sees it: where answers go, and the session state they change. A client (client.go) is a
// clientEnd with the goroutine that reads its requests.
type clientEnd struct {
	core *core
	clientWriter
	clientSettings
	user, remote string

	mu     sync.Mutex     // guards sc, server and state
	sc     *srvConn       // the server connection held now
	server *pgconn.PgConn // sc's, for cancel requests
	state  prometheus.Gauge

	// undone: Parses and Closes the proxy answered but the server would have skipped (an
	// earlier request of their batch failed); the client applies them before its next request.
	undoMu  sync.Mutex
	undone  []*entry
	hasUndo atomic.Bool
	// stmtsGone: a DISCARD ALL or DEALLOCATE ALL the client ran with the extended protocol
	// succeeded; its statements are gone, as the client forgets before its next request.
	stmtsGone atomic.Bool
	// transactions counts transactions and single statements outside one; a connection draining
	// a client's last answers counts after the client's goroutine ended.
	transactions atomic.Int64
	// lostConn: the server connection the client held was lost and the client kept its
	// session (serverloss.go); its goroutine takes what that left before its next request.
	lostConn atomic.Pointer[srvConn]
	// losing: the loss of the server connection the client held is being handled, which may
	// write to the client and close it; the client does not park meanwhile.
	losing atomic.Bool
}

// clientSettings are the client's settings and pin: the part of its session that is not its
// statements. Neither settings map is written to once made: want starts as startWant itself.
type clientSettings struct {
	startWant map[string]string   // settings from the startup packet, by lower-cased name
	want      map[string]string   // the session's own settings as last read back; guarded by the holding connection's mu
	custom    map[string]struct{} // custom settings the client has named, read back by name
	wantPin   string              // a pin to take at the next checkout (asked for at login)
	pin       string              // why the session keeps its server connection, or ""
}

// detach lets go of c. c.mu is held.
func (cl *clientEnd) detach(c *srvConn) {
	c.holder = nil
	c.writing, c.leaving = false, false
	cl.mu.Lock()
	if cl.sc == c {
		cl.sc = nil
		cl.server = nil
	}
	if cl.state == cl.core.m.active {
		cl.state.Dec()
		cl.state = cl.core.m.idle
		cl.state.Inc()
	}
	cl.mu.Unlock()
}

// holdsNone reports whether the client holds no server connection.
func (cl *clientEnd) holdsNone() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.sc == nil
}

// undo records that the server skipped the request e answered. Called by readLoop.
func (cl *clientEnd) undo(e *entry) {
	cl.undoMu.Lock()
	cl.undone = append(cl.undone, e)
	cl.undoMu.Unlock()
	cl.hasUndo.Store(true)
}

// setPin pins the session to its server connection. The connection's mu is held.
func (cl *clientEnd) setPin(reason string) {
	if cl.pin != "" || reason == "" {
		return
	}
	cl.pin = reason
	if reason != pinWhole {
		cl.core.m.pinned.WithLabelValues(reason).Inc()
		cl.core.m.pinnedTotal.WithLabelValues(reason).Inc()
	}
}

func (cl *clientEnd) unpin() {
	if cl.pin != "" && cl.pin != pinWhole {
		cl.core.m.pinned.WithLabelValues(cl.pin).Dec()
	}
	cl.pin = ""
}

func (c *srvConn) head() *entry {
	if len(c.queue) == 0 {
		return nil
	}
	return c.queue[0]
}

func (c *srvConn) pop() {
	c.queue[0] = nil
	c.queue = c.queue[1:]
	if len(c.queue) == 0 {
		c.queue = c.queue[:0:0]
	}
}

// report tells the client waiting on e's verdict, if any, whether the statement's result type
// differed.
func (e *entry) report(differs bool) {
	if e.verdict != nil {
		select {
		case e.verdict <- differs:
		default:
		}
	}
}

// settle gives the connection back when nothing holds it any more: no request outstanding,
// outside a transaction, no COPY, and the client neither writing nor pinned. Once its client
// has left, it first rolls back and, for a pinned client, discards the session state.
// c.mu is held.
func (c *srvConn) settle() {
	if len(c.queue) > 0 || c.copying != 0 || c.broken || c.stopping {
		return
	}
	if cl := c.holder; cl != nil && c.leaving {
		cl.detach(c) // every answer came
	} else if cl != nil {
		if c.status == 'I' && !c.writing && !c.midBatch && cl.pin == "" {
			if c.dirty != c.clean {
				c.startReadBack(cl)
				return
			}
			cl.detach(c)
			c.home.giveBack(c)
		}
		return
	}
	if c.cancelling {
		return
	}
	switch {
	case c.status != 'I':
		c.core.m.transactions.WithLabelValues("abandoned").Inc()
		c.inject("ROLLBACK", false)
	case c.discardDue:
		c.discardDue = false
		c.clean = c.dirty
		c.inject("DISCARD ALL", true)
	case c.dirty != c.clean:
		// Its client left with settings of its own that were not read back: no one else gets
		// them.
		c.clean = c.dirty
		clear(c.params)
		c.inject("RESET ALL", false)
	default:
		c.home.giveBack(c)
	}
}

// inject sends a Query of the proxy's own on a connection no client holds. c.mu is held.
func (c *srvConn) inject(sql string, discard bool) {
	c.send(&entry{kind: 'Q', skip: true, discard: discard}, sql)
}

// send writes a Query of the proxy's own, answered to e, while nothing else writes to the
// connection. c.mu is held.
func (c *srvConn) send(e *entry, sql string) {
	c.queue = append(c.queue, e)
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	c.writeOwn(b)
}

// writeOwn writes messages of the proxy's own while no client writes to the connection, within
// the reset timeout; a failed write closes the connection, which readLoop sees and drops.
// c.mu is held.
func (c *srvConn) writeOwn(b []byte) {
	_ = c.net.SetWriteDeadline(time.Now().Add(c.core.cfg.ResetTimeout))
	if _, err := c.net.Write(b); err != nil {
		hangUp(c.net)
	}
	_ = c.net.SetWriteDeadline(time.Time{})
}

// cancelOutstanding cancels the requests of a client that left, within the reset timeout; the
// connection settles once the server has the cancel. c.mu is held.
func (c *srvConn) cancelOutstanding() {
	_ = c.net.SetDeadline(time.Now().Add(c.core.cfg.ResetTimeout))
	c.cancelling = true
	go c.cancelFor()
}

// lost drops a connection that failed; requests in flight are measured as 08006 errors. Its
// client, if any, keeps its session when it can (keepsClient: transaction mode, not pinned),
// its requests answered as serverloss.go says; otherwise it gets FATAL 08006 (unless the server
// said FATAL itself) and is disconnected.
func (c *srvConn) lost(cause error, serverSaidFatal bool) {
	s := c.core
	c.mu.Lock()
	c.broken = true
	cl := c.holder
	queue := c.queue
	c.queue = nil
	if cl != nil && c.status != 'I' && s.ctx.Err() == nil {
		s.m.transactions.WithLabelValues("error").Inc()
	}
	keep := c.keepsClient()
	if keep {
		// The client stays: the proxy answers what the server left unanswered, and what the
		// client sends before its goroutine learns of the loss (queue).
		c.loss = &lossState{cl: cl, inTx: c.status != 'I'}
		for _, e := range queue {
			c.answerLost(e)
		}
		cl.lostConn.Store(c)
	}
	if cl != nil {
		cl.losing.Store(true)
		defer cl.losing.Store(false)
		cl.detach(c)
	}
	c.mu.Unlock()
	for _, e := range queue {
		if !keep {
			e.report(false)
			if e.done != nil {
				e.done <- lostConnErr
			}
		}
		if cl != nil && e.measure && !e.skip {
			s.mgr.RecordStatement(e.op, e.sql, e.id, time.Since(e.start), lostConnErr)
		}
	}
	if cl != nil {
		if s.ctx.Err() == nil {
			s.m.serverLost.Inc()
			s.log.Warn("Proxy server connection lost", "user", cl.user, "client", cl.remote,
				"error", s.mgr.ScrubError(cause).Error(), "client_kept", keep)
		}
		if keep {
			cl.flushClient()
		} else if !serverSaidFatal {
			var buf []byte
			buf, _ = (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006",
				Message: "server connection lost; the session ended and its transaction, if any, is lost"}).Encode(buf)
			cl.writeClient(buf)
			s.m.rejected.WithLabelValues("08006").Inc()
		}
		if !keep {
			cl.flushClient()
			cl.hangUp()
		}
	}
	c.forgotten = true // readLoop lets the set forget c once it left its read (rawread.go)
}

// cancelFor sends a cancel request for the queries a client that left still has running, then
// lets the connection settle: it cannot go to another client before the server has the cancel
// (PostgreSQL ignores a cancel that finds the backend idle).
func (c *srvConn) cancelFor() {
	ctx, cancel := context.WithTimeout(context.Background(), c.core.cfg.ResetTimeout)
	_ = c.pc.CancelRequest(ctx)
	cancel()
	c.mu.Lock()
	c.cancelling = false
	c.settle()
	c.mu.Unlock()
}

// startReadBack asks the server for the session's own settings, before the connection goes
// back to the set. c.mu is held; nothing else is being written to the connection.
func (c *srvConn) startReadBack(cl *clientEnd) {
	if c.capturing.Load() {
		return
	}
	c.capturing.Store(true)
	c.send(&entry{kind: 'Q', skip: true, quiet: true, readBack: true, seq: c.dirty}, readBackSQL(cl.custom))
}

// readBackDone takes the settings a read-back found as the client's and the connection's.
// c.mu is held.
func (c *srvConn) readBackDone(h *entry, status byte, cl *clientEnd) {
	c.capturing.Store(false)
	if h.failed || status != 'I' {
		// Nothing can tell what the session holds: no one else may have it. Its readLoop, which
		// runs this, reads the end and drops it.
		hangUp(c.net)
		return
	}
	params := make(map[string]string, len(h.rows))
	for _, r := range h.rows {
		params[r[0]] = r[1]
	}
	c.params = params
	if cl != nil {
		cl.want = clone(params)
	}
	c.clean = h.seq
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

// skips reports whether the server skips the rest of the client's batch: a request of it
// failed.
func (c *srvConn) skips(batch uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errSkip && c.errBatch == batch
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

// parsing reports whether a Parse of st in the client's batch is unanswered on c. c.mu is held.
func (c *srvConn) parsing(st *pstmt, batch uint64) bool {
	for _, e := range c.queue {
		if e.kind == 'P' && e.prepared == st && e.batch == batch {
			return true
		}
	}
	return false
}
