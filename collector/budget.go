package collector

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Scope and connection budget: which sidecar runs the server-wide collectors, and how many
// server connections each sidecar may open at most.

// allowedConnectionsSQL is what the server allows clients without reserved rights:
// max_connections less superuser_reserved_connections and (PostgreSQL 16) reserved_connections.
const allowedConnectionsSQL = `current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - coalesce(current_setting('reserved_connections', true)::int, 0)`

// budgetQuery reads the allowed connections and the client backends open now.
const budgetQuery = `SELECT ` + allowedConnectionsSQL + `, (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend')`

// scopeDescs are the series of scope and budget, built once per Exporter.
type scopeDescs struct {
	leader, ceiling, allowed *prometheus.Desc
}

func newScopeDescs() scopeDescs {
	return scopeDescs{
		leader: gaugeDesc("pgsidecar_collector_leader",
			"1 if this sidecar runs the server-wide collectors (it leads the election of --collector.scope=auto, or runs with all), else 0.", "scope"),
		ceiling: gaugeDesc("pgsidecar_connection_ceiling",
			"Most server connections this sidecar may open, by part: the pool (which the proxy draws from), the collectors (their pool, and one per other database they visit, up to --collector.databases.max-idle + 1; counted on the sidecar that runs them: with --collector.scope=auto only the leader), and the election session. Their sum is the sidecar's ceiling.", "part"),
		allowed: gaugeDesc("pgsidecar_server_connections_allowed",
			"Connections the server allows clients without reserved rights: max_connections less superuser_reserved_connections and reserved_connections. Exported by the sidecar that runs the server-wide collectors."),
	}
}

// startScope wires the exporter to its pool manager for what scope and budget need, and starts
// the election (--collector.scope=auto) or the start-up budget check.
func (e *Exporter) startScope(mgr *pool.Manager) {
	e.poolMax = mgr.Config().MaxConns
	e.poolDB = mgr.Database()
	e.poolUp = func() (up, known bool) {
		s := mgr.Health().Status
		return s == pool.StatusHealthy || s == pool.StatusDegraded, s != pool.StatusStarting
	}
	e.ownConns = func() int { return int(mgr.Pool().Stat().TotalConns() + e.pool.Stat().TotalConns()) }
	e.noteConfig()
	if e.cfg.Scope == ScopeAuto {
		e.el = newElection(e.pool.Config().ConnConfig, e.cfg.ElectionDatabase, e.cfg.ElectionInterval, e.configHash,
			e.log, e.scrubErr)
		e.el.onConnect = func(ctx context.Context, c *pgx.Conn) { e.checkBudget(ctx, c, false) }
		e.el.onResign = e.dropCollectorConns
		e.wg.Go(func() { e.el.run(e.ctx) })
		return
	}
	if e.cfg.Scope == ScopeLocal {
		e.wg.Go(e.checkBudgetOnce)
	}
	// With ScopeAll the first collection checks, on its own connection.
}

// collects reports whether this collection runs the server-wide collectors. With scope auto it
// first waits, once, for the election's first outcome.
func (e *Exporter) collects(ctx context.Context) bool {
	switch {
	case e.cfg.Scope == ScopeLocal:
		return false
	case e.cfg.Scope == ScopeAuto && e.el != nil:
		e.el.awaitFirst(ctx)
		return e.el.leading()
	}
	return true
}

