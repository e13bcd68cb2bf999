package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
)

// Reading a client's socket without the read that ends in EAGAIN.
//
// Only after a request the proxy answers (a Query, Sync, Flush, FunctionCall, CopyDone or
// CopyFail ending the data read): a short read cannot show that the client closed its end, as
// the poller's EPOLLRDHUP would, and when the close came with the request in one readiness
// event, no event follows. The answer sent then draws the closed socket's reset, which is one.
// After other messages (a batch without its Sync, COPY data) nothing may be sent, so the read
// that ends in EAGAIN, or in the end of the connection, is still made.
//
// Go's poller parks a goroutine only after a read returned EAGAIN, so reading a message costs
// two reads: the one that gets it and the one that finds nothing more. A read that did not fill
// its buffer already shows the socket was drained (on TCP and Unix stream sockets a read takes
// all that is queued, up to the buffer's size), and the goroutine could park right away. The
// poller forgets that the socket became readable whenever a read call begins, though, so parking
// without the EAGAIN read is only safe within one call: the client's whole loop runs inside one
// syscall.RawConn.Read, whose callback returns false to park after a short read and is called
// again once the socket is readable (relayRaw). Deadlines and Close end the call as they end a
// Read. TLS connections, and messages larger than the read buffer, take the ordinary path.

// errWouldBlock is fdReader's EAGAIN inside the callback: the buffer keeps what it read, and the
// callback parks.
var errWouldBlock = errors.New("socket drained")

// fdReader is what a plaintext client's buffered reader reads from: its socket directly while
// the callback runs, the connection otherwise.
type fdReader struct {
	conn net.Conn
	rc   syscall.RawConn
	fd   int  // the socket, while inRaw
	raw  bool // inside the callback
	// short: the last read inside this call did not fill the buffer, so the socket was
	// drained: the next wait needs no read first.
	short bool
}

// newFDReader is a reader for conn when it is a TCP or Unix socket (not TLS), or nil.
func newFDReader(conn net.Conn) *fdReader {
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
		n, err := syscall.Read(r.fd, p)
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
		r.short = n < len(p)
		return n, nil
	}
}

// relayRaw is loop for a plaintext client: it relays the client's messages inside one
// RawConn.Read call for as long as whole messages come; a message larger than the read buffer,
// a read error and a deadline (the idle-transaction timeout, EndSessions) go through step, the
// ordinary path, which knows what each means. It reports false when the session ends.
func (cl *client) relayRaw(fr *fdReader) bool {
	var ended bool
	fr.short = false // the call's start forgets readiness: its first read must not be skipped
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
			if cl.core.ending() {
				return true // step sees to the end of the session
			}
			if fr.short && cl.awaits && cl.cr.Buffered() == 0 {
				// Park: the socket was drained, and the poller will say when not.
				fr.short = false
				cl.releaseReader()
				return false
			}
			if cl.cr == nil {
				cl.cr = getReader(fr)
			}
			need := 5
			if cl.cr.Buffered() >= 5 {
				p, _ := cl.cr.Peek(5)
				need = 1 + int(binary.BigEndian.Uint32(p[1:]))
				if need > cl.cr.Size() || need > cl.core.cfg.MaxMessageSize {
					return true // step reads it through the connection
				}
			}
			if _, err := cl.cr.Peek(need); err != nil {
				if err == errWouldBlock {
					cl.releaseReader()
					return false
				}
				return true // step meets the error again, and ends the session
			}
		}
	})
	return !ended
}
