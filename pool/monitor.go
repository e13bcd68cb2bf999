package pool

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MonitorOptions shape the small side pool that monitoring queries (collectors, API) use.
type MonitorOptions struct {
	// MaxConns caps the side pool's connections (default 1), so scrapes can never pile up
	// connections on the server.
	MaxConns int32
	// StatementTimeout is set as the server-side statement_timeout of its sessions (0: none).
	StatementTimeout time.Duration
	// LockTimeout is set as the lock_timeout of its sessions (0: none), so a monitoring query
	// that needs a lock another session holds (a table under VACUUM FULL or a migration's
	// ACCESS EXCLUSIVE) fails on its own instead of spending every other query's time waiting.
	LockTimeout time.Duration
	// ApplicationName identifies these sessions in pg_stat_activity (default: the pool's
	// application name with "-collector" appended).
	ApplicationName string
}

// NewMonitorPool returns a pool for monitoring queries against the same database: same
// connection settings, its own small connection cap, application_name and statement_timeout.
// Its queries are not counted in the application's query metrics. The Manager closes it on
// Close.
func (m *Manager) NewMonitorPool(opts MonitorOptions) (*pgxpool.Pool, error) {
	pc, err := m.cfg.pgxConfig()
	if err != nil {
		return nil, m.scrubbed(err)
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 1
	}
	if opts.ApplicationName == "" {
		opts.ApplicationName = pc.ConnConfig.RuntimeParams["application_name"] + "-collector"
	}
	pc.MaxConns = opts.MaxConns
	pc.MinConns = 0
	pc.ConnConfig.RuntimeParams["application_name"] = opts.ApplicationName
	// SET, not startup parameters: a startup value would also become the session's reset_val,
	// which is how the settings collector tells the server's own statement_timeout
	// (pg_settings_statement_timeout_seconds) from this one.
	var sets []string
	if opts.StatementTimeout > 0 {
		sets = append(sets, "SET statement_timeout = "+strconv.FormatInt(opts.StatementTimeout.Milliseconds(), 10))
	}
	if opts.LockTimeout > 0 {
		sets = append(sets, "SET lock_timeout = "+strconv.FormatInt(max(opts.LockTimeout.Milliseconds(), 1), 10))
	}
	if len(sets) > 0 {
		pc.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			for _, set := range sets {
				if _, err := c.Exec(ctx, set); err != nil {
					return err
				}
			}
			return nil
		}
	}
	m.usePassword(pc)
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, m.scrubbed(fmt.Errorf("monitor pool: %w", err))
	}
	m.mu.Lock()
	m.sidePools = append(m.sidePools, p)
	m.mu.Unlock()
	return p, nil
}
