package proxy

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/pool"
)

// newTxHarness is a proxy in transaction mode over a pool of maxConns connections.
func newTxHarness(t testing.TB, maxConns int32, tweak func(pc *pool.Config, c *Config)) *harness {
	t.Helper()
	return newHarness(t, func(pc *pool.Config, c *Config) {
		c.PoolMode = PoolTransaction
		pc.MaxConns = maxConns
		pc.MinConns = 1
		if tweak != nil {
			tweak(pc, c)
		}
	})
}

// serverSessions samples the number of client backends on the test cluster (but the sampler's
// own) until stop is called, and returns the largest count seen.
func serverSessions(t testing.TB) (stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := pgx.Connect(ctx, cluster.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var n int64
			if err := c.QueryRow(ctx, `select count(*) from pg_stat_activity
				where backend_type = 'client backend' and pid <> pg_backend_pid()`).Scan(&n); err == nil && n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() int {
		cancel()
		<-done
		_ = c.Close(context.Background())
		return int(peak.Load())
	}
}

// TestTxModeSharesServerConnections: many pgx clients (default statement cache: named prepared
// statements) run transactions at once over two server connections.
func TestTxModeSharesServerConnections(t *testing.T) {
	h := newTxHarness(t, 2, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	setup := h.connect(t, ctx, h.superURL())
	if _, err := setup.Exec(ctx, "create table if not exists tx_counter (id int primary key, n int); insert into tx_counter values (1, 0) on conflict (id) do update set n = 0"); err != nil {
		t.Fatal(err)
	}
	stop := serverSessions(t)
	const clients, rounds = 20, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, h.superURL())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for j := range rounds {
				var got int
				if err := c.QueryRow(ctx, "select $1::int + $2::int", i, j).Scan(&got); err != nil || got != i+j {
					errs <- fmt.Errorf("client %d: select: %d, %v", i, got, err)
					return
				}
				err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, "update tx_counter set n = n + $1 where id = 1", 1)
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("client %d: tx: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	peak := stop()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int
	if err := setup.QueryRow(ctx, "select n from tx_counter where id = 1").Scan(&n); err != nil || n != clients*rounds {
		t.Errorf("counter = %d, %v; want %d", n, err, clients*rounds)
	}
	// The sampler's count includes the setup client's server connection while it holds one,
	// which is one of the pool's two.
	if peak > 2 {
		t.Errorf("%d server sessions at once, want at most 2", peak)
	}
	t.Logf("peak server sessions %d; prepared statement hits %v misses %v", peak,
		h.metric(t, "pgsidecar_proxy_prepared_statement_hits_total", nil), h.metric(t, "pgsidecar_proxy_prepared_statement_misses_total", nil))
}
