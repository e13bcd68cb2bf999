package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
)

// TestStatementsMeasuredThroughTheProxy: N executions of one statement by proxied clients (two
// sessions, so two server connections; simple queries with different constants, spacing and
// case, and named prepared statements whose text repeats) give one statement histogram of
// count N, and its errors are counted by SQLSTATE.
func TestStatementsMeasuredThroughTheProxy(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	n := 0
	for c := range 2 {
		conn := h.connect(t, ctx, h.superURL())
		for i := range 6 {
			var err error
			switch i % 3 {
			case 0:
				_, err = conn.Exec(ctx, fmt.Sprintf("SELECT %d::int + 1 AS proxied_statement", c*10+i), pgx.QueryExecModeSimpleProtocol)
			case 1:
				_, err = conn.Exec(ctx, fmt.Sprintf("select   %d :: INT+1  AS PROXIED_STATEMENT", i), pgx.QueryExecModeSimpleProtocol)
			default:
				_, err = conn.Exec(ctx, "SELECT $1::int + 1 AS proxied_statement", i) // a named prepared statement
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if _, err := conn.Exec(ctx, "SELECT 1/0 AS proxied_error", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
	}
	fp, _, err := fingerprint.Of("SELECT 1::int + 1 AS proxied_statement")
	if err != nil {
		t.Fatal(err)
	}
	if got := h.metric(t, "pgsidecar_statement_duration_seconds", map[string]string{"fingerprint": fp.String(), "operation": "select"}); int(got) != n {
		t.Errorf("statement histogram count = %v, want %d", got, n)
	}
	bad, _, _ := fingerprint.Of("SELECT 1/0 AS proxied_error")
	if got := h.metric(t, "pgsidecar_statement_errors_total", map[string]string{"fingerprint": bad.String(), "sqlstate": "22012"}); got != 2 {
		t.Errorf("statement errors = %v, want 2", got)
	}
}
