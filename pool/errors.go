package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/redact"
)

// Retryable reports whether running the failed work again is both safe and useful.
//
// Safe means the failed try cannot have taken effect. That holds when nothing reached the
// server (pgconn.SafeToRetry: a write that sent no byte, a failed connect), and when the server
// answered with an error (an ErrorResponse, *pgconn.PgError): a statement the server reports as
// failed has not committed, its transaction is rolled back, whether it is the implicit
// transaction of an autocommit statement or the one a failed COMMIT ends. (The server commits
// before the ReadyForQuery that ends its answer; an error it raises after that, such as a
// terminated session's 57P01, reaches the client as the answer to the next statement, which
// never ran.) The
// exception is work that commits part way by itself, e.g. a multi-statement string with its own
// COMMIT or a procedure that commits: an error later in it leaves the earlier part committed, so
// such work must not be given to ExecuteWithRetry. Not safe, and never retried: a connection lost
// without an answer after the statement was sent (EOF, reset, a read timeout), since the
// statement may have run and even committed. pgx reports such a loss during a simple-protocol
// statement (one without arguments, and a transaction's COMMIT) as pgconn.ErrConnClosed, an
// error that claims SafeToRetry though the statement was sent; a connection closed before use
// gives the same error, so neither is retried.
//
// Useful means a later try can pass: serialization failure 40001, deadlock 40P01, too many
// connections 53300, admin or crash shutdown 57P01-57P03 and connection exceptions of class 08,
// as reported by the server. Constraint violations (23), data errors (22), syntax and access
// errors (42), auth errors (28), a missing database (3D000) and everything else are not retried.
// Nor is ErrAcquireTimeout: that try already waited the whole DB_CONNECTION_TIMEOUT (or
// TxOptions.MaxWait) for a busy pool, and retrying would make the caller wait that long once per
// attempt.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrAcquireTimeout) || errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, ErrClosed) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return retryableCode(pgErr.Code)
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	return pgconn.SafeToRetry(err)
}

func retryableCode(code string) bool {
	switch code {
	case "40001", "40P01", "53300", "57P01", "57P02", "57P03":
		return true
	}
	return strings.HasPrefix(code, "08")
}

// IsConnectionError reports whether err means the connection or server is gone or unreachable,
// as opposed to an error in the statement or a caller's deadline.
func IsConnectionError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", "57P03", "53300":
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08")
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, pgconn.ErrConnClosed)
}

// SQLState returns the metric label for an error: the server's SQLSTATE, 08006 for a lost or
// failed connection, "timeout" or "canceled" for the caller's context, "client" otherwise.
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	var health *healthError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code
	case errors.As(err, &health):
		return health.code
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case IsConnectionError(err):
		return "08006"
	}
	return "client"
}

// RetryError is the final error of a retried operation: the last cause and how many attempts
// were made. errors.As to *pgconn.PgError still reaches the cause; when the caller's context
// ended the retries, errors.Is reaches its error (context.Canceled, DeadlineExceeded) too.
type RetryError struct {
	Attempts int
	Err      error
}

func (e *RetryError) Error() string {
	s := "s"
	if e.Attempts == 1 {
		s = ""
	}
	return fmt.Sprintf("failed after %d attempt%s: %v", e.Attempts, s, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *RetryError) Unwrap() error { return e.Err }

// errSaturated is what ping reports when it could not get a connection because all are in use.
var errSaturated = errors.New("every pool connection is in use")

// errAcquireLimit is the cause of an acquire's context that ran out of its acquireLimit.
var errAcquireLimit = errors.New("pool acquire limit reached")

// scrubbedError is how an error leaves the pool: its text (Error, and every fmt verb) has the
// passwords of DATABASE_URL and PGPASSWORD masked, while errors.Is and errors.As still reach the
// error itself, so *pgconn.PgError, ErrAcquireTimeout, context errors and SQLState (53300, 28P01,
// ...) work as on the error pgx returned.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// Format prints the scrubbed text for every verb: %+v and %#v must not reach the inner error.
func (e *scrubbedError) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", e.msg)
		return
	}
	_, _ = io.WriteString(f, e.msg)
}

// scrubbed wraps err for returning from the pool; nil stays nil and a scrubbed error is not
// wrapped again.
func scrubbed(s *redact.Scrubber, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*scrubbedError); ok {
		return err
	}
	return &scrubbedError{msg: s.Scrub(err.Error()), err: err}
}

func (m *Manager) scrubbed(err error) error { return scrubbed(m.scrub, err) }

// ScrubError returns err as the Manager's own methods return errors: its text with the passwords
// of DATABASE_URL and PGPASSWORD masked, errors.Is and errors.As reaching err. It is for errors
// of queries made on Pool() or a monitor pool, whose text may quote a password (a statement
// that holds it, echoed by the server). nil stays nil.
func (m *Manager) ScrubError(err error) error { return m.scrubbed(err) }

// ErrClosed is the error of Acquire and the helpers once Close has been called: at once, not
// after a wait for a connection that will never come.
var ErrClosed = errors.New("pool closed")

// ErrTxTimeout is wrapped into the error of a transaction that ran past TxOptions.Timeout.
var ErrTxTimeout = errors.New("transaction timeout exceeded")

// ErrAcquireTimeout is wrapped into the error (an *AcquireError) of Acquire or a helper
// (Transaction, ExecuteWithRetry, ExecuteWithRetryValue, BatchExecute, ExecPipeline, Warmup)
// whose wait for a free pool connection outlasted DB_CONNECTION_TIMEOUT (for Transaction:
// TxOptions.MaxWait when set). It is not retried.
var ErrAcquireTimeout = errors.New("timed out waiting for a pool connection")

// AcquireError is the error of a wait for a pool connection that ran out of its bound
// (DB_CONNECTION_TIMEOUT, or TxOptions.MaxWait). errors.Is(err, ErrAcquireTimeout) holds for it,
// and errors.As and SQLState reach its Cause.
type AcquireError struct {
	Setting string        // what bounded the wait: DB_CONNECTION_TIMEOUT or TxOptions.MaxWait
	Wait    time.Duration // the bound
	// Opening: callers did not hold every connection when the wait ended, so it was for the
	// database (to open a new connection, or to answer the ping of an idle one: a server that
	// is down, frozen or slow), not for a busy connection to come back.
	Opening bool
	// Cause is the last error opening a connection during the wait (scrubbed of passwords), when
	// Manager.Acquire saw one; nil when the pool was busy.
	Cause error
}

func (e *AcquireError) Error() string {
	var msg string
	switch {
	case e.Opening && e.Cause != nil:
		msg = fmt.Sprintf("%s: no connection could be opened to the database within %s (%s)", ErrAcquireTimeout, e.Setting, e.Wait)
	case e.Opening:
		msg = fmt.Sprintf("%s: the database did not answer within %s (%s)", ErrAcquireTimeout, e.Setting, e.Wait)
	default:
		msg = fmt.Sprintf("%s: the pool had no free connection within %s (%s)", ErrAcquireTimeout, e.Setting, e.Wait)
	}
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

// Unwrap returns ErrAcquireTimeout and the Cause, if any.
func (e *AcquireError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrAcquireTimeout}
	}
	return []error{ErrAcquireTimeout, e.Cause}
}

// healthError is the health loop's last error, scrubbed already, standing in for a connection
// error that an acquire did not see itself.
type healthError struct{ msg, code string }

func (e *healthError) Error() string    { return e.msg }
func (e *healthError) SQLState() string { return e.code }
