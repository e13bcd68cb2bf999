package pool

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRecordQuery is what measuring one query costs the pool (library and proxy paths
// both end in RecordQuery), with statement measurement off (STATEMENTS_TOP=0) and on: for a
// statement already seen (a prepared statement, or a simple query repeated as is) and for a
// text never seen (a simple query with new constants each time, as pgbench -S -M simple sends:
// it is fingerprinted again). Compare with benchstat:
//
//	go test -run '^$' -bench RecordQuery -count 6 ./pool/
func BenchmarkRecordQuery(b *testing.B) {
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	texts := make([]string, 100_000)
	for i := range texts {
		texts[i] = fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d", i)
	}
	for _, tc := range []struct {
		name string
		top  int
		sql  func(i int) string
	}{
		{"text=seen/statements=off", 0, func(int) string { return sql }},
		{"text=seen/statements=on", 50, func(int) string { return sql }},
		{"text=new/statements=off", 0, func(i int) string { return texts[i%len(texts)] }},
		{"text=new/statements=on", 50, func(i int) string { return texts[i%len(texts)] }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := testConfig(b)
			cfg.StatementsTop = tc.top
			m, err := New(cfg, WithLogger(discardLogger()), WithRegisterer(prometheus.NewRegistry()))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			m.RecordQuery(OpSelect, sql, time.Millisecond, nil)
			b.ReportAllocs()
			i := 0
			cpu := processCPU()
			for b.Loop() {
				m.RecordQuery(OpSelect, tc.sql(i), 300*time.Microsecond, nil)
				i++
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the CPU time this process has used: on a shared machine a benchmark's wall
// time counts the waits for a core too.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLibraryStatements is the library path end to end: a query through the pool's
// pgxpool (pgx's tracer, then RecordQuery), statement measurement off and on. cpu-ns/op is the
// whole process's CPU per query, the application's pgx included.
//
//	go test -run '^$' -bench LibraryStatements -benchtime 20000x -count 1 ./pool/
func BenchmarkLibraryStatements(b *testing.B) {
	for _, top := range []int{0, 50} {
		b.Run(fmt.Sprintf("statements=%d", top), func(b *testing.B) {
			cfg := testConfig(b)
			cfg.MaxConns, cfg.MinConns = 2, 2
			cfg.StatementsTop = top
			m, err := New(cfg, WithLogger(discardLogger()), WithRegisterer(prometheus.NewRegistry()))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			ctx := b.Context()
			var v int
			for range 3 {
				if err := m.Pool().QueryRow(ctx, "SELECT $1::int + 1", 1).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				if err := m.Pool().QueryRow(ctx, "SELECT $1::int + 1", 1).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
