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

// BenchmarkRecordStatement is the proxy's path (Identify over the whole text of each message,
// then RecordStatement at its answer), for a text already seen, without a comment and with a
// sqlcommenter comment whose traceparent is new each time (as each request sends it). Neither
// allocates: the exemplars that do are a few per bucket per exemplarInterval.
//
//	go test -run '^$' -bench RecordStatement -benchmem -count 6 ./pool/
func BenchmarkRecordStatement(b *testing.B) {
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	comments := make([][]byte, 1000)
	for i := range comments {
		comments[i] = fmt.Appendf(nil, "%s /*application='bench',traceparent='00-%032x-%016x-01'*/", sql, i+1, i+1)
	}
	for _, tc := range []struct {
		name string
		sql  func(i int) []byte
	}{
		{"comment=none", func(int) []byte { return []byte(sql) }},
		{"comment=traceparent", func(i int) []byte { return comments[i%len(comments)] }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := testConfig(b)
			cfg.StatementsTop = 50
			m, err := New(cfg, WithLogger(discardLogger()), WithRegisterer(prometheus.NewRegistry()))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			texts := make([][]byte, len(comments))
			for i := range texts {
				texts[i] = tc.sql(i)
			}
			m.RecordStatement(OpSelect, sql, m.Identify(OpSelect, texts[0]), time.Millisecond, nil)
			b.ReportAllocs()
			i := 0
			cpu := processCPU()
			for b.Loop() {
				text := texts[i%len(texts)]
				id := m.Identify(OpSelect, text)
				m.RecordStatement(OpSelect, sql, id, 300*time.Microsecond, nil)
				i++
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
