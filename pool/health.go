package pool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/backoff"
)

// Status is the pool's health as the health endpoints report it.
type Status string

// Health statuses. Degraded pools still serve queries: readiness probes pass for them.
const (
	StatusStarting  Status = "starting"
	StatusHealthy   Status = "healthy"
	StatusDegraded  Status = "degraded"
	StatusUnhealthy Status = "unhealthy"
)

// noteError asks the health loop to check now, instead of at the next tick, when err is a
// connection-class error. It does not mark the pool unhealthy: one connection's error (a client
// terminating its own backend, say) says nothing of the others; only a failed check does.
func (m *Manager) noteError(err error) {
	if !IsConnectionError(err) {
		return
	}
	if !serverFull(err) {
		// Until a check passes, the check looks past a busy pool and a full server (see check
		// and ping): the error may mean the pool's connections are dead.
		m.connErrSeen.Store(true)
	}
	m.checkNow()
}

// checkNow asks the health loop to check now instead of at the next tick (while healthy; while
// unhealthy it rechecks on its own short timer).
func (m *Manager) checkNow() {
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// run connects (with backoff) and then checks health until Close.
func (m *Manager) run() {
	defer m.wg.Done()
	if !m.connect() {
		return
	}
	timer := time.NewTimer(m.cfg.HealthCheckInterval)
	defer timer.Stop()
	ok := true
	for {
		// While healthy, an error seen by a query triggers a check at once. While unhealthy the
		// loop rechecks on its own short timer; triggers then (many come from the failing check
		// itself) must not make it spin.
		trigger := m.trigger
		if !ok {
			trigger = nil
		}
		select {
		case <-m.ctx.Done():
			return
		case <-timer.C:
		case <-trigger:
		}
		ok = m.check()
		select {
		case <-m.trigger: // raised by this check or during it
		default:
		}
		next := m.cfg.HealthCheckInterval
		if m.fullSeen.Load() {
			next = min(next, time.Second)
		} else if !ok {
			// Look again soon so recovery is seen within about a second, backing off from 250 ms
			// to 1 s so a long outage (or a rotated password) costs the server one login a second.
			next = min(next, backoff.Delay(m.Health().ConsecutiveFailures, 250*time.Millisecond, time.Second))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// connect warms MinConns connections (at least one), retrying with capped exponential backoff
// and jitter. It logs each failed attempt once with the delay before the next. It returns false
// when the manager was closed first.
func (m *Manager) connect() bool {
	m.awaitPoolWarmup()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.ConnectTimeout)
		res, err := m.warmup(ctx, max(int(m.cfg.MinConns), 1))
		cancel()
		if m.isClosed() {
			return false
		}
		if res.Ready > 0 || m.saturated() {
			// One working connection is enough to serve; the pool tops up the rest itself. A pool
			// whose every connection clients took already is connected too.
			pctx, pcancel := context.WithTimeout(m.ctx, m.cfg.HealthCheckTimeout)
			d, perr := m.ping(pctx)
			pcancel()
			if errors.Is(perr, errSaturated) {
				perr = nil // the connections are busy serving: the database answers
			}
			m.setHealth(perr == nil, d, perr)
			if perr == nil {
				m.log.Info("Database connected", "attempt", attempt, "connections_opened", res.Opened,
					"duration", res.Duration)
				if err != nil {
					m.log.Warn("Database warm-up incomplete", "ready", res.Ready, "wanted", res.Requested,
						"error", m.scrub.Scrub(err.Error()))
				}
				return true
			}
			err = perr
		} else {
			m.setHealth(false, time.Since(start), err)
		}
		delay := backoff.Delay(attempt, m.cfg.RetryDelay, m.cfg.RetryMaxDelay)
		if delay <= 0 {
			delay = 100 * time.Millisecond
		}
		m.log.Warn("Database connection failed", "attempt", attempt, "error", m.scrub.Scrub(err.Error()),
			"next_attempt_in", delay)
		if sleep(m.ctx, delay) != nil {
			return false
		}
	}
}

// awaitPoolWarmup lets pgxpool's own start-up creation of MinConns connections finish before the
// connect loop acquires any: acquiring while they are still being opened would open more.
func (m *Manager) awaitPoolWarmup() {
	start := time.Now()
	for time.Since(start) < m.cfg.ConnectTimeout && !m.isClosed() {
		s := m.pool.Stat()
		// Done once nothing is being opened and pgxpool has tried all of them (NewConnsCount
		// counts attempts as they start), or it has had ample time to begin.
		if s.ConstructingConns() == 0 && (s.NewConnsCount() >= int64(m.cfg.MinConns) || time.Since(start) > 250*time.Millisecond) {
			return
		}
		_ = sleep(m.ctx, 10*time.Millisecond)
	}
}

// check pings through the pool and records the result. On the first failure it drops every
// pooled connection (they are most likely dead); on recovery it warms the pool again.
func (m *Manager) check() bool {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.HealthCheckTimeout)
	defer cancel()
	d, err := m.ping(ctx)
	if errors.Is(err, context.Canceled) && m.isClosed() {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		// A bare "context deadline exceeded" in /api/database/health and the logs says nothing.
		err = fmt.Errorf("no answer within DB_HEALTH_CHECK_TIMEOUT (%s): %w", m.cfg.HealthCheckTimeout, err)
	}
	if serverFull(err) && !m.connErrSeen.Load() && m.holdsOpenConns() {
		// The server refused a new connection for lack of slots (max_connections reached) but
		// the pool still holds open connections (not merely ones being opened), which work:
		// keep them, since once closed they may not be had again while the server is full.
		// Health() reports degraded. Returning false keeps the loop on its own one-second
		// recheck: every refused acquire triggers a check, and each check is a login.
		m.setServerFull(d, err)
		if !m.fullSeen.Swap(true) {
			m.log.Warn("Database health check: the server refuses new connections; keeping the pool's",
				"status", StatusDegraded, "error", m.scrub.Scrub(err.Error()))
		}
		return false
	}
	if m.fullSeen.Swap(false) && err == nil {
		m.log.Info("Database accepts new connections again")
	}
	m.mu.Lock()
	wasUp := m.health.Status == StatusHealthy || m.health.Status == StatusDegraded
	failures := m.health.ConsecutiveFailures
	m.mu.Unlock()
	if errors.Is(err, errSaturated) {
		if wasUp {
			// Every connection is busy serving queries: the database answers, the pool is
			// full. Health() reports that as degraded; it is no reason to drop connections.
			m.log.Debug("Database health check skipped: every pool connection is in use")
			return !m.connErrSeen.Load()
		}
		// The last check failed, and callers now hold every connection, so this one cannot
		// ping. Statements that succeeded since that failure show the database answers again
		// (callers took the connections as it came back); without any it is still down.
		if m.succeededQueries() == m.okAtFailure.Load() {
			return false
		}
		err, d = nil, 0
	}

	m.setHealth(err == nil, d, err)
	st := m.Health()
	switch {
	case err == nil && !wasUp:
		m.metrics.reconnects.Inc()
		m.log.Info("Database health check", "status", st.Status, "latency", d, "recovered_after_failures", failures)
		m.log.Info("Database reconnected")
		m.wg.Add(1)
		go m.rewarm()
	case err == nil:
		m.log.Info("Database health check", "status", st.Status, "latency", d)
	case wasUp:
		m.pool.Reset()
		m.log.Warn("Database health check", "status", st.Status, "latency", d, "error", st.LastError)
	case st.ConsecutiveFailures%max(int(m.cfg.HealthCheckInterval/(250*time.Millisecond)), 1) == 0:
		// Still down: remind once per health interval rather than on every quick recheck.
		m.log.Warn("Database health check", "status", st.Status, "consecutive_failures", st.ConsecutiveFailures,
			"error", st.LastError)
	}
	return err == nil
}

// ping checks one pooled connection. The latency it returns is the round trip alone when a
// connection was at hand, so that opening a connection after a restart does not read as a slow
// (degraded) server; on failure it is the time until the failure.
func (m *Manager) ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if m.saturated() && !m.connErrSeen.Load() {
		return 0, errSaturated
	}
	c, err := m.pool.Acquire(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && m.saturated() {
			return time.Since(start), errSaturated
		}
		return time.Since(start), err
	}
	defer c.Release()
	start = time.Now()
	err = c.Ping(ctx)
	return time.Since(start), err
}

