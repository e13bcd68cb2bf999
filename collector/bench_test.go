package collector

import (
	"context"
	"testing"
	"time"
)

// BenchmarkCollect measures one whole collection with the default collectors and the shipped
// queries.yaml, on one connection to the test server (most of the time is the server's).
func BenchmarkCollect(b *testing.B) {
	benchCollect(b, func(c *Config) { c.QueriesFile = "../" + DefaultQueriesFile })
}

// BenchmarkCollectBuiltin is BenchmarkCollect without custom queries.
func BenchmarkCollectBuiltin(b *testing.B) { benchCollect(b, nil) }

func benchCollect(b *testing.B, tweak func(*Config)) {
	e := newEnv(b, "", tweak)
	ctx := context.Background()
	if warm := e.exp.collect(ctx, newRun()); len(warm.metrics) == 0 { // opens the connection, fills caches
		b.Fatal("no metrics")
	}
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	for b.Loop() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n = len(e.exp.collect(cctx, newRun()).metrics)
		cancel()
	}
	b.ReportMetric(float64(n), "series/op")
}
