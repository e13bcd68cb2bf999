package proxy

import (
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/pool"
)

// A server connection lost under a client in transaction mode (PostgreSQL restarted, the
// backend was terminated) need not end the client's session: outside a pin, nothing of it lives
// on the server connection but its transaction. So the client stays connected. The proxy
// answers its outstanding requests as PostgreSQL answers failed ones, with an ERROR (never the
// server's FATAL) in the place of each answer. An explicit transaction stays failed until the
// client ends it. Its next transaction goes to a new server connection, where its prepared
// statements are prepared again. Pinned and session-mode clients are disconnected, as their
// session state is gone.

// lossState is how the proxy answers the requests outstanding on a lost connection, those the
// client had sent and those it sends before its goroutine learns of the loss. It is guarded by
// the connection's mu; the connection's errSkip and errBatch say which batch is skipped up to
// its Sync.
type lossState struct {
	cl   *clientEnd
	inTx bool // the client's explicit transaction was lost with the connection
	told bool // and the client has had an error for it: later statements get 25P02
	// copyZ: a COPY FROM STDIN of a simple Query failed; its ReadyForQuery waits for the
	// client's CopyDone or CopyFail.
	copyZ bool
	// ended: a request of the batch being answered ended the transaction (answered ROLLBACK or
	// 08007): its Sync has nothing more to say.
	ended bool
}

// SQLSTATEs of requests a lost server connection leaves unanswered.
const (
	// lostCode: the connection failed; for a statement in flight outside a transaction,
	// whether it took effect is unknown.
	lostCode = "08006"
	// lostCommitCode: a COMMIT was in flight; whether the transaction committed is unknown.
	lostCommitCode = "08007"
	abortedCode    = "25P02"
	noSavepoint    = "3B001"
)

// keepsClient reports whether the client holding c keeps its session when c is lost: a client
// of transaction mode that is not pinned and is not leaving, while the proxy is not shutting
// down. Nor does a client whose settings were being read back (a SET it ran succeeded): they
// are lost with the connection. c.mu is held.
func (c *srvConn) keepsClient() bool {
	cl := c.holder
	return cl != nil && c.core.cfg.PoolMode == PoolTransaction && cl.pin == "" && !c.leaving &&
		!c.capturing.Load() && c.core.ctx.Err() == nil
}

// answerLost answers e, a request outstanding on the lost connection c, in its place among the
// client's answers, as PostgreSQL answers a request that failed, or one the server skips after
// an error in its batch. c.mu is held.
func (c *srvConn) answerLost(e *entry) {
	l := c.loss
	cl := l.cl
	e.report(false)
	if e.done != nil {
		e.done <- lostConnErr
		return
	}
	skipped := c.errSkip && c.errBatch == e.batch
	switch {
	case e.kind == 0:
		if skipped {
			if e.stmt != nil {
				cl.undo(e)
			}
			return
		}
		cl.writeClient(e.synth)
	case e.skip:
		// The proxy's own request: nothing of it is the client's.
	case e.kind == 'Q' || e.kind == 'F':
		cl.writeClient(c.lostReply(e.op, e.sql))
		if e.kind == 'Q' && c.copying == 'G' {
			c.copying = 0
			l.copyZ = true
			return
		}
		c.copying = 0
		cl.writeClient(c.lostReady())
	case e.kind == 'S':
		switch {
		case skipped || l.ended:
		case l.inTx:
			// The batch's answers came, but its transaction is lost.
			cl.writeClient(c.lostReply(pool.OpOther, ""))
		case e.measure:
			// Its statements ran in the implicit transaction this Sync was to commit.
			cl.writeClient(errorMsg(lostCommitCode, "server connection lost at the end of the batch: whether it committed is unknown"))
		}
		c.errSkip, l.ended = false, false
		cl.writeClient(c.lostReady())
	default: // Parse, Bind, Describe, Close, Execute
		if e.stmt != nil {
			cl.undo(e) // the client's named Parse failed: it has no such statement
		}
		if skipped {
			return
		}
		op, sql := pool.OpOther, ""
		if e.kind == 'E' {
			op, sql = e.op, e.sql
			c.copying = 0
		}
		reply := c.lostReply(op, sql)
		cl.writeClient(reply)
		if reply[0] == 'E' {
			c.errSkip, c.errBatch = true, e.batch
		}
		if end, _ := txControl(op, sql); end != "" {
			l.ended = true
		}
	}
}

