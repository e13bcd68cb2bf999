package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/pool"
)

// session is one client from login to logout.
type session struct {
	srv         *Server
	client      net.Conn
	cr          *bufio.Reader
	cw          *bufio.Writer
	user        string
	remote      string
	pid, secret uint32

	mu     sync.Mutex
	server *pgconn.PgConn // for cancel requests; nil outside the relay
}

// cancelServer sends a cancel request for the session's server connection. It reports whether
// there was one to cancel.
func (sess *session) cancelServer(ctx context.Context) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.server == nil {
		return false
	}
	if err := sess.server.CancelRequest(ctx); err != nil {
		sess.srv.log.Warn("Proxy cancel request failed", "error", err.Error())
	}
	return true
}

// interrupt makes blocked reads and writes on the session's server connection fail now, so that
// shutdown does not wait on a server that stopped answering. The connection is then discarded.
func (sess *session) interrupt() {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.server != nil {
		_ = sess.server.Conn().SetDeadline(time.Now())
	}
}

func (sess *session) setServer(pc *pgconn.PgConn) {
	sess.mu.Lock()
	sess.server = pc
	sess.mu.Unlock()
}

// pendingSync is a Query, Sync or FunctionCall on its way to the server, waiting for its
// ReadyForQuery.
type pendingSync struct {
	start   time.Time
	op      pool.Operation
	sql     string
	measure bool // false for a Sync that closed no Execute (prepare or describe only)
	silent  bool // the proxy's own query (restoring start-up values): its answers are not the client's
}

// relayEnd says how the relay stopped and what state the server connection is in.
type relayEnd struct {
	clean    bool // the stream is at a message boundary with nothing outstanding
	txStatus byte // the last ReadyForQuery status the server sent
	lost     bool // the server connection failed
}

// stmtInfo is what the proxy remembers of a prepared statement: enough to label its executions.
type stmtInfo struct {
	op     pool.Operation
	sql    string
	resets []string // settings running it returns to their defaults (sessionsql.Effect.Resets)
}

const maxStatements = 10000

// run logs the client in on srvConn and relays until either side ends, then gives the
// connection back reset, or discards it.
func (sess *session) run(srvConn *pgxpool.Conn, params map[string]string) {
	s := sess.srv
	pc := srvConn.Conn().PgConn()
	end := relayEnd{txStatus: 'I'}
	defer func() { sess.release(srvConn, end) }()

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ResetTimeout)
	err := applyParams(ctx, pc, params)
	if err == nil {
		// Last: a query through pgconn may leave its background reader in a read of the
		// socket, which would take the first bytes the relay is to read.
		err = pc.SyncConn(ctx)
	}
	cancel()
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			end.clean = pc.TxStatus() == 'I' && !pc.IsClosed()
			s.refuse(sess.cw, reject(pgErr.Code, "%s", pgErr.Message))
		} else {
			s.refuse(sess.cw, reject("08006", "server connection failed: %s", s.mgr.ScrubError(err)))
		}
		_ = sess.cw.Flush()
		return
	}
	for _, name := range reportedParams {
		if v := pc.ParameterStatus(name); v != "" {
			_ = sess.send(&pgproto3.ParameterStatus{Name: name, Value: v})
		}
	}
	key := make([]byte, 4)
	binary.BigEndian.PutUint32(key, sess.secret)
	_ = sess.send(&pgproto3.BackendKeyData{ProcessID: sess.pid, SecretKey: key})
	_ = sess.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := sess.cw.Flush(); err != nil {
		end.clean = true
		return
	}
	sess.setServer(pc)
	end = sess.relay(pc.Conn(), startupWant(params))
	sess.setServer(nil)
	switch {
	case end.txStatus == 'I':
	case end.lost:
		s.m.transactions.WithLabelValues("error").Inc()
	default:
		s.m.transactions.WithLabelValues("abandoned").Inc()
	}
}

// release resets a cleanly left connection (ROLLBACK when the client left mid-transaction,
// DISCARD ALL, and pgx's statement caches cleared since the server's statements are gone) and
// returns it to the pool; anything else is closed so that the pool discards it.
func (sess *session) release(c *pgxpool.Conn, end relayEnd) {
	s := sess.srv
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ResetTimeout)
	defer cancel()
	pc := c.Conn().PgConn()
	ok := end.clean && !pc.IsClosed()
	if ok && end.txStatus != 'I' {
		_, err := pc.Exec(ctx, "ROLLBACK").ReadAll()
		ok = err == nil
	}
	if ok {
		_, err := pc.Exec(ctx, "DISCARD ALL").ReadAll()
		ok = err == nil
	}
	if ok {
		ok = c.Conn().DeallocateAll(ctx) == nil && pc.TxStatus() == 'I'
	}
	if !ok {
		_ = c.Conn().Close(ctx)
	}
	c.Release()
}
