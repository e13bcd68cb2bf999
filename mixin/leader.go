package mixin

import (
	"regexp"
	"strings"
	"time"
)

// With --collector.scope=auto one sidecar per server exports the server-wide pg_* series, and
// when another takes over they move to its instance: Prometheus marks the old leader's series
// stale at its first scrape without them, and the new leader's appear at its first scrape as
// leader, up to an election interval and a scrape interval later. An alert reading such a
// series as an instant vector would see nothing in between: a firing alert would resolve and
// fire again, a pending one start its `for` again. The alerts therefore read them with
// last_over_time over Config.LeaderChangeWindow, which bridges the gap and still follows a
// value that changes at once (a VACUUM, a transaction that ends); their `max by (cluster, ...)`
// aggregations already give one answer whichever sidecar leads.

// pgSelector matches a pg_* series name with its optional label matchers.
var pgSelector = regexp.MustCompile(`\bpg_[a-z0-9_]+(\{[^{}]*\})?`)

// perSidecar reports whether every sidecar exports the series itself (pg_up, the exporter's
// and collectors' own), so that a leader change does not move it.
func perSidecar(name string) bool {
	return name == "pg_up" || strings.HasPrefix(name, "pg_exporter_") || strings.HasPrefix(name, "pg_scrape_collector_")
}

// bridgeLeaderChanges rewrites, in the alerting rules, every instant selector of a server-wide
// pg_* series as last_over_time over window. Range selectors (rate, increase, ...) already
// span the gap and are left alone.
func bridgeLeaderChanges(rules []Rule, window time.Duration) {
	if window <= 0 {
		return
	}
	for i := range rules {
		if rules[i].Alert != "" {
			rules[i].Expr = bridgeExpr(rules[i].Expr, dur(window))
		}
	}
}

func bridgeExpr(expr, window string) string {
	var b strings.Builder
	last := 0
	for _, m := range pgSelector.FindAllStringSubmatchIndex(expr, -1) {
		start, end := m[0], m[1]
		name := expr[start:end]
		if m[2] >= 0 {
			name = expr[start:m[2]]
		}
		rest := strings.TrimLeft(expr[end:], " ")
		if perSidecar(name) || strings.HasPrefix(rest, "[") || insideQuotes(expr[:start]) {
			continue
		}
		b.WriteString(expr[last:start])
		b.WriteString("last_over_time(" + expr[start:end] + "[" + window + "])")
		last = end
	}
	b.WriteString(expr[last:])
	return b.String()
}

// insideQuotes reports whether a PromQL text ends inside a double-quoted string.
func insideQuotes(before string) bool {
	in := false
	for i := 0; i < len(before); i++ {
		switch before[i] {
		case '\\':
			i++
		case '"':
			in = !in
		}
	}
	return in
}
