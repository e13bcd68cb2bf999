package proxy

import (
	"bufio"
	"context"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
	server *pgconn.PgConn // for cancel requests; nil while no server connection is held
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
