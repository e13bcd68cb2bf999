package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
)

// serverToClient relays server messages to the client and measures each ReadyForQuery against
// its pending Query or Sync.
func (sess *session) serverToClient(sr *bufio.Reader, pending chan pendingSync, outstanding *atomic.Int32, stopping *atomic.Bool) relayEnd {
	s := sess.srv
	end := relayEnd{txStatus: 'I'}
	var (
		hdr      [5]byte
		ebuf     []byte
		batchErr *pgconn.PgError
		fatal    bool
		bytesOut int
		cur      pendingSync // the request being answered, once its first answer came
		have     bool
	)
	for {
		if needFlush(sr) {
			if sess.cw.Buffered() > 0 {
				if err := sess.cw.Flush(); err != nil {
					// The client is gone; the relay's read fails too and stops us.
					_ = sess.client.Close()
				}
			}
			if bytesOut > 0 {
				s.m.bytesOut.Add(float64(bytesOut))
				bytesOut = 0
			}
		}
		got, err := io.ReadFull(sr, hdr[:])
		if err != nil {
			if got == 0 && stopping.Load() && isTimeout(err) {
				end.clean = true
				return end
			}
			if stopping.Load() && isTimeout(err) {
				return end // inside a message: not reusable
			}
			sess.serverLost(err, pending, fatal)
			end.lost = true
			return end
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			sess.serverLost(errors.New("invalid message length from server"), pending, fatal)
			end.lost = true
			return end
		}
		bytesOut += n + 5
		if !have {
			select {
			case cur = <-pending:
				have = true
			default:
			}
		}
		if have && cur.silent {
			// The proxy's own query: none of its answers are the client's.
			if typ == 'Z' && n == 1 {
				st, err := sr.ReadByte()
				if err != nil {
					if !stopping.Load() {
						sess.serverLost(err, pending, fatal)
						end.lost = true
					}
					return end
				}
				end.txStatus, have = st, false
				if outstanding.Add(-1) == 0 && stopping.Load() {
					_ = sess.cw.Flush()
					end.clean = true
					return end
				}
				continue
			}
			if _, err := sr.Discard(n); err != nil {
				if !stopping.Load() {
					sess.serverLost(err, pending, fatal)
					end.lost = true
				}
				return end
			}
			continue
		}
		_, _ = sess.cw.Write(hdr[:])
		switch typ {
		case 'Z':
			var st [1]byte
			if n != 1 {
				sess.serverLost(errors.New("invalid ReadyForQuery from server"), pending, fatal)
				end.lost = true
				return end
			}
			if _, err := io.ReadFull(sr, st[:]); err != nil {
				if !stopping.Load() {
					sess.serverLost(err, pending, fatal)
					end.lost = true
				}
				return end
			}
			_, _ = sess.cw.Write(st[:])
			p := cur
			if !have {
				select {
				case p = <-pending:
					have = true
				default:
				}
			}
			if have {
				outstanding.Add(-1)
			}
			have = false
			if p.measure {
				var qerr error
				if batchErr != nil {
					qerr = batchErr
				}
				s.mgr.RecordQuery(p.op, p.sql, time.Since(p.start), qerr)
			}
			if prev := end.txStatus; prev != 'I' && st[0] == 'I' {
				outcome := "commit"
				switch {
				case prev == 'E' || batchErr != nil:
					outcome = "error"
				case p.op == pool.OpRollback:
					outcome = "rollback"
				}
				s.m.transactions.WithLabelValues(outcome).Inc()
			}
			end.txStatus = st[0]
			batchErr = nil
			if stopping.Load() && outstanding.Load() == 0 {
				_ = sess.cw.Flush()
				s.m.bytesOut.Add(float64(bytesOut))
				end.clean = true
				return end
			}
			continue
		case 'E':
			if n > 1<<20 {
				sess.serverLost(errors.New("oversized ErrorResponse from server"), pending, fatal)
				end.lost = true
				return end
			}
			if cap(ebuf) < n {
				ebuf = make([]byte, n)
			}
			ebuf = ebuf[:n]
			if _, err := io.ReadFull(sr, ebuf); err != nil {
				if !stopping.Load() {
					sess.serverLost(err, pending, fatal)
					end.lost = true
				}
				return end
			}
			_, _ = sess.cw.Write(ebuf)
			e := decodeError(ebuf)
			if batchErr == nil {
				batchErr = e
			}
			if e.Severity == "FATAL" || e.Severity == "PANIC" {
				fatal = true
			}
			continue
		}
		// Client write errors are ignored: the client side notices its closed connection.
		if err, _ := copyBody(sess.cw, sr, n); err != nil {
			if !stopping.Load() {
				sess.serverLost(err, pending, fatal)
				end.lost = true
			}
			return end
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// decodeError reads the fields metrics and logs need from an ErrorResponse body.
func decodeError(b []byte) *pgconn.PgError {
	e := &pgconn.PgError{}
	for len(b) > 0 && b[0] != 0 {
		t := b[0]
		v, rest := cstring(b[1:])
		switch t {
		case 'S':
			if e.Severity == "" {
				e.Severity = v
			}
		case 'V':
			e.Severity, e.SeverityUnlocalized = v, v
		case 'C':
			e.Code = v
		case 'M':
			e.Message = v
		}
		b = rest
	}
	return e
}

// serverLost ends a session whose server connection failed: queries in flight are counted as
// 08006 errors, the client gets FATAL 08006 (unless the server said FATAL itself) and is closed.
func (sess *session) serverLost(cause error, pending chan pendingSync, serverSaidFatal bool) {
	s := sess.srv
	if s.ctx.Err() == nil {
		s.m.serverLost.Inc()
	}
	lost := &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006",
		Message: "server connection lost"}
	for {
		select {
		case p := <-pending:
			if p.measure {
				s.mgr.RecordQuery(p.op, p.sql, time.Since(p.start), lost)
			}
			continue
		default:
		}
		break
	}
	if s.ctx.Err() == nil {
		s.log.Warn("Proxy server connection lost", "user", sess.user, "client", sess.remote,
			"error", s.mgr.ScrubError(cause).Error())
	}
	if !serverSaidFatal {
		s.refuse(sess.cw, reject("08006", "server connection lost; the session ended and its transaction, if any, is lost"))
	}
	_ = sess.cw.Flush()
	_ = sess.client.Close()
}
