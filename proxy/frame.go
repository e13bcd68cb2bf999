package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Framing: reading, copying and writing wire-protocol messages, shared by both directions.

const ioBufSize = 32 << 10

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

// appendMsg appends a message of type typ with body to b.
func appendMsg(b []byte, typ byte, body []byte) []byte {
	b = append(b, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(len(body)+4))
	return append(b, body...)
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

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// closeBody is the body of a Close of the statement named name.
func closeBody(name string) []byte {
	b := make([]byte, 0, len(name)+2)
	b = append(b, 'S')
	b = append(b, name...)
	return append(b, 0)
}

// errorBody is the body of an ErrorResponse of the proxy's.
func errorBody(code, msg string) []byte {
	e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
	b, _ := e.Encode(nil)
	return b[5:]
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

// textRow reads a DataRow of two non-null text columns.
func textRow(b []byte) ([2]string, bool) {
	var row [2]string
	if len(b) < 2 || binary.BigEndian.Uint16(b) != 2 {
		return row, false
	}
	b = b[2:]
	for i := range row {
		if len(b) < 4 {
			return row, false
		}
		n := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if n < 0 || n > len(b) {
			return row, false
		}
		row[i] = string(b[:n])
		b = b[n:]
	}
	return row, true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

var (
	parseComplete, _ = (&pgproto3.ParseComplete{}).Encode(nil)
	closeComplete, _ = (&pgproto3.CloseComplete{}).Encode(nil)
	readyIdle, _     = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
	// copyFailLeft ends a COPY FROM STDIN whose client left.
	copyFailLeft, _ = (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(nil)
)

// rejectError is an ErrorResponse the proxy sends before closing a client.
type rejectError struct {
	code, msg string
	// inBand: the client can be told with an ERROR in place of its request's answer and stay
	// connected (transaction mode's wait for a server connection).
	inBand bool
}

func (e *rejectError) Error() string { return e.msg }

func reject(code, format string, args ...any) *rejectError {
	return &rejectError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Idle clients hold no buffers: readers and writers come from these pools while messages are in
// flight.
var readerPool, writerPool sync.Pool

// getReader is a buffered reader of r from readerPool.
func getReader(r io.Reader) *bufio.Reader {
	if b, ok := readerPool.Get().(*bufio.Reader); ok {
		b.Reset(r)
		return b
	}
	return bufio.NewReaderSize(r, ioBufSize)
}

// getWriter is a buffered writer to w from writerPool.
func getWriter(w io.Writer) *bufio.Writer {
	if b, ok := writerPool.Get().(*bufio.Writer); ok {
		b.Reset(w)
		return b
	}
	return bufio.NewWriterSize(w, ioBufSize)
}

// clientWriter buffers what goes to the client: the answers the server side forwards, and what
// the proxy answers itself. It holds a buffer only while bytes are on their way.
type clientWriter struct {
	conn net.Conn
	wmu  sync.Mutex
	cw   *bufio.Writer // from writerPool
	// hungUp: a write to the client failed, or its server connection was lost with it, and the
	// connection was hung up (rawread.go): its session ends at the next message it sends.
	hungUp atomic.Bool
}

// writeClient buffers bytes for the client.
func (w *clientWriter) writeClient(b []byte) {
	w.wmu.Lock()
	if w.cw == nil {
		w.cw = getWriter(w.conn)
	}
	_, _ = w.cw.Write(b)
	w.wmu.Unlock()
}

// writeMsg buffers a message for the client: its body, or n body bytes copied from r. Only a
// failed read is returned: the client's own read notices a client that is gone.
func (w *clientWriter) writeMsg(typ byte, body []byte, r *bufio.Reader, n int) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.cw == nil {
		w.cw = getWriter(w.conn)
	}
	var hdr [5]byte
	hdr[0] = typ
	if r == nil {
		n = len(body)
	}
	binary.BigEndian.PutUint32(hdr[1:], uint32(n+4))
	_, _ = w.cw.Write(hdr[:])
	if r == nil {
		_, _ = w.cw.Write(body)
		return nil
	}
	readErr, _ := copyBody(w.cw, r, n)
	return readErr
}

// flushClient sends what is buffered for the client.
func (w *clientWriter) flushClient() {
	w.wmu.Lock()
	if w.cw != nil && w.cw.Buffered() > 0 {
		if err := w.cw.Flush(); err != nil {
			w.hangUp() // the client's read ends, and with it the session
		}
	}
	w.wmu.Unlock()
}

// offerFlush is flushClient for the client's own goroutine before it waits for the client: it
// does nothing while the server side holds the writer. That side may be waiting, in the middle
// of an answer, for the rest of it, which the server sends only once it gets a request this
// goroutine has still to read; and it flushes what it wrote once it is done.
func (w *clientWriter) offerFlush() {
	if !w.wmu.TryLock() {
		return
	}
	if w.cw != nil && w.cw.Buffered() > 0 {
		if err := w.cw.Flush(); err != nil {
			w.hangUp()
		}
	}
	w.wmu.Unlock()
}

// hangUp ends the client's connection from anywhere: the client's goroutine reads its end, or
// sees hungUp before its next message, and ends the session.
func (w *clientWriter) hangUp() {
	w.hungUp.Store(true)
	hangUp(w.conn)
}

// releaseClientWriter gives the client writer back to its pool when nothing is buffered.
func (w *clientWriter) releaseClientWriter() {
	w.wmu.Lock()
	if w.cw != nil && w.cw.Buffered() == 0 {
		w.cw.Reset(nil)
		writerPool.Put(w.cw)
		w.cw = nil
	}
	w.wmu.Unlock()
}

// Write lets the proxy's refuse write to the client.
func (w *clientWriter) Write(b []byte) (int, error) {
	w.writeClient(b)
	return len(b), nil
}
