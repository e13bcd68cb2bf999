package mixin

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []RuleGroup `yaml:"groups"`
}

// RuleGroup is one group of rules, evaluated in order.
type RuleGroup struct {
	Name  string `yaml:"name"`
	Rules []Rule `yaml:"rules"`
}

// Rule is a recording rule (Record set) or an alerting rule (Alert set).
type Rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

// Alerts returns the alerting rules of every group.
func (f RuleFile) Alerts() []Rule {
	var out []Rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	return out
}

// RecordedNames are the series names the rule file records itself.
func (f RuleFile) RecordedNames() map[string]bool {
	out := map[string]bool{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out[r.Record] = true
			}
		}
	}
	return out
}

// num prints a threshold the way a person would write it in PromQL.
func num(v float64) string {
	r := math.Round(v*1e9) / 1e9
	if r == math.Trunc(r) && math.Abs(r) < 1e15 {
		return strconv.FormatInt(int64(r), 10) // byte counts without an exponent
	}
	return strconv.FormatFloat(r, 'g', -1, 64)
}

// dur prints a duration in Prometheus' notation (5m, 1h, 1d).
func dur(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// ofCluster names the cluster label in a description when the scrape config sets it.
const ofCluster = "{{ with $labels.cluster }} of cluster {{ . }}{{ end }}"

func pct(v float64) string { return num(v*100) + "%" }

// humanBytes prints a byte count in binary units, as humanize1024 renders $value.
func humanBytes(v float64) string {
	units := []string{"", "Ki", "Mi", "Gi", "Ti"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return num(v) + units[i]
}

// alert builds an alerting rule with the mixin conventions: a severity label, a plain summary,
// a templated description and a runbook anchor named after the alert.
func (c Config) alert(name, severity string, forDur time.Duration, expr, summary, description string) Rule {
	r := Rule{
		Alert:  name,
		Expr:   exprText(expr),
		Labels: map[string]string{"severity": severity},
		Annotations: map[string]string{
			"summary":     summary,
			"description": description,
			"runbook_url": c.RunbookURL + "#" + strings.ToLower(name),
		},
	}
	if forDur > 0 {
		r.For = dur(forDur)
	}
	return r
}

func record(name, expr string) Rule { return Rule{Record: name, Expr: exprText(expr)} }

// exprText trims an expression; multi-line ones keep a final newline so YAML prints them as a
// literal block.
func exprText(expr string) string {
	e := strings.TrimSpace(expr)
	if strings.Contains(e, "\n") {
		e += "\n"
	}
	return e
}

// SLOWindows are the error ratio windows the burn rate alerts use.
func SLOWindows() []string {
	seen := map[string]bool{}
	var out []string
	for _, w := range BurnWindows {
		for _, x := range []string{w.Short, w.Long} {
			if !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := model.ParseDuration(out[i])
		b, _ := model.ParseDuration(out[j])
		return a < b
	})
	return out
}

// Rules builds the rule file.
func (c Config) Rules() RuleFile {
	minRate := num(c.MinQueryRate)
	recording := RuleGroup{Name: "pgsidecar.rules", Rules: []Rule{
		record("pool:pgsidecar_queries:rate5m",
			`sum without (operation) (rate(pgsidecar_query_duration_seconds_count[5m]))`),
		record("pool:pgsidecar_query_errors:rate5m",
			`sum without (operation, sqlstate) (rate(pgsidecar_query_errors_total[5m]))`),
		record("pool:pgsidecar_query_error_ratio:rate5m",
			`pool:pgsidecar_query_errors:rate5m / pool:pgsidecar_queries:rate5m`),
		record("pool:pgsidecar_query_duration_seconds:mean5m", `
sum without (operation) (rate(pgsidecar_query_duration_seconds_sum[5m]))
/
pool:pgsidecar_queries:rate5m`),
		record("pool:pgsidecar_pool_utilization:ratio", `
sum without (state) (pgsidecar_pool_connections{state="used"})
/
pgsidecar_pool_max_connections`),
	}}
	slo := RuleGroup{Name: "pgsidecar-slo.rules"}
	for _, w := range SLOWindows() {
		// Rules of a group run in order: the ratio reads the query rate recorded just before.
		slo.Rules = append(slo.Rules,
			record("job_pool:pgsidecar_queries:rate"+w, fmt.Sprintf(
				`sum by (cluster, job, pool) (rate(pgsidecar_query_duration_seconds_count[%s]))`, w)),
			record("job_pool:pgsidecar_query_error_ratio:rate"+w, fmt.Sprintf(`
sum by (cluster, job, pool) (rate(pgsidecar_query_errors_total[%[1]s]))
/
job_pool:pgsidecar_queries:rate%[1]s`, w)))
	}

	budget := num(1 - c.ErrorObjective)
	// Each window pair carries the traffic guard of the plain error ratio alert, over its long
	// window: a handful of queries with one failure is no budget burn worth a page.
	burn := func(severity string) string {
		var parts []string
		for _, w := range BurnWindows {
			if w.Severity != severity {
				continue
			}
			parts = append(parts, fmt.Sprintf(`(
  job_pool:pgsidecar_query_error_ratio:rate%[1]s > (%[3]s * %[4]s)
and
  job_pool:pgsidecar_query_error_ratio:rate%[2]s > (%[3]s * %[4]s)
and
  job_pool:pgsidecar_queries:rate%[1]s > %[5]s
)`, w.Long, w.Short, num(w.Factor), budget, minRate))
		}
		return strings.Join(parts, "\nor\n")
	}
	burnWindows := func(severity string) string {
		var parts []string
		for _, w := range BurnWindows {
			if w.Severity == severity {
				parts = append(parts, fmt.Sprintf("%s/%s at %sx", w.Long, w.Short, num(w.Factor)))
			}
		}
		return strings.Join(parts, " or ")
	}

	// A paused proxy (POST /api/proxy/pause, for a planned database restart) keeps the
	// database-down and pool alerts quiet: its clients wait on purpose, and the database may be
	// down on purpose.
	const unlessPaused = "\nunless on (job, instance) (pgsidecar_proxy_paused == 1)"
	sidecar := RuleGroup{Name: "pgsidecar.alerts", Rules: []Rule{
		c.alert("PgSidecarQueryErrorRateHigh", "warning", c.ForMedium, fmt.Sprintf(`
pool:pgsidecar_query_error_ratio:rate5m > %s
and
pool:pgsidecar_queries:rate5m > %s`, num(c.ErrorRatio), minRate),
			"Too many queries through the pool fail.",
			fmt.Sprintf(`{{ $value | humanizePercentage }} of the queries of pool {{ $labels.pool }} on {{ $labels.instance }} failed over the last 5 minutes (threshold %s).`, pct(c.ErrorRatio))),
		c.alert("PgSidecarQueryLatencyHigh", "warning", c.ForMedium, fmt.Sprintf(`
pool:pgsidecar_query_duration_seconds:mean5m > %s
and
pool:pgsidecar_queries:rate5m > %s`, num(c.AvgLatencySeconds), minRate),
			"Queries through the pool are slow on average.",
			fmt.Sprintf(`Queries of pool {{ $labels.pool }} on {{ $labels.instance }} took {{ $value | humanizeDuration }} on average over the last 5 minutes (threshold %ss).`, num(c.AvgLatencySeconds))),
		c.alert("PgSidecarPoolUtilizationHigh", "warning", c.ForMedium,
			fmt.Sprintf(`pool:pgsidecar_pool_utilization:ratio > %s`, num(c.PoolUtilization))+unlessPaused,
			"Most connections of the pool are in use.",
			fmt.Sprintf(`Pool {{ $labels.pool }} on {{ $labels.instance }} has {{ $value | humanizePercentage }} of its maximum connections in use (threshold %s).`, pct(c.PoolUtilization))),
		c.alert("PgSidecarPoolSaturated", "warning", c.ForMedium,
			`min_over_time(pgsidecar_pool_pending_acquires[5m]) > 0`+unlessPaused,
			"Clients keep waiting for a pool connection.",
			`Pool {{ $labels.pool }} on {{ $labels.instance }} has had at least {{ $value }} callers waiting for a connection at every scrape for 5 minutes: the pool is too small for its load, or connections are held too long.`),
		c.alert("PgSidecarPoolAcquireTimeouts", "warning", 0,
			`increase(pgsidecar_pool_acquire_timeouts_total[5m]) > 0`+unlessPaused,
			"Callers gave up waiting for a pool connection.",
			`{{ $value | humanize }} acquires of pool {{ $labels.pool }} on {{ $labels.instance }} timed out in the last 5 minutes.`),
		// A pause has no end of its own: its clients wait for the resume. One left paused (a
		// restart script that failed before its resume) is found here, not by the app's users.
		c.alert("PgSidecarProxyPausedLong", "warning", c.ForLong,
			`pgsidecar_proxy_paused_clients and on (job, instance) (pgsidecar_proxy_paused == 1)`,
			"The proxy has been paused for a long time.",
			fmt.Sprintf(`The proxy on {{ $labels.instance }} has been paused for %s; {{ $value }} clients wait for POST /api/proxy/resume.`, dur(c.ForLong))),
		c.alert("PgSidecarHealthCheckFailing", "critical", c.ForShort,
			`pgsidecar_health_check_up == 0`+unlessPaused,
			"The sidecar's health checks against PostgreSQL fail.",
			`Health checks of pool {{ $labels.pool }} on {{ $labels.instance }} have failed for at least `+dur(c.ForShort)+`.`),
		c.alert("PgSidecarSlowQueries", "warning", 0,
			fmt.Sprintf(`increase(pgsidecar_slow_queries_total[10m]) > %s`, num(c.SlowQueriesPer10m)),
			"Many queries exceed the slow query threshold.",
			fmt.Sprintf(`{{ $value | humanize }} slow queries ran through pool {{ $labels.pool }} on {{ $labels.instance }} in the last 10 minutes (threshold %s).`, num(c.SlowQueriesPer10m))),
		c.alert("PgSidecarDown", "critical", c.ForMedium,
			fmt.Sprintf(`up{%s} == 0`, c.SidecarSelector),
			"Prometheus cannot scrape a pgsidecar.",
			`{{ $labels.instance }} of job {{ $labels.job }} has not answered scrapes for `+dur(c.ForMedium)+`.`),
		c.alert("PgSidecarProxyClientWaitHigh", "warning", c.ForMedium, fmt.Sprintf(`
histogram_quantile(0.99, rate(pgsidecar_proxy_client_wait_seconds_bucket[5m])) > %s
and
rate(pgsidecar_proxy_client_wait_seconds_count[5m]) > %s`+unlessPaused, num(c.ProxyClientWaitSeconds), minRate),
			"Proxy clients wait too long for a server connection.",
			fmt.Sprintf(`1%% of the waits of proxy clients of pool {{ $labels.pool }} on {{ $labels.instance }} for a server connection took longer than {{ $value | humanizeDuration }} over the last 5 minutes (threshold %ss).`, num(c.ProxyClientWaitSeconds))),
		c.alert("PgSidecarStatementLatencyRegression", "warning", c.ForLong, fmt.Sprintf(`
(
  histogram_quantile(0.99, sum by (cluster, job, pool, fingerprint, le) (rate(pgsidecar_statement_duration_seconds_bucket[30m])))
  >
  %[1]s * histogram_quantile(0.99, sum by (cluster, job, pool, fingerprint, le) (rate(pgsidecar_statement_duration_seconds_bucket[30m] offset 1d)))
) > %[2]s
and
sum by (cluster, job, pool, fingerprint) (rate(pgsidecar_statement_duration_seconds_count[30m])) > %[3]s
and
sum by (cluster, job, pool, fingerprint) (rate(pgsidecar_statement_duration_seconds_count[30m] offset 1d)) > %[3]s`,
			num(c.StatementLatencyFactor), num(c.StatementLatencyMinSeconds), minRate),
			"A statement got much slower than it was a day ago.",
			fmt.Sprintf(`Statement {{ $labels.fingerprint }} of pool {{ $labels.pool }} (job {{ $labels.job }}) has a p99 of {{ $value | humanizeDuration }} over the last 30 minutes, more than %s times its p99 at the same time yesterday.`+
				`{{ with printf "max by (text) (pgsidecar_statement_info{job=%%q, pool=%%q, fingerprint=%%q})" $labels.job $labels.pool $labels.fingerprint | query }} Text: {{ (. | first).Labels.text }}{{ end }}`,
				num(c.StatementLatencyFactor))),
		c.alert("PgSidecarCollectorFailing", "warning", c.ForLong,
			`pg_scrape_collector_success == 0 unless on (job, instance) (pg_up == 0)`,
			"A database collector of the sidecar fails.",
			`Collector {{ $labels.collector }} on {{ $labels.instance }} has failed at every scrape for `+dur(c.ForLong)+` while the database is up.`),
		c.alert("PgSidecarCollectorSeriesBudgetExceeded", "warning", c.ForMedium,
			`pgsidecar_collector_series_over_budget > 0`,
			"The sidecar's collection is over its series budget and leaves statistics out.",
			`The collectors of {{ $labels.instance }} have read more series than --collector.max-series for `+dur(c.ForMedium)+`: {{ $value | humanize }} series (whole tables, then whole metric families) are left out of each scrape.`),
		c.alert("PgSidecarReloadFailed", "warning", c.ForMedium,
			`pgsidecar_config_last_reload_successful == 0`,
			"The sidecar's last reload failed and it keeps its previous configuration.",
			`The last reload (SIGHUP or POST /-/reload) of {{ $labels.instance }} failed for `+dur(c.ForMedium)+`: a queries file, users file, TLS certificate or DATABASE_URL_FILE could not be used, so what was rotated has not been taken. Its log says which and why.`),
	}}

	pg := RuleGroup{Name: "pgsidecar-postgresql.alerts", Rules: []Rule{
		c.alert("PgSidecarDatabaseDown", "critical", c.ForShort,
			`pg_up == 0`+unlessPaused,
			"PostgreSQL is unreachable from the sidecar.",
			`Pool {{ $labels.pool }} on {{ $labels.instance }} cannot reach PostgreSQL: pg_up has been 0 for `+dur(c.ForShort)+`.`),
		c.alert("PgSidecarServerConnectionsOvercommitted", "warning", c.ForLong, fmt.Sprintf(`
sum by (cluster) (max_over_time(pgsidecar_connection_ceiling[10m]))
/ on (cluster)
max by (cluster) (max_over_time(pgsidecar_server_connections_allowed[10m]))
> %s`, num(c.ServerConnectionUtilization)),
			"The sidecars together may open most of the connections the server allows.",
			fmt.Sprintf(`The connection ceilings of all sidecars`+ofCluster+` (pools, collectors, election sessions) add up to {{ $value | humanizePercentage }} of the connections the server allows, max_connections less the reserved ones (threshold %s); when they all fill up, the server refuses new connections.`, pct(c.ServerConnectionUtilization))),
		c.alert("PgSidecarCollectorLeaderMissing", "warning", c.ForMedium, `
max by (cluster) (pgsidecar_collector_leader) == 0
and on (cluster)
max by (cluster) (pg_up) == 1`,
			"No sidecar collects the server's statistics.",
			`The sidecars`+ofCluster+` reach PostgreSQL, but none has run the server-wide collectors for `+dur(c.ForMedium)+`: the pg_* statistics are missing, and the alerts on them are blind.`),
		c.alert("PgSidecarServerConnectionUtilizationHigh", "warning", c.ForMedium,
			fmt.Sprintf(`max by (cluster) (pg_server_connection_utilization_ratio) > %s`, num(c.ServerConnectionUtilization)),
			"Most of the server's connections are in use.",
			fmt.Sprintf(`Client backends`+ofCluster+` use {{ $value | humanizePercentage }} of max_connections (threshold %s).`, pct(c.ServerConnectionUtilization))),
		c.alert("PgSidecarLongRunningTransaction", "warning", c.ForShort,
			fmt.Sprintf(`max by (cluster, datname) (pg_stat_activity_oldest_xact_seconds) > %s`, num(c.LongTransactionSeconds)),
			"A transaction has been open for a long time.",
			fmt.Sprintf(`The oldest transaction in database {{ $labels.datname }}`+ofCluster+` has been open for {{ $value | humanizeDuration }} (threshold %ss); it holds back vacuum and may hold locks.`, num(c.LongTransactionSeconds))),
		c.alert("PgSidecarIdleInTransaction", "warning", c.ForShort,
			fmt.Sprintf(`max by (cluster, datname) (pg_stat_activity_idle_in_transaction_max_seconds) > %s`, num(c.IdleInTransactionSeconds)),
			"A session sits idle inside an open transaction.",
			fmt.Sprintf(`A session in database {{ $labels.datname }}`+ofCluster+` has been idle in transaction for {{ $value | humanizeDuration }} (threshold %ss).`, num(c.IdleInTransactionSeconds))),
		c.alert("PgSidecarDeadlocks", "warning", 0,
			`max by (cluster, datname) (increase(pg_stat_database_deadlocks[10m])) > 0`,
			"PostgreSQL detected deadlocks.",
			`{{ $value | humanize }} deadlocks in database {{ $labels.datname }}`+ofCluster+` in the last 10 minutes.`),
		c.alert("PgSidecarCacheHitRatioLow", "info", c.ForLong, fmt.Sprintf(`
max by (cluster, datname) (rate(pg_stat_database_blks_hit[30m]))
/
(
  max by (cluster, datname) (rate(pg_stat_database_blks_hit[30m]))
  +
  max by (cluster, datname) (rate(pg_stat_database_blks_read[30m]))
)
< %s
and
max by (cluster, datname) (rate(pg_stat_database_blks_hit[30m]) + rate(pg_stat_database_blks_read[30m])) > %s`,
			num(c.CacheHitRatio), num(c.MinBlockRate)),
			"Few block reads are served from the buffer cache.",
			fmt.Sprintf(`Only {{ $value | humanizePercentage }} of block reads in database {{ $labels.datname }}`+ofCluster+` hit shared buffers over the last 30 minutes (threshold %s).`, pct(c.CacheHitRatio))),
		c.alert("PgSidecarReplicationLagHigh", "warning", c.ForMedium,
			fmt.Sprintf(`max by (cluster) (pg_replication_lag_seconds) > %s`, num(c.ReplicationLagSeconds)),
			"A replica lags behind its primary.",
			fmt.Sprintf(`The replica`+ofCluster+` has not replayed the primary's latest changes for {{ $value | humanizeDuration }} (threshold %ss): reads there are stale, and a failover would lose or wait for them.`, num(c.ReplicationLagSeconds))),
		c.alert("PgSidecarReplicationSlotInactive", "warning", c.ForLong, fmt.Sprintf(`
max by (cluster, slot_name) (pg_replication_slots_pg_wal_lsn_diff) > %s
and on (cluster, slot_name)
max by (cluster, slot_name) (pg_replication_slots_active) == 0`, num(c.InactiveSlotRetainedBytes)),
			"An inactive replication slot retains WAL.",
			fmt.Sprintf(`Replication slot {{ $labels.slot_name }}`+ofCluster+` has no consumer and holds back {{ $value | humanize1024 }}B of WAL (threshold %sB); the WAL disk fills up until the consumer returns or the slot is dropped.`, humanBytes(c.InactiveSlotRetainedBytes))),
		c.alert("PgSidecarDeadTuplesHigh", "warning", 30*time.Minute, fmt.Sprintf(`
max by (cluster, datname, schemaname, relname) (pg_stat_user_tables_n_dead_tup)
/
(
  max by (cluster, datname, schemaname, relname) (pg_stat_user_tables_n_live_tup)
  +
  max by (cluster, datname, schemaname, relname) (pg_stat_user_tables_n_dead_tup)
)
> %s
and
max by (cluster, datname, schemaname, relname) (pg_stat_user_tables_n_dead_tup) > %s`, num(c.DeadTupleRatio), num(c.MinDeadTuples)),
			"Dead tuples pile up in a table: autovacuum is not keeping up.",
			fmt.Sprintf(`{{ $value | humanizePercentage }} of the tuples of table {{ $labels.schemaname }}.{{ $labels.relname }} in database {{ $labels.datname }}`+ofCluster+` are dead (threshold %s, at least %s dead tuples) and have been for 30 minutes.`, pct(c.DeadTupleRatio), num(c.MinDeadTuples))),
		c.alert("PgSidecarCheckpointsRequested", "info", c.ForLong, fmt.Sprintf(`
max by (cluster) (%[1]s)
/
(
  max by (cluster) (%[1]s)
  +
  max by (cluster) (%[2]s)
)
> %[3]s
and
max by (cluster) (%[1]s) >= %[4]s`, checkpoints("requested", "increase", "1h"), checkpoints("timed", "increase", "1h"),
			num(c.RequestedCheckpointRatio), num(c.MinRequestedCheckpoints)),
			"Checkpoints are requested more often than timed.",
			fmt.Sprintf(`{{ $value | humanizePercentage }} of the checkpoints of the server`+ofCluster+` in the last hour were requested (WAL filled max_wal_size, or CHECKPOINT was run) rather than timed (threshold %s).`, pct(c.RequestedCheckpointRatio))),
		c.alert("PgSidecarExporterScrapeErrors", "warning", c.ForMedium, fmt.Sprintf(`
avg_over_time(pg_exporter_last_scrape_error[30m]) > %s
unless on (job, instance)
(pg_up == 0)`, num(c.ScrapeErrorRatio)),
			"The sidecar's scrapes of PostgreSQL statistics have errors.",
			fmt.Sprintf(`{{ $value | humanizePercentage }} of the scrapes of {{ $labels.instance }} over the last 30 minutes had an error (threshold %s) while the database was up; some statistics are missing from them.`, pct(c.ScrapeErrorRatio))),
	}}

	sloAlerts := RuleGroup{Name: "pgsidecar-slo.alerts", Rules: []Rule{
		c.alert("PgSidecarQueryErrorBudgetBurnFast", "critical", 2*time.Minute, burn("critical"),
			"Query errors are burning the error budget fast.",
			fmt.Sprintf(`Pool {{ $labels.pool }} of job {{ $labels.job }} fails {{ $value | humanizePercentage }} of its queries, which would spend the error budget of a %s objective within days (%s).`, pct(c.ErrorObjective), burnWindows("critical"))),
		c.alert("PgSidecarQueryErrorBudgetBurnSlow", "warning", c.ForLong, burn("warning"),
			"Query errors are steadily burning the error budget.",
			fmt.Sprintf(`Pool {{ $labels.pool }} of job {{ $labels.job }} fails {{ $value | humanizePercentage }} of its queries, more than a %s objective allows over time (%s).`, pct(c.ErrorObjective), burnWindows("warning"))),
	}}
	bridgeLeaderChanges(pg.Rules, c.LeaderChangeWindow)
	return c.scope(RuleFile{Groups: []RuleGroup{recording, slo, sidecar, pg, sloAlerts}})
}

// RulesYAML renders the rule file with a header naming its source.
func (c Config) RulesYAML() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# pgsidecar recording and alerting rules.\n")
	b.WriteString("# Generated by mixin/ (thresholds in internal/thresholds, documented in alerts/README.md):\n")
	b.WriteString("# change them there and run `make mixin`.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c.Rules()); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
