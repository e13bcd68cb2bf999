package pool

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkSelect1 compares the instrumented pool with a plain pgxpool of the same size on
// SELECT 1, from 1 and 8 goroutines. Compare the two with benchstat (see BENCHMARKS.md).
func BenchmarkSelect1(b *testing.B) {
	for _, kind := range []string{"plain", "instrumented"} {
		for _, g := range []int{1, 8} {
			b.Run(fmt.Sprintf("pool=%s/goroutines=%d", kind, g), func(b *testing.B) {
				p := benchPool(b, kind)
				ctx := context.Background()
				// Warm every connection so the loop measures queries, not connects.
				for range 3 {
					if _, err := p.Exec(ctx, "SELECT 1"); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				per := b.N / g
				for w := range g {
					n := per
					if w == 0 {
						n += b.N % g
					}
					wg.Go(func() {
						var v int
						for range n {
							if err := p.QueryRow(ctx, "SELECT 1").Scan(&v); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
			})
		}
	}
}

func benchPool(b *testing.B, kind string) *pgxpool.Pool {
	cfg := testConfig(b)
	cfg.MaxConns, cfg.MinConns = 8, 8
	if kind == "instrumented" {
		m, err := New(cfg, WithLogger(discardLogger()), WithRegisterer(prometheus.NewRegistry()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(m.Close)
		return m.Pool()
	}
	pc, err := cfg.pgxConfig()
	if err != nil {
		b.Fatal(err)
	}
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

// BenchmarkTracerOverhead is the instrumentation's own cost per query, without the network:
// acquire start/end and query start/end, as pgxpool and pgx call them for one pool.Query. Set
// against a query's round trip (BenchmarkSelect1) it gives the throughput cost.
func BenchmarkTracerOverhead(b *testing.B) {
	cfg := testConfig(b)
	m, err := New(cfg, WithLogger(discardLogger()), WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	tr := m.tracer
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			actx := tr.TraceAcquireStart(ctx, nil, pgxpool.TraceAcquireStartData{})
			tr.TraceAcquireEnd(actx, nil, pgxpool.TraceAcquireEndData{})
			qctx := tr.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "SELECT 1"})
			tr.TraceQueryEnd(qctx, nil, pgx.TraceQueryEndData{})
		}
	})
}

// BenchmarkShownSQL measures what a slow query pays to have its text normalised before it is
// logged and listed: a typical statement of about 200 bytes. Only slow queries pay it.
func BenchmarkShownSQL(b *testing.B) {
	const sql = "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id " +
		"WHERE o.created_at > '2026-01-01' AND o.status IN ('paid', 'shipped') AND o.total > 100.50 " +
		"ORDER BY o.created_at DESC LIMIT 50"
	b.SetBytes(int64(len(sql)))
	b.ReportAllocs()
	for b.Loop() {
		if s := shownSQL(OpSelect, sql, false); len(s) == 0 {
			b.Fatal("empty")
		}
	}
}
