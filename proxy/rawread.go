package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
)

// Reading a socket without the read that ends in EAGAIN.
//
// Go's poller parks a goroutine only after a read returned EAGAIN, so reading a message costs
// two reads: the one that gets it and the one that finds nothing more. A read that did not fill
// its buffer already shows the socket was drained (on TCP and Unix stream sockets a read takes
// all that is queued, up to the buffer's size), and the goroutine could park right away. The
// poller forgets that the socket became readable whenever a read call begins, though, so parking
// without the EAGAIN read is only safe within one call: the relay's loop runs inside one
// syscall.RawConn.Read, whose callback returns false to park after a short read and is called
// again once the socket is readable (relayRaw for a client, readRaw for a server connection).
// Deadlines end the call as they end a Read. TLS connections, and messages larger than the
// read buffer, take the ordinary path.
//
// It parks so only where the peer waits for an answer that always comes: after a Query, Sync or
// FunctionCall from a client, and after a server's ReadyForQuery. A short read cannot show that
// the peer also closed its end (the poller does not pass on EPOLLRDHUP), and when the close came
// in the same readiness event as the data, no event follows. What the proxy sends next then
// draws the closed socket's reset, which is an event. After other messages (a batch without its
// Sync, COPY data, a Flush that may have nothing to send) the read that ends in EAGAIN, or in
// the end of the connection, is still made.
//
// Ending a connection: Close waits until every read and write in flight on the connection has
// returned, and a RawConn.Read call is one read for as long as its callback runs, which is the
// whole relay of a message: writes to the other side, waits for its locks. A Close from inside
// the callback would wait for itself, and a Close from elsewhere for a callback that may be
// waiting for the closer (for a lock it holds), or for a server busy with a long query to take
// its next request (shutdown, which closed every client in turn, waited so). So the relay follows
// one rule: a connection is closed only by the goroutine that reads it, once it has left its
// read (a client's session goroutine when the session ends; a server connection's readLoop when
// it stops, or retire and drop once readLoop has exited). Everyone else, and that goroutine
// inside its callback, hangs the connection up instead (hangUp): shutdown(2) on the socket,
// through RawConn.Control, which waits for no reader. Writes to it then fail at once, and its
// reader, woken wherever it waits, reads the end of the connection and ends as after a Close (a
// client that goes on sending ends at its next message: clientWriter.hungUp).

// errWouldBlock is fdReader's EAGAIN inside the callback: the buffer keeps what it read, and the
// callback parks.
var errWouldBlock = errors.New("socket drained")

// fdReader is what a plaintext connection's buffered reader reads from: its socket directly while
// the callback runs, the connection otherwise.
type fdReader struct {
	conn net.Conn
	rc   syscall.RawConn
	fd   int  // the socket, while raw
	raw  bool // inside the callback
	// short: the last read inside this call did not fill the buffer, so the socket was
	// drained: the next wait needs no read first. full: it filled it.
	short, full bool
}

// newFDReader is a reader for conn when it is a TCP or Unix socket (not TLS), or nil.
func newFDReader(conn net.Conn) *fdReader {
	if !rawReadsSupported {
		return nil
	}
	var sc syscall.Conn
	switch c := conn.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &fdReader{conn: conn, rc: rc}
}

func (r *fdReader) Read(p []byte) (int, error) {
	if !r.raw {
		return r.conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := readFD(r.fd, p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, errWouldBlock
		case err != nil:
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
		case n == 0:
			return 0, io.EOF
		}
		r.short, r.full = n < len(p), n == len(p)
		return n, nil
	}
}

// fill reads into r, inside the callback, until it holds a whole message. Without one it
// reports what the callback returns: false to park (the socket is drained), true to leave the
// call for the ordinary path: a message over max bytes or the read buffer, a read error (which
// the ordinary read meets again), or a read that filled the buffer. The last keeps deadlines as
// they were: a stream that never drains the socket would not wait, so would not see one; the
// ordinary read, and the next call's start, check it.
func (fr *fdReader) fill(r *bufio.Reader, max int) (whole, leave bool) {
	need := 5
	if r.Buffered() >= 5 {
		p, _ := r.Peek(5)
		need = 1 + int(binary.BigEndian.Uint32(p[1:]))
		if need > r.Size() || need > max {
			return false, true
		}
	}
	if _, err := r.Peek(need); err != nil {
		fr.short = false // parked or leaving: the next read is made
		return false, err != errWouldBlock
	}
	if fr.full {
		fr.full = false
		return false, true
	}
	return true, false
}

// relayRaw is loop for a plaintext client: it relays the client's messages inside one
// RawConn.Read call for as long as whole messages come; a message larger than the read buffer,
// a read error and a deadline (the idle-transaction timeout, EndSessions) go through step, the
// ordinary path, which knows what each means. It reports false when the session ends.
func (cl *client) relayRaw(fr *fdReader) bool {
	var ended bool
	fr.short, fr.full = false, false // the call's start forgets readiness: its first read must not be skipped
	_ = fr.rc.Read(func(fd uintptr) bool {
		fr.fd, fr.raw = int(fd), true
		defer func() { fr.raw = false }()
		for {
			if cl.cr != nil && !needFlush(cl.cr) {
				if !cl.step() {
					ended = true
					return true
				}
				continue
			}
			cl.beforeWait()
			if cl.core.cfg.IdleTransactionTimeout > 0 {
				cl.armIdleTimeout()
			}
			cl.armPark() // its deadline ends the call, and step parks the client (idlewatch.go)
			if cl.core.ending() {
				return true // step sees to the end of the session
			}
			if fr.short && cl.awaits && (cl.cr == nil || cl.cr.Buffered() == 0) {
				// Park: the socket was drained, and the poller will say when not.
				fr.short = false
				cl.releaseReader()
				return false
			}
			if cl.cr == nil {
				cl.cr = getReader(fr)
			}
			if whole, leave := fr.fill(cl.cr, cl.core.cfg.MaxMessageSize); !whole {
				if !leave {
					cl.releaseReader()
				}
				return leave
			}
		}
	})
	return !ended
}

// readRaw is readLoop for a plaintext server connection, as relayRaw is loop for a client: it
// parks without the read that ends in EAGAIN only after a ReadyForQuery, when the server waits
// for the proxy's next request (which would draw the reset of a socket the server closed). It
// reports false when the connection is done with.
func (c *srvConn) readRaw(fr *fdReader, rd *answerReader) bool {
	var ended bool
	fr.short, fr.full = false, false
	_ = fr.rc.Read(func(fd uintptr) bool {
		fr.fd, fr.raw = int(fd), true
		defer func() { fr.raw = false }()
		for {
			if !needFlush(c.sr) {
				if !c.step(rd) {
					ended = true
					return true
				}
				continue
			}
			rd.flush(c.core)
			if fr.short && rd.idle && c.sr.Buffered() == 0 {
				fr.short = false
				return false
			}
			if whole, leave := fr.fill(c.sr, c.sr.Size()); !whole {
				return leave
			}
		}
	})
	return !ended
}

// hangUp ends conn without waiting for anything (see "Ending a connection" above): the socket
// is shut down in both directions, which wakes its reader and writers, and whoever reads it
// closes it. A TLS connection's socket is shut down under it. A connection that is no socket
// is closed.
func hangUp(conn net.Conn) {
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok || !rawReadsSupported {
		_ = conn.Close() // without the reads above, a Close waits for no callback
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return // closed already
	}
	_ = rc.Control(func(fd uintptr) {
		shutdownFD(fd)
	})
}
