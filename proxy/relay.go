package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
)

// relay moves messages both ways until the client leaves or either connection fails. The client
// to server direction runs here; the other in its own goroutine. Only the messages that metrics
// need are decoded: Query and Parse (SQL text), Bind and Close (statement names), ReadyForQuery
// and ErrorResponse. Everything else is forwarded as it came.
//
// RESET, RESET ALL, SET ... TO DEFAULT and DISCARD ALL return the server connection to the pool
// connection's defaults, not to the client's start-up values (which the proxy applied with
// set_config): after them the relay sends a query of its own that restores those (restoreSQL),
// whose answers the client does not see.
func (sess *session) relay(server net.Conn, start map[string]string) relayEnd {
	s := sess.srv
	sr := bufio.NewReaderSize(server, ioBufSize)
	sw := bufio.NewWriterSize(server, ioBufSize)
	pending := make(chan pendingSync, 256)
	var stopping atomic.Bool
	var outstanding atomic.Int32 // requests sent and not yet answered to their ReadyForQuery
	done := make(chan relayEnd, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		done <- sess.serverToClient(sr, pending, &outstanding, &stopping)
	}()

	var (
		hdr        [5]byte
		buf        []byte
		stmts      = map[string]stmtInfo{}
		batchStart time.Time
		batch      stmtInfo
		batchSet   bool // batch has a statement (from Parse or Bind)
		executed   bool // batch has an Execute
		dirty      bool // extended-protocol messages sent since the last Sync
		bytesIn    int
		resets     []string // of the batch, to restore at its Sync
		post       []byte   // a Query of the proxy's own to send after the client's message
		clientGone bool
		terminated bool         // the client said goodbye (Terminate) rather than dropping the connection
		bad        *rejectError // a message the proxy refuses to relay
		discard    int          // body bytes of that message still to skip
		writeErr   error
	)
	readBody := func(n int) ([]byte, error) {
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		_, err := io.ReadFull(sess.cr, buf)
		return buf, err
	}
	enqueue := func(p pendingSync) {
		outstanding.Add(1)
		select {
		case pending <- p:
		default:
			// The server answers in order; let it see what it must answer first.
			_ = sw.Flush()
			select {
			case pending <- p:
			case <-exited:
			}
		}
	}
loop:
	for {
		if needFlush(sess.cr) {
			if sw.Buffered() > 0 {
				if writeErr = sw.Flush(); writeErr != nil {
					break
				}
			}
			if bytesIn > 0 {
				s.m.bytesIn.Add(float64(bytesIn))
				bytesIn = 0
			}
		}
		if _, err := io.ReadFull(sess.cr, hdr[:]); err != nil {
			clientGone = true
			break
		}
		typ := hdr[0]
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			bad = reject("08P01", "invalid message length %d", n+4)
			break
		}
		if n > s.cfg.MaxMessageSize {
			bad = reject("54000", "message of type %q too large (more than %d bytes)", typ, s.cfg.MaxMessageSize)
			discard = n
			break
		}
		bytesIn += n + 5
		if batchStart.IsZero() {
			batchStart = time.Now()
		}
		var body []byte
		var err error
		switch typ {
		case 'X': // Terminate: the server connection stays open for the pool.
			clientGone, terminated = true, true
			break loop
		case 'Q':
			if body, err = readBody(n); err != nil {
				clientGone = true
				break loop
			}
			sqlb := body[:max(len(body)-1, 0)]
			sql := sqlPrefix(sqlb)
			enqueue(pendingSync{start: batchStart, op: pool.ClassifyOperation(sql), sql: sql, measure: true})
			batchStart = time.Time{}
			if len(start) > 0 {
				post = restoreQuery(start, s.analysis.Analyze(sqlb).Resets)
			}
		case 'P':
			if body, err = readBody(n); err != nil {
				clientGone = true
				break loop
			}
			name, rest := cstring(body)
			sqlb, _ := cbytes(rest)
			sql := sqlPrefix(sqlb)
			info := stmtInfo{op: pool.ClassifyOperation(sql), sql: sql}
			if len(start) > 0 {
				info.resets = s.analysis.Analyze(sqlb).Resets
			}
			if _, ok := stmts[name]; ok || len(stmts) < maxStatements {
				stmts[name] = info
			}
			if !batchSet {
				batch, batchSet = info, true
			}
			dirty = true
		case 'B':
			if body, err = readBody(n); err != nil {
				clientGone = true
				break loop
			}
			_, rest := cbytes(body)
			name, _ := cbytes(rest)
			info, ok := stmts[string(name)]
			if ok && (!batchSet || !executed) {
				batch, batchSet = info, true
			}
			resets = append(resets, info.resets...)
			dirty = true
		case 'C':
			if body, err = readBody(n); err != nil {
				clientGone = true
				break loop
			}
			if len(body) > 0 && body[0] == 'S' {
				name, _ := cstring(body[1:])
				delete(stmts, name)
			}
			dirty = true
		case 'E':
			executed = true
			dirty = true
		case 'S':
			if !batchSet {
				batch = stmtInfo{op: pool.OpOther}
			}
			enqueue(pendingSync{start: batchStart, op: batch.op, sql: batch.sql, measure: executed})
			batchStart, batchSet, executed, dirty = time.Time{}, false, false, false
			if len(resets) > 0 {
				post = restoreQuery(start, resets)
				resets = resets[:0]
			}
		case 'F':
			enqueue(pendingSync{start: batchStart, op: pool.OpOther, sql: "function call", measure: true})
			batchStart = time.Time{}
		case 'D', 'H':
			dirty = true
		}
		if _, writeErr = sw.Write(hdr[:]); writeErr != nil {
			break
		}
		if body != nil {
			_, writeErr = sw.Write(body)
		} else if readErr, werr := copyBody(sw, sess.cr, n); readErr != nil {
			clientGone = true
			break
		} else {
			writeErr = werr
		}
		if writeErr == nil && post != nil {
			enqueue(pendingSync{silent: true})
			_, writeErr = sw.Write(post)
			post = nil
		}
		if writeErr != nil {
			break
		}
		if cap(buf) > 1<<20 {
			buf = nil // do not keep a large message's buffer for the whole session
		}
	}
	if bytesIn > 0 {
		s.m.bytesIn.Add(float64(bytesIn))
	}
	if writeErr == nil && clientGone {
		writeErr = sw.Flush()
	}

	// Stop the server reader unless it already stopped (server gone): a read deadline wakes it
	// at a message boundary or reports that it was inside one; once stopping, it also returns
	// after the last pending ReadyForQuery.
	var end relayEnd
	select {
	case end = <-done:
	default:
		cancelQuery := func() {
			ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ResetTimeout)
			sess.cancelServer(ctx)
			cancel()
		}
		// A client may say goodbye right after its last Sync without reading the answer
		// (node-postgres' pool does after an error): collect the answers for a while, so that
		// those queries are measured and the connection stays reusable. The client will not
		// read them: writes to it fail at once instead of blocking.
		draining := outstanding.Load() > 0 && terminated && writeErr == nil && s.ctx.Err() == nil
		deadline := time.Now()
		switch {
		case draining:
			deadline = deadline.Add(s.cfg.ResetTimeout)
			_ = sess.client.SetWriteDeadline(time.Now())
		case outstanding.Load() > 0:
			// The client left with a query running: cancel it rather than let it run on.
			cancelQuery()
		}
		stopping.Store(true)
		if outstanding.Load() == 0 {
			deadline = time.Now() // answered meanwhile, before the reader could see stopping
		}
		_ = server.SetReadDeadline(deadline)
		if s.ctx.Err() != nil {
			_ = server.SetReadDeadline(time.Now()) // Close's interrupt may have come just before
		}
		end = <-done
		_ = server.SetReadDeadline(time.Time{})
		if draining && outstanding.Load() > 0 && !end.lost && s.ctx.Err() == nil {
			cancelQuery() // the answers did not come in time
		}
	}
	if end.lost {
		return end
	}
	end.clean = end.clean && writeErr == nil && outstanding.Load() == 0 && !dirty && sr.Buffered() == 0 && bad == nil
	if writeErr != nil {
		s.m.serverLost.Inc()
		s.refuse(sess.cw, reject("08006", "server connection lost; the session ended and its transaction, if any, is lost"))
		_ = sess.cw.Flush()
	}
	if bad != nil {
		s.refuse(sess.cw, bad)
		_ = sess.cw.Flush()
		if discard > 0 {
			s.endOversized(sess, sess.cr, discard)
		}
	}
	return end
}