// lostReply is the answer, short of its ReadyForQuery, to a statement of operation op (its
// text sql) that a lost connection left unanswered, taking what it does to the lost
// transaction. c.mu is held.
func (c *srvConn) lostReply(op pool.Operation, sql string) []byte {
	l := c.loss
	end, savepoint := txControl(op, sql)
	switch {
	case l.inTx && end == "ROLLBACK":
		l.inTx, l.told = false, false
		return commandComplete("ROLLBACK")
	case l.inTx && end == "COMMIT" && l.told:
		l.inTx, l.told = false, false
		return commandComplete("ROLLBACK") // as PostgreSQL ends a failed transaction
	case end == "COMMIT":
		l.inTx, l.told = false, false
		return errorMsg(lostCommitCode, "server connection lost during COMMIT: whether the transaction committed is unknown")
	case l.inTx && l.told && savepoint:
		return errorMsg(noSavepoint, "savepoint does not exist: the transaction was lost with its server connection")
	case l.inTx && l.told:
		return errorMsg(abortedCode, "current transaction is aborted, commands ignored until end of transaction block")
	case l.inTx:
		l.told = true
		return errorMsg(lostCode, "server connection lost: the transaction is rolled back")
	}
	return errorMsg(lostCode, "server connection lost while the statement ran: whether it took effect is unknown")
}

// lostReady is the ReadyForQuery that ends a lost connection's answer.
func (c *srvConn) lostReady() []byte {
	if c.loss.inTx {
		return readyFailed
	}
	return readyIdle
}

// afterLoss takes, in the client's goroutine, what the loss of its server connection c left:
// a batch to skip up to its Sync, a failed transaction, a COPY to swallow.
func (cl *client) afterLoss(c *srvConn) {
	c.mu.Lock()
	l := c.loss
	c.loss = nil
	skipping := c.errSkip
	c.mu.Unlock()
	if l == nil {
		return
	}
	cl.lostTx = 0
	if l.inTx {
		cl.lostTx = 'N'
		if l.told {
			cl.lostTx = 'E'
		}
	}
	if skipping {
		cl.failed, cl.failedReady = true, readyIdle
		if l.inTx {
			cl.failedReady = readyFailed
		}
	}
	cl.copyLost = l.copyZ
	cl.lostEnding, cl.portalEnding = false, false
}

// answerLostTx answers, without a server connection, a message of a client whose explicit
// transaction was lost with its server connection, as PostgreSQL answers in a failed
// transaction: the first statement gets the loss's error (when none did yet), the others 25P02,
// and the statement that ends the transaction (by the simple or the extended protocol) is
// answered "ROLLBACK". It reports whether it handled the message.
func (cl *client) answerLostTx(typ byte, body []byte) bool {
	s := cl.core
	switch typ {
	case 'Q':
		sql := sqlPrefix(body[:max(len(body)-1, 0)])
		cl.writeClient(cl.lostTxReply(pool.ClassifyOperation(sql), sql))
		cl.writeClient(cl.lostTxReady())
		return true
	case 'F':
		cl.writeClient(cl.lostTxReply(pool.OpOther, ""))
		cl.writeClient(cl.lostTxReady())
		return true
	case 'P':
		name, rest := cstring(body)
		sqlb, _ := cbytes(rest)
		sql := sqlPrefix(sqlb)
		op := pool.ClassifyOperation(sql)
		if end, _ := txControl(op, sql); end == "" || cl.lostTx != 'E' {
			return cl.failLostTx()
		}
		if name == "" {
			// Kept, as parseUnnamed keeps it, to be prepared on the next server connection
			// if the client binds it again.
			cl.unnamed = append(cl.unnamed[:0], body...)
			cl.keepUnnamedFx(s.analysis.Analyze(sqlb))
			if len(body) > 64<<10 {
				cl.unnamed = nil
			}
			cl.unnamedN++
			cl.lostEnding = true
		} else {
			if code, _ := cl.statementRefused(name, len(rest)); code != "" {
				return cl.failLostTx()
			}
			id := s.mgr.Identify(op, sqlb)
			cl.keepStmt(name, s.stmts.get(cl.stmtScope(), registryKey(rest, sqlb), id.Untraced()), id)
		}
		cl.writeClient(parseComplete)
		return true
	case 'B':
		_, rest := cbytes(body)
		name, _ := cstring(rest)
		ending := name == "" && cl.lostEnding
		if st := cl.stmts[name]; name != "" && st != nil {
			end, _ := txControl(st.op, st.sql)
			ending = end != ""
		}
		if !ending || cl.lostTx != 'E' {
			return cl.failLostTx()
		}
		cl.portalEnding = true
		cl.writeClient(bindComplete)
		return true
	case 'D':
		if len(body) == 0 {
			return cl.failLostTx()
		}
		name, _ := cstring(body[1:])
		ending := name == "" && cl.portalEnding
		if body[0] == 'S' {
			ending = name == "" && cl.lostEnding
			if st := cl.stmts[name]; name != "" && st != nil {
				end, _ := txControl(st.op, st.sql)
				ending = end != ""
			}
		}
		if !ending || cl.lostTx != 'E' {
			return cl.failLostTx()
		}
		if body[0] == 'S' {
			cl.writeClient(noParams)
		}
		cl.writeClient(noData)
		return true
	case 'E':
		if !cl.portalEnding {
			return cl.failLostTx()
		}
		cl.lostTx, cl.portalEnding, cl.lostEnding = 0, false, false
		cl.writeClient(commandComplete("ROLLBACK"))
		return true
	case 'C':
		if len(body) > 0 && body[0] == 'S' {
			name, _ := cstring(body[1:])
			if st := cl.stmts[name]; name != "" && st != nil {
				cl.dropStmt(name, st)
				s.stmts.put(st)
			}
		}
		cl.writeClient(closeComplete)
		return true
	case 'S':
		cl.writePending()
		cl.writeClient(cl.lostTxReady())
		cl.batch++
		return true
	case 'H':
		cl.writePending()
		return true
	}
	return true // CopyData, CopyDone, CopyFail: no COPY runs
}

