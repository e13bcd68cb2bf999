package proxy

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
	"github.com/pgsidecar/pgsidecar/pool"
)

// traceparent is a sampled W3C traceparent of trace id n (32 hex digits).
func traceparent(n int, flags string) string {
	return fmt.Sprintf("00-%032x-00f067aa0ba902b7-%s", n+0x4bf92f35, flags)
}

func traceID(n int) string { return fmt.Sprintf("%032x", n+0x4bf92f35) }

// TestExemplarsFromSQLCommenter: statements that carry a sampled traceparent in a sqlcommenter
// comment, simple or prepared (a new text per request, as sqlcommenter makes them), are
// measured under the fingerprint of the text without the comment, with an exemplar of their
// trace in the statement and query histograms; an unsampled one gives none; and the prepared
// texts that differ only in their comment share one server-side statement.
func TestExemplarsFromSQLCommenter(t *testing.T) {
	t.Run("transaction", func(t *testing.T) { testExemplarsFromSQLCommenter(t, newTxHarness(t, 2, nil)) })
	t.Run("session", func(t *testing.T) {
		testExemplarsFromSQLCommenter(t, newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = PoolSession }))
	})
}

func testExemplarsFromSQLCommenter(t *testing.T, h *harness) {
	ctx := ctxTimeout(t, 30*time.Second)
	conn := h.connect(t, ctx, h.superURL())
	comment := func(n int, flags string) string {
		return fmt.Sprintf(" /*application='orders',traceparent='%s'*/", traceparent(n, flags))
	}
	if _, err := conn.Exec(ctx, "SELECT 1 AS exemplar_simple"+comment(1, "01"), pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := conn.Exec(ctx, "SELECT $1::int AS exemplar_prepared"+comment(10+i, "01"), i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 2 AS exemplar_unsampled"+comment(20, "00"), pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}

	for sql, want := range map[string][]string{
		"SELECT 1 AS exemplar_simple": {traceID(1)},
		// The first execution's, and a later one's only where it fell in another bucket: one
		// exemplar per bucket per interval.
		"SELECT $1::int AS exemplar_prepared": {traceID(10), traceID(11), traceID(12)},
		"SELECT 2 AS exemplar_unsampled":      nil,
	} {
		fp, _, err := fingerprint.Of(sql)
		if err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{"fingerprint": fp.String()}
		if n := h.metric(t, "pgsidecar_statement_duration_seconds", labels); n == 0 {
			t.Errorf("%q: not measured under fingerprint %s", sql, fp)
		}
		got := testutil.ExemplarTraces(t, h.reg, "pgsidecar_statement_duration_seconds", labels)
		if len(want) == 0 && len(got) != 0 || len(want) > 0 && !slices.Contains(got, want[0]) ||
			slices.ContainsFunc(got, func(id string) bool { return !slices.Contains(want, id) }) {
			t.Errorf("%q: exemplar traces %v, want the first of %v and no other trace", sql, got, want)
		}
	}
	if got := testutil.ExemplarTraces(t, h.reg, "pgsidecar_query_duration_seconds", map[string]string{"operation": "select"}); !slices.Contains(got, traceID(1)) || slices.Contains(got, traceID(20)) {
		t.Errorf("query histogram exemplar traces %v, want %s and not %s", got, traceID(1), traceID(20))
	}
	if h.srv.cfg.PoolMode != PoolTransaction {
		return
	}
	h.srv.stmts.mu.Lock()
	n := 0
	for key := range h.srv.stmts.byKey {
		if slices.Contains([]byte(key), '/') {
			t.Errorf("registry key %q keeps the comment", key)
		}
		n++
	}
	h.srv.stmts.mu.Unlock()
	if n != 1 {
		t.Errorf("%d statements in the registry, want 1 for the texts that differ only in their comment", n)
	}
}
