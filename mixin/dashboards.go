package mixin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

var dsRef = &DatasourceRef{Type: "prometheus", UID: "${datasource}"}

// builder lays panels out on Grafana's 24-column grid, row by row.
type builder struct {
	d      *Dashboard
	x, y   int
	rowH   int
	nextID int
}

func newDashboard(uid, title, description string, vars ...Variable) *builder {
	d := &Dashboard{
		UID: uid, Title: title, Description: description,
		Tags: []string{"pgsidecar", "postgresql"}, Editable: true, GraphTooltip: 1,
		Refresh: "30s", SchemaVersion: 39, Version: 1,
		Time: TimeRange{From: "now-1h", To: "now"},
		Links: []Link{{Title: "pgsidecar", Type: "dashboards", Tags: []string{"pgsidecar"},
			AsDropdown: true, IncludeVars: true, KeepTime: true}},
		Annotations: Annotations{List: []map[string]any{{
			"builtIn": 1, "datasource": map[string]string{"type": "grafana", "uid": "-- Grafana --"},
			"enable": true, "hide": true, "iconColor": "rgba(0, 211, 255, 1)",
			"name": "Annotations & Alerts", "type": "dashboard",
		}}},
	}
	d.Templating.List = append([]Variable{{
		Name: "datasource", Label: "Data source", Type: "datasource", Query: "prometheus",
		Refresh: 1, Current: map[string]any{}, Options: []any{},
	}}, vars...)
	return &builder{d: d, nextID: 1}
}

// queryVar is a multi-value variable from label_values; "All" matches any value.
func queryVar(name, label, metric, selector string) Variable {
	src := metric
	if selector != "" {
		src += "{" + selector + "}"
	}
	q := fmt.Sprintf("label_values(%s, %s)", src, name)
	return Variable{
		Name: name, Label: label, Type: "query", Query: q, Definition: q, Datasource: dsRef,
		Refresh: 2, IncludeAll: true, Multi: true, AllValue: ".*", Sort: 1,
		Current: map[string]any{"selected": true, "text": []string{"All"}, "value": []string{"$__all"}},
		Options: []any{},
	}
}

func (b *builder) row(title string) {
	if b.x != 0 {
		b.y += b.rowH
		b.x, b.rowH = 0, 0
	}
	f := false
	b.d.Panels = append(b.d.Panels, &Panel{ID: b.nextID, Type: "row", Title: title, Collapsed: &f,
		GridPos: GridPos{H: 1, W: 24, X: 0, Y: b.y}})
	b.nextID++
	b.y++
}

func (b *builder) add(p *Panel, w, h int) *Panel {
	if b.x+w > 24 {
		b.y += b.rowH
		b.x, b.rowH = 0, 0
	}
	p.ID = b.nextID
	b.nextID++
	p.GridPos = GridPos{H: h, W: w, X: b.x, Y: b.y}
	b.x += w
	b.rowH = max(b.rowH, h)
	b.d.Panels = append(b.d.Panels, p)
	return p
}

// q is one query of a panel: PromQL and its legend.
type q struct{ expr, legend string }

func targets(qs []q, instant bool) []Target {
	var out []Target
	for i, x := range qs {
		t := Target{RefID: string(rune('A' + i)), Datasource: dsRef, Expr: strings.TrimSpace(x.expr),
			LegendFormat: x.legend, Range: !instant, Instant: instant}
		if instant {
			t.Format = "table"
		}
		out = append(out, t)
	}
	return out
}

func fieldConfig(unit string) *FieldConfig {
	return &FieldConfig{Defaults: FieldDefaults{
		Unit:       unit,
		Color:      map[string]any{"mode": "palette-classic"},
		Thresholds: Thresholds{Mode: "absolute", Steps: []Step{{Color: "green"}}},
		Mappings:   []any{},
	}, Overrides: []any{}}
}

func f64(v float64) *float64 { return &v }

// timeseries is a graph panel. Its thresholds (if any) are drawn as dashed lines.
func timeseries(title, description, unit string, qs ...q) *Panel {
	fc := fieldConfig(unit)
	fc.Defaults.Custom = map[string]any{
		"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
		"spanNulls": false, "axisSoftMin": 0, "thresholdsStyle": map[string]string{"mode": "off"},
	}
	return &Panel{Type: "timeseries", Title: title, Description: description, Datasource: dsRef,
		FieldConfig: fc,
		Options: map[string]any{
			"legend":  map[string]any{"displayMode": "table", "placement": "bottom", "showLegend": true, "calcs": []string{"mean", "max", "lastNotNull"}},
			"tooltip": map[string]any{"mode": "multi", "sort": "desc"},
		},
		Targets: targets(qs, false)}
}

// stat is a single-value panel coloured by its thresholds.
func stat(title, description, unit string, qs ...q) *Panel {
	fc := fieldConfig(unit)
	fc.Defaults.Color = map[string]any{"mode": "thresholds"}
	return &Panel{Type: "stat", Title: title, Description: description, Datasource: dsRef,
		FieldConfig: fc,
		Options: map[string]any{
			"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
			"colorMode":     "background", "graphMode": "area", "justifyMode": "auto",
			"textMode": "auto", "orientation": "auto",
		},
		Targets: targets(qs, false)}
}

// table is an instant query shown as a table.
func table(title, description, unit string, qs ...q) *Panel {
	return &Panel{Type: "table", Title: title, Description: description, Datasource: dsRef,
		FieldConfig: fieldConfig(unit),
		Options:     map[string]any{"showHeader": true, "sortBy": []map[string]any{{"displayName": "Value #A", "desc": true}}},
		Targets:     targets(qs, true),
		Transformations: []map[string]any{
			{"id": "merge", "options": map[string]any{}},
			{"id": "organize", "options": map[string]any{"excludeByName": map[string]bool{"Time": true}}},
		}}
}

// above marks values at or above v red (an alert fires above v) and draws the line.
// withExemplars shows the exemplars of the panel's histogram queries: the trace of a sampled
// slow statement, one click from the latency it raised.
func (p *Panel) withExemplars() *Panel {
	for i := range p.Targets {
		p.Targets[i].Exemplar = strings.Contains(p.Targets[i].Expr, "_bucket")
	}
	return p
}

