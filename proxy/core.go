package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/internal/sqlstate"
	"github.com/pgsidecar/pgsidecar/pool"
)

// core is what a Server's clients and server connections share: the pool, the configuration,
// metrics and logs, the statement analysis and the proxy-wide prepared statements. The parts of
// the relay hold it, not the Server, which stands above them.
type core struct {
	mgr      *pool.Manager
	cfg      Config
	log      *slog.Logger
	m        *metrics
	ctx      context.Context           // canceled by Close
	endBy    atomic.Pointer[time.Time] // set by EndSessions: when the grace for open transactions ends
	maint    maintenance               // pause and reconnect
	analysis sessionsql.Cache
	stmts    stmtRegistry
	watch    idleWatcher // wakes parked idle clients (idlewatch.go)
	// Logs of what clients did that pinned or closed them.
	pinLog, oversizeLog, idleTxLog *logThrottle
}

// queryWaitTimeout is --proxy.query-wait-timeout, or DB_CONNECTION_TIMEOUT when it is auto.
func (s *core) queryWaitTimeout() time.Duration {
	if s.cfg.QueryWaitTimeout > 0 {
		return s.cfg.QueryWaitTimeout
	}
	return s.mgr.Config().ConnectTimeout
}

// refuse sends err to the client as a FATAL ErrorResponse (when it is one to send) and counts it.
func (s *core) refuse(w io.Writer, err error) {
	var r *rejectError
	if !errors.As(err, &r) {
		if err != nil && !errors.Is(err, io.EOF) {
			s.log.Debug("Proxy client connection failed", "error", err.Error())
		}
		return
	}
	// The codes are the proxy's own, but 53xxx ones come from the server: keep the label set
	// bounded whatever it sends.
	s.m.rejected.WithLabelValues(sqlstate.Label(r.code)).Inc()
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: r.code, Message: r.msg}).Encode(nil)
	_, _ = w.Write(b)
}

// acquireConn borrows a server connection within DB_CONNECTION_TIMEOUT (the pool retries while
// the database is unreachable). A client that still has none gets 53300 (pool exhausted, or the
// server refused for too many connections) or 08006 (database unreachable or not answering)
// instead of waiting forever.
func (s *core) acquireConn() (*pgxpool.Conn, error) {
	c, err := s.mgr.Acquire(s.ctx)
	if err == nil {
		return c, nil
	}
	var ae *pool.AcquireError
	if errors.As(err, &ae) && ae.Cause != nil {
		code := "08006"
		if c := pool.SQLState(ae.Cause); strings.HasPrefix(c, "53") {
			// The server answered but refused for lack of resources (too many connections): a
			// capacity problem like an exhausted pool, not an outage.
			code = c
		}
		return nil, inBand(reject(code, "cannot connect to the database within DB_CONNECTION_TIMEOUT (%s): %s", ae.Wait, ae.Cause))
	}
	if ae != nil && ae.Opening {
		// Connections were free for the taking, but the database answered neither the ping of an
		// idle one nor a new connection: a frozen or overloaded server, not a busy pool.
		return nil, inBand(reject("08006", "cannot connect to the database within DB_CONNECTION_TIMEOUT (%s): the database did not answer", ae.Wait))
	}
	// The pool is busy, or the proxy is closing.
	cfg := s.mgr.Config()
	return nil, reject("53300", "no server connection available within DB_CONNECTION_TIMEOUT (%s): all %d pool connections are in use",
		cfg.ConnectTimeout, cfg.MaxConns)
}

// inBand marks a failure to get a server connection as one a transaction-mode client is told
// of in-band, staying connected (its session lives in the proxy): a client whose server
// connection was lost in a restart waits for the new one up to DB_CONNECTION_TIMEOUT, and may
// try again after. A login refused so still gets FATAL.
func inBand(r *rejectError) *rejectError {
	r.inBand = true
	return r
}
