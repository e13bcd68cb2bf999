package pool

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Result is one operation's outcome in BatchExecute.
type Result[T any] struct {
	Value T
	Err   error
}

// BatchExecute runs ops in chunks of batchSize, the ops of a chunk concurrently (at most
// DB_MAX_CONNECTIONS at once), one chunk after the other. It
// returns each op's result in input order. Once ctx is done no further op starts, also none that
// was waiting for its turn; those get ctx's error. An op's pool acquires wait at most
// DB_CONNECTION_TIMEOUT for a free connection (see ExecuteWithRetry).
//
// An op that panics does so on a goroutine of BatchExecute's, where the caller could not
// recover it and the process would exit. So, as Transaction does, BatchExecute hands the panic on
// to its caller: it starts no more ops, lets those running finish (ctx bounds them; cancelling
// them would cost their connections), and then panics in the caller's goroutine with the first
// op's panic value.
func BatchExecute[T any](ctx context.Context, m *Manager, ops []func(ctx context.Context) (T, error), batchSize int) []Result[T] {
	if batchSize < 1 {
		batchSize = 1
	}
	var (
		panicOnce sync.Once
		panicked  any
		didPanic  atomic.Bool
	)
	out := make([]Result[T], len(ops))
	sem := make(chan struct{}, min(batchSize, int(m.cfg.MaxConns)))
	for start := 0; start < len(ops) && !didPanic.Load(); start += batchSize {
		end := min(start+batchSize, len(ops))
		var wg sync.WaitGroup
		for i := start; i < end && !didPanic.Load(); i++ {
			if err := waitTurn(ctx, sem); err != nil {
				out[i].Err = m.scrubbed(err)
				continue
			}
			wg.Go(func() {
				defer func() { <-sem }()
				defer func() {
					if p := recover(); p != nil {
						panicOnce.Do(func() { panicked = p; didPanic.Store(true) })
					}
				}()
				if err := ctx.Err(); err != nil {
					out[i].Err = m.scrubbed(err)
					return
				}
				if didPanic.Load() {
					return
				}
				actx, limit := withAcquireLimit(ctx, m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT")
				v, err := ops[i](actx)
				out[i].Value, out[i].Err = v, m.scrubbed(limit.explain(ctx, err))
			})
		}
		wg.Wait()
	}
	if didPanic.Load() {
		panic(panicked)
	}
	return out
}

// waitTurn takes a slot of sem, or gives up with ctx's error once ctx is done (also when a slot
// freed at the same moment).
func waitTurn(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		<-sem
		return err
	}
	return nil
}

// Statement is one SQL statement with its arguments, for ExecPipeline.
type Statement struct {
	SQL  string
	Args []any
}

// ExecPipeline sends all statements to the server in one round trip on one connection (a
// pgx.Batch, which PostgreSQL runs as one implicit transaction unless the statements manage
// their own). For many small writes this is where batching saves real time. It returns the
// command tags of the statements that ran and the first error. The wait for a free connection
// is bounded by DB_CONNECTION_TIMEOUT (ErrAcquireTimeout), the statements by ctx alone.
func (m *Manager) ExecPipeline(ctx context.Context, stmts []Statement) ([]pgconn.CommandTag, error) {
	b := &pgx.Batch{}
	for _, s := range stmts {
		b.Queue(s.SQL, s.Args...)
	}
	c, err := m.acquire(ctx, m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT")
	if err != nil {
		return nil, m.scrubbed(err)
	}
	defer c.Release()
	br := c.SendBatch(ctx, b)
	tags := make([]pgconn.CommandTag, 0, len(stmts))
	for range stmts {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return tags, m.scrubbed(err)
		}
		tags = append(tags, tag)
	}
	return tags, m.scrubbed(br.Close())
}