// failLostTx answers an extended-protocol request in a lost transaction with its error; the rest
// of the batch is skipped up to its Sync.
func (cl *client) failLostTx() bool {
	cl.writePending()
	cl.writeClient(cl.lostTxReply(pool.OpOther, ""))
	cl.failed, cl.failedReady = true, cl.lostTxReady()
	cl.portalEnding, cl.lostEnding = false, false
	return true
}

// lostTxReply is the answer, short of its ReadyForQuery, to a statement in a lost transaction.
func (cl *client) lostTxReply(op pool.Operation, sql string) []byte {
	end, savepoint := txControl(op, sql)
	switch {
	case end != "" && (end == "ROLLBACK" || cl.lostTx == 'E'):
		cl.lostTx = 0
		return commandComplete("ROLLBACK")
	case cl.lostTx == 'N':
		cl.lostTx = 'E'
		return errorMsg(lostCode, "server connection lost: the transaction is rolled back")
	case savepoint:
		return errorMsg(noSavepoint, "savepoint does not exist: the transaction was lost with its server connection")
	}
	return errorMsg(abortedCode, "current transaction is aborted, commands ignored until end of transaction block")
}

func (cl *client) lostTxReady() []byte {
	if cl.lostTx != 0 {
		return readyFailed
	}
	return readyIdle
}

// txControl tells a statement that ends a transaction ("COMMIT" or "ROLLBACK", as its tag) from
// one that rolls back to or releases a savepoint (savepoint), by its operation op and text.
func txControl(op pool.Operation, sql string) (end string, savepoint bool) {
	switch op {
	case pool.OpCommit:
		words := strings.Fields(strings.ToLower(sql[:min(len(sql), 64)]))
		if len(words) > 1 && strings.HasPrefix(words[1], "prepared") {
			return "", false // COMMIT PREPARED acts on a prepared transaction, outside this one
		}
		return "COMMIT", false
	case pool.OpRollback:
		words := strings.Fields(strings.ToLower(sql[:min(len(sql), 64)]))
		for _, w := range words[1:min(len(words), 4)] {
			if w == "to" {
				return "", true
			}
			if strings.HasPrefix(w, "prepared") {
				return "", false
			}
		}
		return "ROLLBACK", false
	case pool.OpSavepoint:
		return "", strings.HasPrefix(strings.ToLower(strings.TrimSpace(sql)), "release")
	}
	return "", false
}

func commandComplete(tag string) []byte {
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
	return b
}

// errorMsg is an ErrorResponse of severity ERROR.
func errorMsg(code, msg string) []byte {
	return appendMsg(nil, 'E', errorBody(code, msg))
}

var (
	readyFailed, _  = (&pgproto3.ReadyForQuery{TxStatus: 'E'}).Encode(nil)
	bindComplete, _ = (&pgproto3.BindComplete{}).Encode(nil)
	noData, _       = (&pgproto3.NoData{}).Encode(nil)
	noParams, _     = (&pgproto3.ParameterDescription{}).Encode(nil)
	// lostConnErr is what a request waiting on its answer (entry.done) learns of a lost connection.
	lostConnErr = &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: lostCode, Message: "server connection lost"}
)
