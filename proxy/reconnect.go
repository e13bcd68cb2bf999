package proxy

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// maxDeadPoolConns bounds how many dead connections in a row acquireLive takes from the pool
// before it gives up: after a restart every idle one may be dead, and pgxpool pings only those
// idle for over a second.
const maxDeadPoolConns = 8

// acquireLive borrows a connection from the pool for the proxy's own use, ready for it: pgx's
// statement cache, which may hold statements from library use, is dropped, so that the only
// statements on the connection are the ones the proxy tracks. A connection that fails that
// (it died idle in the pool, in a restart) is closed, and another taken, within
// DB_CONNECTION_TIMEOUT: no client gets a connection that was dead when handed out.
func (s *core) acquireLive() (*pgxpool.Conn, error) {
	deadline := time.Now().Add(s.mgr.Config().ConnectTimeout)
	for tries := 1; ; tries++ {
		pooled, err := s.acquireConn()
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ResetTimeout)
		pc := pooled.Conn().PgConn()
		// SyncConn comes last: a query through pgconn may leave its background reader in a
		// read of the socket.
		err = pooled.Conn().DeallocateAll(ctx)
		if err == nil {
			err = pc.SyncConn(ctx)
		}
		if err == nil {
			cancel()
			return pooled, nil
		}
		_ = pooled.Conn().Close(ctx)
		cancel()
		pooled.Release()
		if s.ctx.Err() != nil || tries >= maxDeadPoolConns || time.Now().After(deadline) {
			return nil, inBand(reject("08006", "server connection failed: %s", s.mgr.ScrubError(err)))
		}
	}
}