// copyBody copies n body bytes from r to w, straight out of r's buffer. A failed read means the
// peer is gone; after a failed write it still consumes the body, so each side of the relay
// decides for itself what a write error means.
func copyBody(w *bufio.Writer, r *bufio.Reader, n int) (readErr, writeErr error) {
	for n > 0 {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				return err, writeErr
			}
		}
		b, _ := r.Peek(min(n, r.Buffered()))
		if writeErr == nil {
			_, writeErr = w.Write(b)
		}
		_, _ = r.Discard(len(b))
		n -= len(b)
	}
	return nil, writeErr
}

// needFlush reports whether r holds no complete message, so the next read may wait for the
// peer: buffered output must go out first.
func needFlush(r *bufio.Reader) bool {
	b := r.Buffered()
	if b < 5 {
		return true
	}
	p, _ := r.Peek(5)
	return b < 1+int(binary.BigEndian.Uint32(p[1:]))
}

// sqlKept is how much of a statement's text the relay keeps: enough to classify it and for the
// slow query log (which shows 500 bytes), without copying large statements per message.
const sqlKept = 1024

func sqlPrefix(b []byte) string { return string(b[:min(len(b), sqlKept)]) }

// cbytes splits a NUL-terminated field off b without copying.
func cbytes(b []byte) ([]byte, []byte) {
	i := indexZero(b)
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i+1:]
}

func cstring(b []byte) (string, []byte) {
	i := indexZero(b)
	if i < 0 {
		return string(b), nil
	}
	return string(b[:i]), b[i+1:]
}

// restoreQuery is a Query message restoring the start-up values start of the settings in
// resets, or nil.
func restoreQuery(start map[string]string, resets []string) []byte {
	sql := restoreSQL(start, resets)
	if sql == "" {
		return nil
	}
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	return b
}