// saturated reports whether callers hold every connection the pool may open (connections
// being opened, or pinged by an acquire, do not count: they say nothing about a busy pool).
func (m *Manager) saturated() bool { return m.tracer.busy(m.pool) }

func (m *Manager) setHealth(ok bool, d time.Duration, err error) {
	m.metrics.healthDuration.Set(d.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	h := &m.health
	h.LastCheck = time.Now()
	h.Latency = d
	if ok {
		m.connErrSeen.Store(false)
		h.ConsecutiveFailures = 0
		h.LastError, h.LastErrorCode = "", ""
		h.Status = StatusHealthy
		if d >= m.cfg.SlowQueryThreshold {
			h.Status = StatusDegraded
		}
		m.metrics.healthUp.Set(1)
		return
	}
	h.ConsecutiveFailures++
	h.TotalFailures++
	h.Status = StatusUnhealthy
	m.okAtFailure.Store(m.succeededQueries())
	if err != nil {
		h.LastError = m.scrub.Scrub(err.Error())
		h.LastErrorCode = SQLState(err)
	}
	m.metrics.healthUp.Set(0)
	m.metrics.healthFailures.Inc()
}

// holdsOpenConns reports whether the pool has connections open, idle or in use; connections
// still being opened do not count.
func (m *Manager) holdsOpenConns() bool {
	s := m.pool.Stat()
	return s.IdleConns()+s.AcquiredConns() > 0
}

// setServerFull records a check that could not open a connection because the server is full,
// while the pool's own connections remain: degraded, with the server's error.
func (m *Manager) setServerFull(d time.Duration, err error) {
	m.metrics.healthDuration.Set(d.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	h := &m.health
	h.LastCheck, h.Latency = time.Now(), d
	h.Status = StatusDegraded
	h.LastError, h.LastErrorCode = m.scrub.Scrub(err.Error()), SQLState(err)
	m.metrics.healthUp.Set(1)
}

// serverFull reports whether err is the server refusing a connection for lack of resources
// (SQLSTATE class 53, such as 53300 too_many_connections).
func serverFull(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "53")
}

// Health is the result of the latest health check.
type Health struct {
	Status              Status
	LastCheck           time.Time     // zero before the first check
	Latency             time.Duration // of the last check
	ConsecutiveFailures int
	TotalFailures       int
	LastError           string // scrubbed of passwords; empty when healthy
	LastErrorCode       string // LastError as SQLState labels it: the server's SQLSTATE (53300), 08006, timeout, ...
}

// Health returns the current health, as the last check found it: a connection error seen by a
// query triggers a check but does not by itself make the pool unhealthy. A saturated pool
// (callers hold every connection and others wait) makes a healthy pool degraded.
func (m *Manager) Health() Health {
	m.mu.Lock()
	h := m.health
	m.mu.Unlock()
	if h.Status == StatusHealthy {
		if m.saturated() && m.tracer.pending.Load() > 0 {
			h.Status = StatusDegraded
		}
	}
	return h
}