// localOnly is the collection of a sidecar that does not run the server-wide collectors: pg_up,
// which the pool's health checks give without a query of the collectors' own, and the custom
// queries marked every_sidecar, when there are any.
func (e *Exporter) localOnly(ctx context.Context) *collection {
	s := newSink()
	up := 0.0
	if e.poolUp != nil && e.poolIsUp(ctx) {
		up = 1
	}
	failed := false
	if e.custom != nil && e.custom.hasEverySidecar() {
		start := time.Now()
		err := e.everySidecarQueries(ctx, s)
		e.noteCollector(customCollectorName, colResult{dur: time.Since(start), err: err})
		success := 1.0
		if err != nil {
			success, failed = 0, true
		}
		s.add(e.durationDesc, prometheus.GaugeValue, time.Since(start).Seconds(), []string{customCollectorName})
		s.add(e.successDesc, prometheus.GaugeValue, success, []string{customCollectorName})
	}
	s.add(e.upDesc, prometheus.GaugeValue, up, nil)
	return &collection{metrics: s.metrics, failed: failed}
}

// poolIsUp reports the pool's health; right after start, before its first check, it waits for
// it until ctx ends, so that a starting sidecar does not report a database down.
func (e *Exporter) poolIsUp(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		up, known := e.poolUp()
		if known {
			return up
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// everySidecarQueries runs the custom queries marked every_sidecar into s.
func (e *Exporter) everySidecarQueries(ctx context.Context, s *sink) error {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return err
	}
	return e.runOne(ctx, e.custom, &Scrape{Conn: conn, Version: version, sink: s, everySidecarOnly: true})
}

// collectScope sends the leader and ceiling series.
func (e *Exporter) collectScope(ch chan<- prometheus.Metric) {
	leader := 0.0
	if e.cfg.Scope == ScopeAll || (e.cfg.Scope == ScopeAuto && (e.el == nil || e.el.leading())) {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(e.scope.leader, prometheus.GaugeValue, leader, string(e.cfg.Scope))
	collectors, election := e.connectionCeiling(false)
	if e.poolMax > 0 {
		ch <- prometheus.MustNewConstMetric(e.scope.ceiling, prometheus.GaugeValue, float64(e.poolMax), "pool")
	}
	ch <- prometheus.MustNewConstMetric(e.scope.ceiling, prometheus.GaugeValue, float64(collectors), "collectors")
	ch <- prometheus.MustNewConstMetric(e.scope.ceiling, prometheus.GaugeValue, float64(election), "election")
}

// checkBudgetOnce runs the start-up budget check of ScopeLocal, which has no session of its
// own to run it on: on a connection opened for it, retrying until the server answers once.
func (e *Exporter) checkBudgetOnce() {
	for e.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Timeout)
		c, err := pgx.ConnectConfig(ctx, e.pool.Config().ConnConfig)
		if err == nil {
			e.checkBudget(ctx, c, false)
			closeConn(c)
			cancel()
			return
		}
		cancel()
		sleepCtx(e.ctx, 5*time.Second)
	}
}

// checkBudget warns when this sidecar's ceiling does not fit what the other client sessions
// leave of what the server allows. c is one of this sidecar's sessions; pooled says it is one
// of the pools' connections, which ownConns counts already.
func (e *Exporter) checkBudget(ctx context.Context, c *pgx.Conn, pooled bool) {
	var allowed, clients int
	if err := c.QueryRow(ctx, budgetQuery).Scan(&allowed, &clients); err != nil {
		e.log.Debug("Connection budget check failed", "error", e.errString(err))
		return
	}
	collectors, election := e.connectionCeiling(true)
	ceiling := int(e.poolMax) + collectors + election
	own := 1 // c
	if pooled {
		own = 0
	}
	if e.ownConns != nil {
		own += e.ownConns()
	}
	others := max(clients-own, 0)
	if left := allowed - others; ceiling > left {
		e.log.Warn("This sidecar may open more server connections than the server has left",
			"ceiling", ceiling, "pool", e.poolMax, "collectors", collectors, "election", election,
			"allowed", allowed, "other_client_connections", others, "left", left)
	}
}

// dropCollectorConns closes the connections the collectors keep open, when this sidecar stops
// leading: a follower holds none of them (the collectors' pool closes a connection in use once
// it is released).
func (e *Exporter) dropCollectorConns() {
	e.pool.Reset()
	e.side.closeIdle()
}