func (p *Panel) above(v float64) *Panel {
	p.FieldConfig.Defaults.Thresholds.Steps = []Step{{Color: "green"}, {Color: "red", Value: f64(v)}}
	p.showThresholds()
	return p
}

// below marks values under v red (an alert fires below v) and draws the line.
func (p *Panel) below(v float64) *Panel {
	p.FieldConfig.Defaults.Thresholds.Steps = []Step{{Color: "red"}, {Color: "green", Value: f64(v)}}
	p.showThresholds()
	return p
}

// steps draws several alert thresholds, lowest first (e.g. ticket and page burn rates).
func (p *Panel) steps(vs ...float64) *Panel {
	colors := []string{"orange", "red"}
	s := []Step{{Color: "green"}}
	for i, v := range vs {
		s = append(s, Step{Color: colors[min(i, len(colors)-1)], Value: f64(v)})
	}
	p.FieldConfig.Defaults.Thresholds.Steps = s
	p.showThresholds()
	return p
}

func (p *Panel) showThresholds() {
	if p.Type == "timeseries" {
		p.FieldConfig.Defaults.Custom["thresholdsStyle"] = map[string]string{"mode": "dashed"}
	}
}

// upDown maps 1/0 to up/down for health gauges.
func (p *Panel) upDown() *Panel {
	p.FieldConfig.Defaults.Min, p.FieldConfig.Defaults.Max = f64(0), f64(1)
	p.FieldConfig.Defaults.Mappings = []any{map[string]any{"type": "value", "options": map[string]any{
		"0": map[string]any{"text": "down", "color": "red", "index": 0},
		"1": map[string]any{"text": "up", "color": "green", "index": 1},
	}}}
	return p.below(1)
}

// stackedBut stacks a timeseries panel's series, except those whose legend starts with line
// (a limit drawn across the stack).
func (p *Panel) stackedBut(line string) *Panel {
	p.FieldConfig.Defaults.Custom["stacking"] = map[string]any{"mode": "normal", "group": "A"}
	p.FieldConfig.Overrides = append(p.FieldConfig.Overrides, map[string]any{
		"matcher": map[string]any{"id": "byRegexp", "options": "^" + line + ".*"},
		"properties": []any{
			map[string]any{"id": "custom.stacking", "value": map[string]any{"mode": "none", "group": "A"}},
			map[string]any{"id": "custom.fillOpacity", "value": 0},
			map[string]any{"id": "custom.lineStyle", "value": map[string]any{"fill": "dash", "dash": []int{10, 10}}},
		},
	})
	return p
}

// leader maps 1/0 to leader/follower for pgsidecar_collector_leader.
func (p *Panel) leader() *Panel {
	p.FieldConfig.Defaults.Min, p.FieldConfig.Defaults.Max = f64(0), f64(1)
	p.FieldConfig.Defaults.Mappings = []any{map[string]any{"type": "value", "options": map[string]any{
		"0": map[string]any{"text": "follower", "index": 0},
		"1": map[string]any{"text": "leader", "index": 1},
	}}}
	return p
}

func (p *Panel) ratio() *Panel {
	p.FieldConfig.Defaults.Min, p.FieldConfig.Defaults.Max = f64(0), f64(1)
	return p
}

// Dashboards builds every dashboard.
func (c Config) Dashboards() []*Dashboard {
	return []*Dashboard{c.poolDashboard(), c.postgresDashboard(), c.statementDashboard()}
}

