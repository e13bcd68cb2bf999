package pool

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

func (m *Manager) rewarm() {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.ConnectTimeout)
	defer cancel()
	if _, err := m.warmup(ctx, int(m.cfg.MinConns)); err != nil && !m.isClosed() {
		m.log.Warn("Database warm-up after reconnect incomplete", "error", m.scrub.Scrub(err.Error()))
	}
}

// WarmupResult says what a warm-up did.
type WarmupResult struct {
	Requested int           // connections asked for
	Ready     int           // connections that answered a ping
	Opened    int64         // new connections opened to reach it
	Total     int32         // connections in the pool afterwards
	Duration  time.Duration // time taken
}

// Warmup makes sure at least n connections are open and answer a ping, opening new ones as
// needed. n must be between 0 and the pool's maximum. Each acquire waits at most
// DB_CONNECTION_TIMEOUT for a free connection.
func (m *Manager) Warmup(ctx context.Context, n int) (WarmupResult, error) {
	if n < 0 || n > int(m.cfg.MaxConns) {
		return WarmupResult{}, m.scrubbed(fmt.Errorf("warm-up connections (%d) must be between 0 and DB_MAX_CONNECTIONS (%d)", n, m.cfg.MaxConns))
	}
	return m.warmup(ctx, n)
}

func (m *Manager) warmup(ctx context.Context, n int) (WarmupResult, error) {
	start := time.Now()
	before := m.pool.Stat().NewConnsCount()
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := m.acquire(ctx, m.cfg.ConnectTimeout, "DB_CONNECTION_TIMEOUT")
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			errs[i] = c.Ping(ctx)
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	res := WarmupResult{Requested: n, Opened: m.pool.Stat().NewConnsCount() - before,
		Total: m.pool.Stat().TotalConns(), Duration: time.Since(start)}
	for i, c := range conns {
		if c != nil && errs[i] == nil {
			res.Ready++
		}
	}
	if err := firstError(errs); err != nil {
		return res, m.scrubbed(err)
	}
	return res, nil
}

func firstError(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
