package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Retryable reports whether retrying err is safe and useful: nothing reached the server
// (pgconn.SafeToRetry, a failed connect), or the server rejected the work in a way that a later
// try can pass (serialization failure 40001, deadlock 40P01, too many connections 53300, admin
// or crash shutdown 57P01-57P03, connection exceptions of class 08 before the statement ran).
// Constraint violations (23), data errors (22), syntax and access errors (42), auth errors (28),
// a missing database (3D000) and everything else are not retried, nor is a connection lost after
// a statement was sent, since the statement may have run. Nor is ErrAcquireTimeout: that try
// already waited the whole DB_CONNECTION_TIMEOUT (or TxOptions.MaxWait) for a busy pool, and
// retrying would make the caller wait that long once per attempt.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrAcquireTimeout) {
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
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code
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
