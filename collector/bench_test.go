package collector

import (
	"context"
	"testing"
	"time"
)

// BenchmarkCollect measures one whole collection with the default collectors and the shipped
// queries.yaml, on one connection to the test server (most of the time is the server's).
func BenchmarkCollect(b *testing.B) {
	e := newEnv(b, "", Config{QueriesFile: "../" + DefaultQueriesFile})
	ctx := context.Background()
	warm := e.exp.collect(ctx) // open the connection and fill the caches
	if len(warm.metrics) == 0 {
		b.Fatal("no metrics")
	}
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	for b.Loop() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n = len(e.exp.collect(cctx).metrics)
		cancel()
	}
	b.ReportMetric(float64(n), "series/op")
}

// BenchmarkCollectBuiltin is BenchmarkCollect without custom queries.
func BenchmarkCollectBuiltin(b *testing.B) {
	e := newEnv(b, "", Config{})
	ctx := context.Background()
	e.exp.collect(ctx)
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	for b.Loop() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n = len(e.exp.collect(cctx).metrics)
		cancel()
	}
	b.ReportMetric(float64(n), "series/op")
}
