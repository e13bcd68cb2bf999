package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// TxOptions bound a transaction's run time and its wait for a connection, and carry
// PostgreSQL's own transaction options.
type TxOptions struct {
	// Timeout bounds the whole transaction, from BEGIN to COMMIT (0: no limit beyond ctx).
	Timeout time.Duration
	// MaxWait bounds the wait for a pool connection (0: DB_CONNECTION_TIMEOUT).
	MaxWait time.Duration
	// IsoLevel and AccessMode are passed to BEGIN; empty means the server's default.
	IsoLevel   pgx.TxIsoLevel
	AccessMode pgx.TxAccessMode
}

// Transaction runs fn inside a transaction on one connection: it commits when fn returns nil and
// rolls back when fn returns an error or panics (the panic goes on after the rollback). A
// serialization failure or deadlock (or an error before anything reached the server) runs the
// whole fn again in a new transaction, within DB_RETRY_ATTEMPTS, so fn must not have effects
// outside the database that cannot be repeated.
func (m *Manager) Transaction(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error, opts TxOptions) error {
	_, err := ExecuteWithRetryValue(ctx, m, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, m.runTx(ctx, fn, opts)
	})
	return err
}

func (m *Manager) runTx(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error, opts TxOptions) (err error) {
	wait, setting := opts.MaxWait, "TxOptions.MaxWait"
	if wait <= 0 {
		wait, setting = m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT"
	}
	conn, err := m.acquire(ctx, wait, setting)
	if err != nil {
		return err
	}
	defer conn.Release()

	txCtx, cancelTx := ctx, context.CancelFunc(func() {})
	if opts.Timeout > 0 {
		txCtx, cancelTx = context.WithTimeoutCause(ctx, opts.Timeout, ErrTxTimeout)
	}
	defer cancelTx()

	tx, err := conn.BeginTx(txCtx, pgx.TxOptions{IsoLevel: opts.IsoLevel, AccessMode: opts.AccessMode})
	if err != nil {
		m.metrics.transactions.WithLabelValues("error").Inc()
		return txErr(txCtx, err)
	}
	defer func() {
		if p := recover(); p != nil {
			m.rollback(tx)
			m.metrics.transactions.WithLabelValues("rollback").Inc()
			panic(p)
		}
	}()
	if err := fn(txCtx, tx); err != nil {
		m.rollback(tx)
		m.metrics.transactions.WithLabelValues("rollback").Inc()
		return txErr(txCtx, err)
	}
	if err := tx.Commit(txCtx); err != nil {
		m.metrics.transactions.WithLabelValues("error").Inc()
		return txErr(txCtx, err)
	}
	m.metrics.transactions.WithLabelValues("commit").Inc()
	return nil
}

// rollback uses its own short deadline: the transaction's context may be what ran out.
func (m *Manager) rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.HealthCheckTimeout)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// txErr adds ErrTxTimeout to an error caused by the transaction's own deadline.
func txErr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), ErrTxTimeout) && !errors.Is(err, ErrTxTimeout) {
		return fmt.Errorf("%w: %w", ErrTxTimeout, err)
	}
	return err
}