func (c Config) poolDashboard() *Dashboard {
	sel := c.dashSel(`job=~"$job", instance=~"$instance", pool=~"$pool"`)
	const ri = "$__rate_interval"
	s := func(format string) string {
		return strings.ReplaceAll(strings.ReplaceAll(format, "SEL", sel), "RI", ri)
	}
	b := newDashboard("pgsidecar-pool", "pgsidecar / Pool & queries",
		"Connection pool and query metrics measured by pgsidecar: utilisation, waiters, latency, errors, the proxy, top statements, health.",
		c.clusterVar("pgsidecar_pool_max_connections"),
		queryVar("job", "Job", "pgsidecar_pool_max_connections", c.dashSel("")),
		queryVar("instance", "Instance", "pgsidecar_pool_max_connections", c.dashSel(`job=~"$job"`)),
		queryVar("pool", "Pool", "pgsidecar_pool_max_connections", c.dashSel(`job=~"$job", instance=~"$instance"`)),
	)
	utilisation := s(`sum without (state) (pgsidecar_pool_connections{SEL, state="used"}) / pgsidecar_pool_max_connections{SEL}`)
	errRatio := s(`sum by (instance, pool) (rate(pgsidecar_query_errors_total{SEL}[RI])) / sum by (instance, pool) (rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`)
	avgLatency := s(`sum by (instance, pool) (rate(pgsidecar_query_duration_seconds_sum{SEL}[RI])) / sum by (instance, pool) (rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`)

	b.row("Overview")
	b.add(stat("Health check", "Worst health check result of the selected pools: down when any pool's last check failed (alert PgSidecarHealthCheckFailing).", "none",
		q{s(`min(pgsidecar_health_check_up{SEL})`), ""}).upDown(), 4, 4)
	b.add(stat("PostgreSQL", "Whether the sidecars' collectors can reach PostgreSQL (pg_up; alert PgSidecarDatabaseDown).", "none",
		q{s(`min(pg_up{SEL})`), ""}).upDown(), 4, 4)
	b.add(stat("Pool utilisation", fmt.Sprintf("Highest share of a pool's maximum connections in use. Alert above %s.", pct(c.PoolUtilization)), "percentunit",
		q{"max(" + utilisation + ")", ""}).ratio().above(c.PoolUtilization), 4, 4)
	b.add(stat("Query rate", "Queries per second through the selected pools.", "reqps",
		q{s(`sum(rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`), ""}), 4, 4)
	b.add(stat("Error ratio", fmt.Sprintf("Share of queries that failed. Alert above %s (with at least %s queries/s).", pct(c.ErrorRatio), num(c.MinQueryRate)), "percentunit",
		q{s(`sum(rate(pgsidecar_query_errors_total{SEL}[RI])) / sum(rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`), ""}).above(c.ErrorRatio), 4, 4)
	b.add(stat("Average latency", fmt.Sprintf("Mean query duration over all operations. Alert above %ss.", num(c.AvgLatencySeconds)), "s",
		q{s(`sum(rate(pgsidecar_query_duration_seconds_sum{SEL}[RI])) / sum(rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`), ""}).above(c.AvgLatencySeconds), 4, 4)

	b.row("Pool")
	b.add(timeseries("Pool utilisation", fmt.Sprintf("Connections in use divided by the pool maximum (DB_MAX_CONNECTIONS). The dashed line is the alert threshold (%s).", pct(c.PoolUtilization)), "percentunit",
		q{utilisation, "{{instance}} {{pool}}"}).ratio().above(c.PoolUtilization), 12, 8)
	b.add(timeseries("Connections by state", "Pool connections that are idle, in use or being opened, with the pool's minimum and maximum.", "short",
		q{s(`sum by (state) (pgsidecar_pool_connections{SEL})`), "{{state}}"},
		q{s(`sum(pgsidecar_pool_max_connections{SEL})`), "max"},
		q{s(`sum(pgsidecar_pool_min_connections{SEL})`), "min"}), 12, 8)
	b.add(timeseries("Callers waiting for a connection", "Callers blocked in acquire right now. Waiters at every scrape for 5 minutes fire PgSidecarPoolSaturated.", "short",
		q{s(`sum by (instance, pool) (pgsidecar_pool_pending_acquires{SEL})`), "{{instance}} {{pool}}"}), 8, 8)
	b.add(timeseries("Acquire wait", "Time callers waited for a pool connection, including opening one, by percentile.", "s",
		q{s(`histogram_quantile(0.5, sum by (le) (rate(pgsidecar_pool_acquire_wait_seconds_bucket{SEL}[RI])))`), "p50"},
		q{s(`histogram_quantile(0.95, sum by (le) (rate(pgsidecar_pool_acquire_wait_seconds_bucket{SEL}[RI])))`), "p95"},
		q{s(`histogram_quantile(0.99, sum by (le) (rate(pgsidecar_pool_acquire_wait_seconds_bucket{SEL}[RI])))`), "p99"}), 8, 8)
	b.add(timeseries("Acquire timeouts and cancellations", "Acquires that gave up at their deadline (PgSidecarPoolAcquireTimeouts), were canceled by the caller, or found no idle connection.", "ops",
		q{s(`sum(rate(pgsidecar_pool_acquire_timeouts_total{SEL}[RI]))`), "timeouts"},
		q{s(`sum(rate(pgsidecar_pool_canceled_acquires_total{SEL}[RI]))`), "canceled"},
		q{s(`sum(rate(pgsidecar_pool_empty_acquires_total{SEL}[RI]))`), "no idle connection"}), 8, 8)
	b.add(timeseries("Connections opened and closed", "Connection churn: opened, closed by reason, and failed connection attempts.", "ops",
		q{s(`sum(rate(pgsidecar_pool_connections_opened_total{SEL}[RI]))`), "opened"},
		q{s(`sum by (reason) (rate(pgsidecar_pool_connections_closed_total{SEL}[RI]))`), "closed {{reason}}"},
		q{s(`sum(rate(pgsidecar_pool_connect_errors_total{SEL}[RI]))`), "connect errors"}), 12, 8)
	b.add(timeseries("Acquires", "Connections handed out per second.", "ops",
		q{s(`sum by (instance, pool) (rate(pgsidecar_pool_acquires_total{SEL}[RI]))`), "{{instance}} {{pool}}"}), 12, 8)

	b.row("Queries")
	b.add(timeseries("Query rate by operation", "Queries per second by operation (select, insert, update, delete, ...).", "reqps",
		q{s(`sum by (operation) (rate(pgsidecar_query_duration_seconds_count{SEL}[RI]))`), "{{operation}}"}), 12, 8)
	b.add(timeseries("Latency by operation", "50th, 95th and 99th percentile query duration by operation (select, insert, update, delete, ...), from the classic histogram buckets. Exemplars (dots) link to the trace of a statement that sent a sampled traceparent.", "s",
		q{s(`histogram_quantile(0.5, sum by (operation, le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p50 {{operation}}"},
		q{s(`histogram_quantile(0.95, sum by (operation, le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p95 {{operation}}"},
		q{s(`histogram_quantile(0.99, sum by (operation, le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p99 {{operation}}"}).withExemplars(), 12, 8)
	b.add(timeseries("Latency", fmt.Sprintf("Query duration percentiles and mean over all operations. The dashed line is the average latency alert threshold (%ss).", num(c.AvgLatencySeconds)), "s",
		q{s(`histogram_quantile(0.5, sum by (le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p50"},
		q{s(`histogram_quantile(0.95, sum by (le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p95"},
		q{s(`histogram_quantile(0.99, sum by (le) (rate(pgsidecar_query_duration_seconds_bucket{SEL}[RI])))`), "p99"},
		q{avgLatency, "mean {{instance}} {{pool}}"}).above(c.AvgLatencySeconds).withExemplars(), 12, 8)
	b.add(timeseries("Errors by SQLSTATE", "Failed queries per second by SQLSTATE (08006 lost connection, timeout/canceled client deadlines, client for client-side errors).", "ops",
		q{s(`sum by (sqlstate) (rate(pgsidecar_query_errors_total{SEL}[RI]))`), "{{sqlstate}}"}), 12, 8)
	b.add(timeseries("Error ratio", fmt.Sprintf("Failed queries divided by all queries. The dashed line is the alert threshold (%s).", pct(c.ErrorRatio)), "percentunit",
		q{errRatio, "{{instance}} {{pool}}"}).above(c.ErrorRatio), 8, 8)
	budget := num(1 - c.ErrorObjective)
	var burnSteps []float64
	for _, w := range BurnWindows {
		if w.Severity == "critical" {
			burnSteps = append([]float64{w.Factor}, burnSteps...)
		}
	}
	b.add(timeseries("Error budget burn rate", fmt.Sprintf("Error ratio divided by the error budget of the %s objective, over 1h and 6h. Dashed lines: page thresholds of PgSidecarQueryErrorBudgetBurnFast.", pct(c.ErrorObjective)), "short",
		q{s(`sum by (job, pool) (rate(pgsidecar_query_errors_total{SEL}[1h])) / sum by (job, pool) (rate(pgsidecar_query_duration_seconds_count{SEL}[1h])) / ` + budget), "1h {{job}} {{pool}}"},
		q{s(`sum by (job, pool) (rate(pgsidecar_query_errors_total{SEL}[6h])) / sum by (job, pool) (rate(pgsidecar_query_duration_seconds_count{SEL}[6h])) / ` + budget), "6h {{job}} {{pool}}"}).steps(burnSteps...), 8, 8)
	b.add(timeseries("Slow queries", fmt.Sprintf("Queries at or over the slow query threshold (DB_SLOW_QUERY_THRESHOLD) in the last 10 minutes. Alert above %s.", num(c.SlowQueriesPer10m)), "short",
		q{s(`sum by (instance, pool) (increase(pgsidecar_slow_queries_total{SEL}[10m]))`), "{{instance}} {{pool}}"}).above(c.SlowQueriesPer10m), 8, 8)
	b.add(timeseries("Retries", "Retries of ExecuteWithRetry and Transaction after retryable errors.", "ops",
		q{s(`sum by (instance, pool) (rate(pgsidecar_retries_total{SEL}[RI]))`), "{{instance}} {{pool}}"}), 12, 8)
	b.add(timeseries("Transactions by outcome", "Transactions run by Transaction: committed, rolled back, failed.", "ops",
		q{s(`sum by (outcome) (rate(pgsidecar_transactions_total{SEL}[RI]))`), "{{outcome}}"}), 12, 8)

	b.row("Proxy (--proxy.listen-address)")
	b.add(timeseries("Proxy client connections", "Clients connected to the proxy by state: authenticating, waiting for a server connection, active (holding one), idle (logged in, holding none between transactions; always 0 in session mode).", "short",
		q{s(`sum by (state) (pgsidecar_proxy_client_connections{SEL})`), "{{state}}"}), 8, 8)
	b.add(timeseries("Proxy client wait", fmt.Sprintf("Time proxy clients waited for a server connection (each checkout in transaction mode; PgBouncer's maxwait), by percentile. The dashed line is the p99 alert threshold (%ss, PgSidecarProxyClientWaitHigh).", num(c.ProxyClientWaitSeconds)), "s",
		q{s(`histogram_quantile(0.5, sum by (le) (rate(pgsidecar_proxy_client_wait_seconds_bucket{SEL}[RI])))`), "p50"},
		q{s(`histogram_quantile(0.99, sum by (le) (rate(pgsidecar_proxy_client_wait_seconds_bucket{SEL}[RI])))`), "p99"}).above(c.ProxyClientWaitSeconds), 8, 8)
	b.add(timeseries("Proxy sessions and transactions", "Client sessions that got a server connection, and explicit transactions of proxied clients by outcome (abandoned: the client left mid-transaction).", "ops",
		q{s(`sum(rate(pgsidecar_proxy_sessions_total{SEL}[RI]))`), "sessions"},
		q{s(`sum by (outcome) (rate(pgsidecar_proxy_transactions_total{SEL}[RI]))`), "transactions {{outcome}}"}), 8, 8)
	b.add(timeseries("Proxy traffic", "Protocol bytes relayed by the proxy: in from clients, out to clients.", "Bps",
		q{s(`sum by (direction) (rate(pgsidecar_proxy_bytes_total{SEL}[RI]))`), "{{direction}}"}), 12, 8)
	b.add(timeseries("Proxy failures", "Failed client authentications by method, errors the proxy itself sent to clients by SQLSTATE (53300: no server connection in time, 3D000: wrong database), and server connections lost mid-session.", "ops",
		q{s(`sum by (method) (rate(pgsidecar_proxy_auth_failures_total{SEL}[RI]))`), "auth failed {{method}}"},
		q{s(`sum by (sqlstate) (rate(pgsidecar_proxy_client_errors_total{SEL}[RI]))`), "proxy error {{sqlstate}}"},
		q{s(`sum(rate(pgsidecar_proxy_server_connections_lost_total{SEL}[RI]))`), "server connection lost"}), 12, 8)
	b.add(timeseries("Proxy server connections", "The proxy's server connections by state: active (serving a client) and idle (in the proxy's pool, ready for the next transaction).", "short",
		q{s(`sum by (state) (pgsidecar_proxy_server_connections{SEL})`), "{{state}}"}), 8, 8)
	b.add(timeseries("Transactions per session", "Transactions a client ran in one session, observed when the session ends, by percentile and mean: how many transactions share one login.", "short",
		q{s(`histogram_quantile(0.5, sum by (le) (rate(pgsidecar_proxy_session_transactions_bucket{SEL}[RI])))`), "p50"},
		q{s(`histogram_quantile(0.99, sum by (le) (rate(pgsidecar_proxy_session_transactions_bucket{SEL}[RI])))`), "p99"},
		q{s(`sum(rate(pgsidecar_proxy_session_transactions_sum{SEL}[RI])) / sum(rate(pgsidecar_proxy_session_transactions_count{SEL}[RI]))`), "mean"}), 8, 8)
	b.add(timeseries("Pinned sessions", "Client sessions pinned to their server connection until they disconnect, by the session state that pinned them (SET ROLE, LISTEN, advisory lock, temporary object, SQL PREPARE, WITH HOLD cursor, an unknown statement, ...). A pinned session takes a server connection out of transaction pooling.", "short",
		q{s(`sum by (reason) (pgsidecar_proxy_pinned_sessions{SEL})`), "{{reason}}"}), 8, 8)
	b.add(timeseries("Prepared statement cache", "Protocol-level prepared statements of clients found already prepared on the server connection (hits), prepared there first (misses), and dropped from a connection's LRU (evictions; --proxy.max-prepared-statements). Evictions followed by misses mean the cache is too small for the statements in use.", "ops",
		q{s(`sum(rate(pgsidecar_proxy_prepared_statement_hits_total{SEL}[RI]))`), "hits"},
		q{s(`sum(rate(pgsidecar_proxy_prepared_statement_misses_total{SEL}[RI]))`), "misses"},
		q{s(`sum(rate(pgsidecar_proxy_prepared_statement_evictions_total{SEL}[RI]))`), "evictions"}), 12, 8)
	b.add(timeseries("Sessions pinned", "Client sessions that became pinned, per second, by reason.", "ops",
		q{s(`sum by (reason) (rate(pgsidecar_proxy_pinned_sessions_total{SEL}[RI]))`), "{{reason}}"}), 12, 8)
	b.add(timeseries("Proxy paused", "Sidecars whose proxy is paused (POST /api/proxy/pause, for a planned database restart; the database-down and pool alerts stay quiet meanwhile), the clients waiting for the resume, and the share of time spent paused.", "short",
		q{s(`sum(pgsidecar_proxy_paused{SEL})`), "paused sidecars"},
		q{s(`sum(pgsidecar_proxy_paused_clients{SEL})`), "queued clients"},
		q{s(`sum(rate(pgsidecar_proxy_paused_seconds_total{SEL}[RI]))`), "paused (sidecar-seconds per second)"}), 24, 6)

	b.row("Top statements (--statements.top)")
	stmtP99 := s(`histogram_quantile(0.99, sum by (fingerprint, le) (rate(pgsidecar_statement_duration_seconds_bucket{SEL}[RI])))`)
	// One text per fingerprint, even when sidecars cut it at different lengths.
	withText := s(` * on (fingerprint) group_left (text) topk by (fingerprint) (1, max by (fingerprint, text) (pgsidecar_statement_info{SEL}))`)
	b.add(table("Top statements", "The statements with the highest p99 over the dashboard's time range, with their normalised text (pgsidecar_statement_info): p99, calls per second and errors per second. Only the top statements by total time over --statements.window are measured.", "s",
		q{s(`topk(20, histogram_quantile(0.99, sum by (fingerprint, le) (rate(pgsidecar_statement_duration_seconds_bucket{SEL}[$__range]))))`) + withText, ""},
		q{s(`sum by (fingerprint) (rate(pgsidecar_statement_duration_seconds_count{SEL}[$__range]))`) + withText, ""},
		q{s(`sum by (fingerprint) (rate(pgsidecar_statement_errors_total{SEL}[$__range]))`) + withText, ""}), 24, 10)
	b.add(timeseries("Statement p99", fmt.Sprintf("99th percentile duration of the ten statements with the highest p99, by fingerprint (the table above has their text). PgSidecarStatementLatencyRegression fires when one reaches %s times its p99 of the day before and at least %ss.", num(c.StatementLatencyFactor), num(c.StatementLatencyMinSeconds)), "s",
		q{"topk(10, " + stmtP99 + ")", "{{fingerprint}}"}).withExemplars(), 12, 8)
	prev := timeseries("Statement p99, one day earlier", "The same percentiles 24 hours earlier: the baseline PgSidecarStatementLatencyRegression compares each statement with.", "s",
		q{"topk(10, " + stmtP99 + ")", "{{fingerprint}}"})
	prev.TimeShift = "1d"
	b.add(prev, 12, 8)
	b.add(timeseries("Statement calls", "Calls per second of the ten busiest measured statements, by fingerprint.", "reqps",
		q{s(`topk(10, sum by (fingerprint) (rate(pgsidecar_statement_duration_seconds_count{SEL}[RI])))`), "{{fingerprint}}"}), 12, 8)
	b.add(timeseries("Statement errors", "Failed calls per second of the measured statements, by fingerprint and SQLSTATE.", "ops",
		q{s(`sum by (fingerprint, sqlstate) (rate(pgsidecar_statement_errors_total{SEL}[RI]))`), "{{fingerprint}} {{sqlstate}}"}), 12, 8)

	b.row("Health")
	b.add(timeseries("Health check", "1 when the pool's last health check succeeded, 0 when it failed. Failing for 1 minute fires PgSidecarHealthCheckFailing.", "none",
		q{s(`pgsidecar_health_check_up{SEL}`), "{{instance}} {{pool}}"}).upDown(), 8, 8)
	b.add(timeseries("Health check duration", "Duration of the last health check (a ping through the pool).", "s",
		q{s(`pgsidecar_health_check_duration_seconds{SEL}`), "{{instance}} {{pool}}"}), 8, 8)
	b.add(timeseries("Health check failures and reconnects", "Failed health checks, and times the pool came back after losing the database.", "short",
		q{s(`sum by (instance, pool) (increase(pgsidecar_health_check_failures_total{SEL}[RI]))`), "failures {{instance}} {{pool}}"},
		q{s(`sum by (instance, pool) (increase(pgsidecar_reconnects_total{SEL}[RI]))`), "reconnects {{instance}} {{pool}}"}), 8, 8)
	return b.d
}

// The connection budget: the sidecars' ceilings, and what the server allows, read over 10
// minutes so that a leader change, which moves the collectors' part and the allowed
// connections to another sidecar, leaves no gap.
const (
	budgetAllowed = `max by (CL) (max_over_time(pgsidecar_server_connections_allowed{CSEL}[10m]))`
	budgetRatio   = `sum by (CL) (max_over_time(pgsidecar_connection_ceiling{CSEL}[10m])) / on (CL) ` + budgetAllowed
)

func (c Config) postgresDashboard() *Dashboard {
	sel := c.dashSel(`job=~"$job", instance=~"$instance"`)
	dsel := c.dashSel(`job=~"$job", instance=~"$instance", datname=~"$datname"`)
	const ri = "$__rate_interval"
	s := func(format string) string {
		return strings.NewReplacer("DSEL", dsel, "SEL", sel, "RI", ri).Replace(format)
	}
	b := newDashboard("pgsidecar-postgresql", "pgsidecar / PostgreSQL",
		"PostgreSQL statistics collected by pgsidecar through its pool: sessions, transactions, connections, cache, deadlocks, size, checkpoints and background writer, tables, replication, the exporter's scrapes and top statements.",
		c.clusterVar("pg_up"),
		queryVar("job", "Job", "pg_up", c.dashSel("")),
		queryVar("instance", "Instance", "pg_up", c.dashSel(`job=~"$job"`)),
		queryVar("datname", "Database", "pg_database_size_bytes", c.dashSel(`job=~"$job", instance=~"$instance"`)),
	)
	b.row("Overview")
	b.add(stat("PostgreSQL", "Whether the sidecars can reach PostgreSQL (pg_up; alert PgSidecarDatabaseDown).", "none",
		q{s(`min(pg_up{SEL})`), ""}).upDown(), 4, 4)
	v := stat("Version", "PostgreSQL server version reported by pg_static.", "none",
		q{s(`max by (short_version) (pg_static{SEL})`), "{{short_version}}"})
	v.Options["textMode"] = "name"
	v.Options["colorMode"] = "none"
	b.add(v, 4, 4)
	b.add(stat("Server connection utilisation", fmt.Sprintf("Client backends divided by max_connections. Alert above %s.", pct(c.ServerConnectionUtilization)), "percentunit",
		q{s(`max(pg_server_connection_utilization_ratio{SEL})`), ""}).ratio().above(c.ServerConnectionUtilization), 4, 4)
	b.add(stat("Oldest transaction", fmt.Sprintf("Age of the oldest open transaction. Alert above %ss.", num(c.LongTransactionSeconds)), "s",
		q{s(`max(pg_stat_activity_oldest_xact_seconds{DSEL})`), ""}).above(c.LongTransactionSeconds), 4, 4)
	b.add(stat("Idle in transaction", fmt.Sprintf("Age of the oldest session idle inside a transaction. Alert above %ss.", num(c.IdleInTransactionSeconds)), "s",
		q{s(`max(pg_stat_activity_idle_in_transaction_max_seconds{DSEL})`), ""}).above(c.IdleInTransactionSeconds), 4, 4)
	b.add(stat("Database size", "Total size of the selected databases.", "bytes",
		q{s(`sum(max by (datname) (pg_database_size_bytes{DSEL}))`), ""}), 4, 4)

	b.row("Sessions and connections")
	b.add(timeseries("Sessions by state", "Client sessions in pg_stat_activity by state (active, idle, idle in transaction, ...).", "short",
		q{s(`sum by (state) (max by (datname, state, usename, application_name) (pg_stat_activity_count{DSEL}))`), "{{state}}"}), 12, 8)
	b.add(timeseries("Oldest transaction", fmt.Sprintf("Age of the oldest open transaction by database. The dashed line is the alert threshold (%ss).", num(c.LongTransactionSeconds)), "s",
		q{s(`max by (datname) (pg_stat_activity_oldest_xact_seconds{DSEL})`), "{{datname}}"}).above(c.LongTransactionSeconds), 12, 8)
	b.add(timeseries("Idle-in-transaction sessions", "Sessions idle inside an open transaction, by database.", "short",
		q{s(`max by (datname) (pg_stat_activity_idle_in_transaction_sessions{DSEL})`), "{{datname}}"}), 8, 8)
	b.add(timeseries("Oldest idle-in-transaction session", fmt.Sprintf("How long the oldest idle-in-transaction session has waited, by database. The dashed line is the alert threshold (%ss).", num(c.IdleInTransactionSeconds)), "s",
		q{s(`max by (datname) (pg_stat_activity_idle_in_transaction_max_seconds{DSEL})`), "{{datname}}"}).above(c.IdleInTransactionSeconds), 8, 8)
	b.add(timeseries("Sessions waiting on locks", "Sessions waiting for a lock, by database.", "short",
		q{s(`max by (datname) (pg_stat_activity_waiting_on_locks_sessions{DSEL})`), "{{datname}}"}), 8, 8)
	b.add(timeseries("Server connection utilisation", fmt.Sprintf("Client backends / max_connections per server, and the connection ceilings of all sidecars of a cluster / the connections the server allows (what the server would see if every sidecar opened all it may; PgSidecarServerConnectionsOvercommitted). Alert above %s.", pct(c.ServerConnectionUtilization)), "percentunit",
		q{s(`max by (instance) (pg_server_connection_utilization_ratio{SEL})`), "backends {{instance}}"},
		q{strings.ReplaceAll(budgetRatio, "CSEL", c.dashSel("")), "sidecar ceilings {{CL}}"}.cluster(c)).above(c.ServerConnectionUtilization), 12, 8)
	b.add(timeseries("Server connections", "Client backends on the server, with max_connections and the slots reserved for superusers.", "short",
		q{s(`max by (instance) (pg_server_connections{SEL})`), "backends {{instance}}"},
		q{s(`max(pg_settings_max_connections{SEL})`), "max_connections"},
		q{s(`max(pg_settings_superuser_reserved_connections{SEL})`), "superuser_reserved_connections"}), 12, 8)
	b.add(timeseries("Connection budget", "The most server connections all sidecars of a cluster may open, by part (pool, which the proxy draws from; collectors; election sessions), stacked, against what the server allows: max_connections less the reserved connections, as the sidecar that collects reads it.", "short",
		q{strings.ReplaceAll(`sum by (CL, part) (pgsidecar_connection_ceiling{CSEL})`, "CSEL", c.dashSel("")), "{{part}} {{CL}}"}.cluster(c),
		q{strings.ReplaceAll(budgetAllowed, "CSEL", c.dashSel("")), "allowed {{CL}}"}.cluster(c)).stackedBut("allowed"), 24, 8)

	b.row("Databases")
	b.add(timeseries("Commits and rollbacks", "Transactions committed and rolled back per second, by database.", "ops",
		q{s(`sum by (datname) (rate(pg_stat_database_xact_commit{DSEL}[RI]))`), "commit {{datname}}"},
		q{s(`sum by (datname) (rate(pg_stat_database_xact_rollback{DSEL}[RI]))`), "rollback {{datname}}"}), 12, 8)
	b.add(timeseries("Cache hit ratio", fmt.Sprintf("Block reads served from shared buffers. The dashed line is the alert threshold (%s).", pct(c.CacheHitRatio)), "percentunit",
		q{s(`sum by (datname) (rate(pg_stat_database_blks_hit{DSEL}[RI])) / (sum by (datname) (rate(pg_stat_database_blks_hit{DSEL}[RI])) + sum by (datname) (rate(pg_stat_database_blks_read{DSEL}[RI])))`), "{{datname}}"}).ratio().below(c.CacheHitRatio), 12, 8)
	b.add(timeseries("Deadlocks", "Deadlocks detected in the last 10 minutes, by database. Any deadlock fires PgSidecarDeadlocks.", "short",
		q{s(`max by (datname) (increase(pg_stat_database_deadlocks{DSEL}[10m]))`), "{{datname}}"}).above(1), 8, 8)
	b.add(timeseries("Temporary files", "Bytes written to temporary files by queries that spilled to disk, by database.", "Bps",
		q{s(`max by (datname) (rate(pg_stat_database_temp_bytes{DSEL}[RI]))`), "{{datname}}"}), 8, 8)
	b.add(timeseries("Rows", "Rows fetched, inserted, updated and deleted per second.", "ops",
		q{s(`sum(rate(pg_stat_database_tup_fetched{DSEL}[RI]))`), "fetched"},
		q{s(`sum(rate(pg_stat_database_tup_inserted{DSEL}[RI]))`), "inserted"},
		q{s(`sum(rate(pg_stat_database_tup_updated{DSEL}[RI]))`), "updated"},
		q{s(`sum(rate(pg_stat_database_tup_deleted{DSEL}[RI]))`), "deleted"}), 8, 8)
	b.add(timeseries("Database size", "Disk space used by each database.", "bytes",
		q{s(`max by (datname) (pg_database_size_bytes{DSEL})`), "{{datname}}"}), 24, 8)

	b.row("Checkpoints and background writer")
	b.add(timeseries("Checkpoints per hour", "Checkpoints in the last hour: timed (checkpoint_timeout passed) and requested (WAL reached max_wal_size, or CHECKPOINT was run). From pg_stat_bgwriter up to PostgreSQL 16, pg_stat_checkpointer (the checkpointer collector) from 17.", "short",
		q{s(`max by (instance) (` + checkpointsSel("timed", "increase", "1h") + `)`), "timed {{instance}}"},
		q{s(`max by (instance) (` + checkpointsSel("requested", "increase", "1h") + `)`), "requested {{instance}}"}), 8, 8)
	b.add(timeseries("Requested checkpoints", fmt.Sprintf("Share of the last hour's checkpoints that were requested rather than timed. The dashed line is the alert threshold (%s, PgSidecarCheckpointsRequested).", pct(c.RequestedCheckpointRatio)), "percentunit",
		q{s(`max by (instance) (` + checkpointsSel("requested", "increase", "1h") + `) / (max by (instance) (` + checkpointsSel("requested", "increase", "1h") + `) + max by (instance) (` + checkpointsSel("timed", "increase", "1h") + `))`), "{{instance}}"}).ratio().above(c.RequestedCheckpointRatio), 8, 8)
	b.add(timeseries("Checkpoint write and sync time", "Time per second the checkpointer spent writing buffers and syncing files (counters in milliseconds; restartpoints included from PostgreSQL 17).", "s",
		q{s(`max by (instance) (` + checkpointsSel("write_time", "rate", "RI") + `) / 1000`), "write {{instance}}"},
		q{s(`max by (instance) (` + checkpointsSel("sync_time", "rate", "RI") + `) / 1000`), "sync {{instance}}"}), 8, 8)
	b.add(timeseries("Buffers written", "Buffers written per second by the checkpointer, the background writer and backends themselves. Backends writing many buffers (and fsyncs by backends) mean the background writer cannot keep up; PostgreSQL 17 moved the backends' counts to pg_stat_io, which is not collected.", "ops",
		q{s(`max(` + checkpointsSel("buffers", "rate", "RI") + `)`), "checkpointer"},
		q{s(`max(rate(pg_stat_bgwriter_buffers_clean_total{SEL}[RI]))`), "background writer"},
		q{s(`max(rate(pg_stat_bgwriter_buffers_backend_total{SEL}[RI]))`), "backends"},
		q{s(`max(rate(pg_stat_bgwriter_buffers_backend_fsync_total{SEL}[RI]))`), "backend fsyncs"}), 12, 8)
	b.add(timeseries("Buffers allocated and writer stops", "Buffers allocated per second, and times per second the background writer stopped a cleaning scan at bgwriter_lru_maxpages.", "ops",
		q{s(`max(rate(pg_stat_bgwriter_buffers_alloc_total{SEL}[RI]))`), "allocated"},
		q{s(`max(rate(pg_stat_bgwriter_maxwritten_clean_total{SEL}[RI]))`), "writer stopped at maxpages"}), 12, 8)

	// The tables row reads pg_stat_user_tables of every database the sidecar collects from.
	const tbl = "datname, schemaname, relname"
	b.row("Tables")
	b.add(timeseries("Dead tuples", "Dead tuples of the ten tables with the most: rows deleted or updated that vacuum has not removed yet.", "short",
		q{s(`topk(10, max by (` + tbl + `) (pg_stat_user_tables_n_dead_tup{DSEL}))`), "{{datname}} {{schemaname}}.{{relname}}"}), 12, 8)
	b.add(timeseries("Dead tuple ratio", fmt.Sprintf("Dead / (live + dead) tuples of the ten worst tables with more than %s dead tuples. Above the dashed line (%s) for 30 minutes fires PgSidecarDeadTuplesHigh.", num(c.MinDeadTuples), pct(c.DeadTupleRatio)), "percentunit",
		q{s(`topk(10, max by (`+tbl+`) (pg_stat_user_tables_n_dead_tup{DSEL}) / (max by (`+tbl+`) (pg_stat_user_tables_n_live_tup{DSEL}) + max by (`+tbl+`) (pg_stat_user_tables_n_dead_tup{DSEL})) and max by (`+tbl+`) (pg_stat_user_tables_n_dead_tup{DSEL}) > `) + num(c.MinDeadTuples) + ")", "{{datname}} {{schemaname}}.{{relname}}"}).ratio().above(c.DeadTupleRatio), 12, 8)
	b.add(timeseries("Sequential scans", "Sequential scans per second of the ten tables scanned most: a large table here usually lacks an index.", "ops",
		q{s(`topk(10, max by (` + tbl + `) (rate(pg_stat_user_tables_seq_scan{DSEL}[RI])))`), "{{datname}} {{schemaname}}.{{relname}}"}), 8, 8)
	b.add(timeseries("Rows read by sequential scans", "Rows per second read by sequential scans, ten tables with the most.", "ops",
		q{s(`topk(10, max by (` + tbl + `) (rate(pg_stat_user_tables_seq_tup_read{DSEL}[RI])))`), "{{datname}} {{schemaname}}.{{relname}}"}), 8, 8)
	b.add(timeseries("Time since last vacuum", "Time since the last vacuum (manual or autovacuum) of the ten tables vacuumed longest ago; tables never vacuumed are left out.", "s",
		q{s(`topk(10, time() - max by (` + tbl + `) (pg_stat_user_tables_last_vacuum{DSEL} > pg_stat_user_tables_last_autovacuum{DSEL} or pg_stat_user_tables_last_autovacuum{DSEL} > 0))`), "{{datname}} {{schemaname}}.{{relname}}"}), 8, 8)

	b.row("Replication")
	role := stat("Role", "Whether the server is a replica (in recovery) or a primary.", "none",
		q{s(`max by (instance) (pg_replication_is_replica{SEL})`), "{{instance}}"})
	role.FieldConfig.Defaults.Mappings = []any{map[string]any{"type": "value", "options": map[string]any{
		"0": map[string]any{"text": "primary", "index": 0},
		"1": map[string]any{"text": "replica", "index": 1},
	}}}
	b.add(role, 4, 8)
	b.add(timeseries("Replication lag", fmt.Sprintf("How long a replica has not replayed the primary's latest changes (0 on a primary, and on a replica that has replayed all it received). The dashed line is the alert threshold (%ss, PgSidecarReplicationLagHigh).", num(c.ReplicationLagSeconds)), "s",
		q{s(`max by (instance) (pg_replication_lag_seconds{SEL})`), "{{instance}}"}).above(c.ReplicationLagSeconds), 10, 8)
	b.add(timeseries("WAL retained by replication slots", fmt.Sprintf("WAL the server keeps for each replication slot (from the slot's restart_lsn to the current WAL position). An inactive slot above the dashed line (%sB) for 15 minutes fires PgSidecarReplicationSlotInactive.", humanBytes(c.InactiveSlotRetainedBytes)), "bytes",
		q{s(`max by (slot_name) (pg_replication_slots_pg_wal_lsn_diff{SEL})`), "{{slot_name}}"}).above(c.InactiveSlotRetainedBytes), 10, 8)
	b.add(timeseries("Replication slots in use", "1 while a consumer (replica or logical decoding client) is connected to the slot, 0 while nobody is.", "none",
		q{s(`max by (slot_name) (pg_replication_slots_active{SEL})`), "{{slot_name}}"}), 24, 6)

	b.row("Exporter")
	b.add(timeseries("Scrape errors", fmt.Sprintf("Share of the sidecar's scrapes of PostgreSQL statistics with an error over 30 minutes. Above the dashed line (%s) while the database is up fires PgSidecarExporterScrapeErrors.", pct(c.ScrapeErrorRatio)), "percentunit",
		q{s(`avg_over_time(pg_exporter_last_scrape_error{SEL}[30m])`), "{{instance}}"}).ratio().above(c.ScrapeErrorRatio), 12, 8)
	b.add(timeseries("Scrape duration", "Duration of the sidecar's last scrape of PostgreSQL statistics.", "s",
		q{s(`max by (instance) (pg_exporter_last_scrape_duration_seconds{SEL})`), "{{instance}}"}), 12, 8)
	b.add(timeseries("Collector leader", "1 for the sidecar that runs the server-wide collectors (--collector.scope=auto elects one per server; all always runs them). One line per server at a time; a leader change shows as a handover between lines.", "none",
		q{s(`max by (instance) (pgsidecar_collector_leader{SEL})`), "{{instance}}"}).leader(), 24, 6)

	b.row("Statements (needs --collector.statements)")
	b.add(table("Top statements by total time", "Statements from pg_stat_statements that spent the most time per second over the interval (time per second, calls per second). The statements collector is off by default: start pgsidecar with --collector.statements.", "s",
		q{s(`topk(10, sum by (datname, user, queryid) (rate(pg_stat_statements_seconds_total{DSEL}[RI])))`), ""},
		q{s(`topk(10, sum by (datname, user, queryid) (rate(pg_stat_statements_calls_total{DSEL}[RI])))`), ""}), 24, 8)
	b.add(timeseries("Statement time", "Time spent per second by the ten busiest statements.", "s",
		q{s(`topk(10, sum by (datname, queryid) (rate(pg_stat_statements_seconds_total{DSEL}[RI])))`), "{{datname}} {{queryid}}"}), 12, 8)
	b.add(timeseries("Mean time per call", "Average duration of one call of the ten busiest statements.", "s",
		q{s(`topk(10, sum by (datname, queryid) (rate(pg_stat_statements_seconds_total{DSEL}[RI])) / sum by (datname, queryid) (rate(pg_stat_statements_calls_total{DSEL}[RI])))`), "{{datname}} {{queryid}}"}), 12, 8)
	return b.d
}

// DashboardJSON renders a dashboard the way it is committed.
func DashboardJSON(d *Dashboard) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
