package mixin

import "strings"

// statementDashboard is "Statement detail": one fingerprint, the sidecar's latency and errors
// beside the server's figures of the same statement (pg_stat_statements, joined by query id
// through pgsidecar_statement_queryid_info), across databases.
func (c Config) statementDashboard() *Dashboard {
	const sel = `job=~"$job", instance=~"$instance", fingerprint=~"$fingerprint"`
	const ri = "$__rate_interval"
	// join keeps the pg_stat_statements rows of the fingerprint's query ids.
	const join = ` * on (instance, datname, queryid) group_left () pgsidecar_statement_queryid_info{` + sel + `}`
	s := func(format string) string {
		return strings.NewReplacer("JOIN", join, "SEL", sel, "RI", ri).Replace(format)
	}
	// perCall is a pg_stat_statements counter per call of the statement, by database.
	perCall := func(metric string) string {
		return s(`sum by (datname) (rate(` + metric + `{job=~"$job", instance=~"$instance"}[RI])JOIN) / sum by (datname) (rate(pg_stat_statements_calls_total{job=~"$job", instance=~"$instance"}[RI])JOIN)`)
	}
	fp := queryVar("fingerprint", "Fingerprint", "pgsidecar_statement_info", `job=~"$job", instance=~"$instance"`)
	fp.IncludeAll, fp.Multi, fp.AllValue = false, false, ""
	fp.Current = map[string]any{}
	b := newDashboard("pgsidecar-statement", "pgsidecar / Statement detail",
		"One statement by fingerprint: pgsidecar's latency percentiles (with exemplars), calls and errors beside the server's calls, mean time, blocks and rows per call from pg_stat_statements, per database.",
		queryVar("job", "Job", "pgsidecar_statement_info", ""),
		queryVar("instance", "Instance", "pgsidecar_statement_info", `job=~"$job"`),
		fp,
	)
	b.row("The statement")
	b.add(table("Text", "The statement's normalised text (pgsidecar_statement_info) and the pg_stat_statements query ids it joins, per database (pgsidecar_statement_queryid_info; needs --collector.statements).", "none",
		q{s(`max by (fingerprint, text) (pgsidecar_statement_info{SEL})`), ""},
		q{s(`max by (fingerprint, datname, queryid) (pgsidecar_statement_queryid_info{SEL})`), ""}), 24, 6)

	b.row("Measured by pgsidecar")
	b.add(timeseries("Latency", "50th and 99th percentile of the statement's duration as the sidecar measured it (library and proxied traffic). Exemplars (dots) link to the trace of an execution that sent a sampled traceparent.", "s",
		q{s(`histogram_quantile(0.5, sum by (le) (rate(pgsidecar_statement_duration_seconds_bucket{SEL}[RI])))`), "p50"},
		q{s(`histogram_quantile(0.99, sum by (le) (rate(pgsidecar_statement_duration_seconds_bucket{SEL}[RI])))`), "p99"}).withExemplars(), 12, 8)
	b.add(timeseries("Calls and errors", "Executions per second, and those that failed, as the sidecar measured them.", "ops",
		q{s(`sum(rate(pgsidecar_statement_duration_seconds_count{SEL}[RI]))`), "calls"},
		q{s(`sum(rate(pgsidecar_statement_errors_total{SEL}[RI]))`), "errors"}), 6, 8)
	b.add(timeseries("Error ratio", "Failed executions over all executions of the statement.", "percentunit",
		q{s(`sum(rate(pgsidecar_statement_errors_total{SEL}[RI])) / sum(rate(pgsidecar_statement_duration_seconds_count{SEL}[RI]))`), "errors"}).ratio(), 6, 8)

	b.row("On the server (pg_stat_statements, by database)")
	b.add(timeseries("Server calls", "Calls per second of the statement's query ids, by database.", "ops",
		q{s(`sum by (datname) (rate(pg_stat_statements_calls_total{job=~"$job", instance=~"$instance"}[RI])JOIN)`), "{{datname}}"}), 8, 8)
	b.add(timeseries("Server mean time", "Execution time per call on the server (planning and the network left out), by database.", "s",
		q{perCall("pg_stat_statements_seconds_total"), "{{datname}}"}), 8, 8)
	b.add(timeseries("Rows per call", "Rows retrieved or affected per call, by database.", "short",
		q{perCall("pg_stat_statements_rows_total"), "{{datname}}"}), 8, 8)
	b.add(timeseries("Shared blocks per call", "Shared buffer hits and blocks read from outside shared buffers (the page cache or disk) per call, by database.", "short",
		q{perCall("pg_stat_statements_shared_blks_hit_total"), "hit {{datname}}"},
		q{perCall("pg_stat_statements_shared_blks_read_total"), "read {{datname}}"}), 12, 8)
	b.add(timeseries("Temporary blocks per call", "Temporary blocks read and written per call (sorts and hashes that spilled to disk), by database.", "short",
		q{perCall("pg_stat_statements_temp_blks_read_total"), "read {{datname}}"},
		q{perCall("pg_stat_statements_temp_blks_written_total"), "written {{datname}}"}), 12, 8)
	return b.d
}
