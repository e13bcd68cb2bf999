package proxy

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestSimpleAndExtendedQueries(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	var n int
	if err := c.QueryRow(ctx, "select 1 + $1::int", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("extended query: %d, %v", n, err)
	}
	if err := c.QueryRow(ctx, "select 40 + 2", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 42 {
		t.Fatalf("simple query: %d, %v", n, err)
	}
}
