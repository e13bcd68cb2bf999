package pool

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
)

// statementSeries returns the fingerprints that have a pgsidecar_statement_duration_seconds
// series, with their sample counts, and the number of series of the three statement families.
func statementSeries(t testing.TB, g prometheus.Gatherer) (counts map[string]uint64, series int) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	counts = map[string]uint64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "pgsidecar_statement_duration_seconds":
			for _, m := range mf.GetMetric() {
				counts[label(m, "fingerprint")] = m.GetHistogram().GetSampleCount()
				if len(m.GetHistogram().GetBucket()) == 0 || m.GetHistogram().GetSchema() == 0 && len(m.GetHistogram().GetPositiveSpan()) == 0 && m.GetHistogram().GetZeroThreshold() == 0 {
					t.Errorf("statement histogram lacks classic or native buckets: %v", m.GetHistogram())
				}
			}
			series += len(mf.GetMetric())
		case "pgsidecar_statement_errors_total", "pgsidecar_statement_info":
			series += len(mf.GetMetric())
		}
	}
	return counts, series
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func fp(t testing.TB, sql string) string {
	t.Helper()
	f, _, err := fingerprint.Of(sql)
	if err != nil {
		t.Fatal(err)
	}
	return f.String()
}

// TestStatementHistogramThroughThePool: N executions of one statement through the library,
// with different constants, spacing and keyword case, give one series of count N; its errors
// are counted by SQLSTATE and its text is shown normalised.
func TestStatementHistogramThroughThePool(t *testing.T) {
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 30*time.Second)
	const n = 25
	for i := range n {
		sql := fmt.Sprintf("SELECT %d + 1 AS statement_test", i)
		if i%2 == 1 {
			sql = fmt.Sprintf("select   %d+1   as STATEMENT_TEST", i)
		}
		if _, err := h.m.Pool().Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if _, err := h.m.Pool().Exec(ctx, "SELECT 1/0 AS statement_test_error"); err == nil {
			t.Fatal("division by zero succeeded")
		}
	}
	want := fp(t, "SELECT 1 + 1 AS statement_test")
	counts, _ := statementSeries(t, h.reg)
	if counts[want] != n {
		t.Errorf("statement %s counted %d times, want %d (series: %v)", want, counts[want], n, counts)
	}
	bad := fp(t, "SELECT 1/0 AS statement_test_error")
	if got := h.metricValue(t, "pgsidecar_statement_errors_total", map[string]string{"fingerprint": bad, "sqlstate": "22012"}); got != 3 {
		t.Errorf("errors of %s by 22012 = %v, want 3", bad, got)
	}
	if got := h.metricValue(t, "pgsidecar_statement_info", map[string]string{"fingerprint": want, "text": "SELECT $1 + $2 AS statement_test"}); got != 1 {
		t.Errorf("no info series with the normalised text for %s", want)
	}
	var found bool
	for _, s := range h.m.Statements() {
		if s.Fingerprint == want {
			found = true
			if s.Calls != n || s.Operation != "select" || s.Errors != 0 || s.TotalSeconds <= 0 || s.P99 <= 0 || s.WindowCalls != n {
				t.Errorf("Statements() entry: %+v", s)
			}
		}
		if s.Fingerprint == bad && (s.Errors != 3 || s.ErrorsByState["22012"] != 3) {
			t.Errorf("Statements() failing entry: %+v", s)
		}
	}
	if !found {
		t.Errorf("Statements() lacks %s: %+v", want, h.m.Statements())
	}
}

// TestStatementsOff: STATEMENTS_TOP=0 exports no statement series and lists none.
func TestStatementsOff(t *testing.T) {
	cfg := testConfig(t)
	cfg.StatementsTop = 0
	h := newManager(t, cfg)
	h.m.RecordQuery(OpSelect, "SELECT 1", time.Millisecond, nil)
	if _, series := statementSeries(t, h.reg); series != 0 {
		t.Errorf("%d statement series with statements off", series)
	}
	if s := h.m.Statements(); s != nil {
		t.Errorf("Statements() = %v with statements off", s)
	}
}

// TestSlowQueryLogCarriesFingerprint: the Slow query detected line and the slow query list name
// the statement's fingerprint, with statement measurement on and off.
func TestSlowQueryLogCarriesFingerprint(t *testing.T) {
	for _, top := range []int{50, 0} {
		t.Run(fmt.Sprintf("top=%d", top), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.StatementsTop = top
			h := newManager(t, cfg)
			h.m.RecordQuery(OpSelect, "SELECT * FROM accounts WHERE id = 7", 2*cfg.SlowQueryThreshold, nil)
			want := fp(t, "select * from accounts where id = $1")
			if !strings.Contains(h.log.String(), "fingerprint="+want) {
				t.Errorf("Slow query detected line without fingerprint=%s:\n%s", want, h.log.String())
			}
			if s := h.m.SlowQueries(); len(s) != 1 || s[0].Fingerprint != want {
				t.Errorf("slow query list: %+v", s)
			}
		})
	}
}

// TestTopStatementsUnderChurn: the heavy statements stay the exported top while a stream of
// distinct light ones passes through, and drop out (stop being exported) once the window moves
// past them.
func TestTopStatementsUnderChurn(t *testing.T) {
	cfg := testConfig(t)
	cfg.StatementsTop = 3
	cfg.StatementsWindow = time.Minute
	h := newManager(t, cfg)
	s := h.m.metrics.stmts
	var mu sync.Mutex
	clock := time.Unix(1_800_000_000, 0)
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	heavy := []string{"SELECT * FROM heavy_a WHERE id = 1", "SELECT * FROM heavy_b WHERE id = 1", "UPDATE heavy_c SET x = 1"}
	for i := range 20_000 {
		if i%100 == 0 {
			for _, q := range heavy {
				h.m.RecordQuery(ClassifyOperation(q), q, 50*time.Millisecond, nil)
			}
		}
		q := fmt.Sprintf("SELECT * FROM light_%d", i)
		h.m.RecordQuery(OpSelect, q, time.Millisecond, nil)
		if i%1000 == 0 {
			advance(time.Second)
		}
	}
	counts, series := statementSeries(t, h.reg)
	for _, q := range heavy {
		if counts[fp(t, q)] != 200 {
			t.Errorf("heavy statement %q: count %d, want 200 (series %v)", q, counts[fp(t, q)], counts)
		}
	}
	if len(counts) != 3 || series != 6 {
		t.Errorf("%d statements and %d series exported, want 3 and 6: %v", len(counts), series, counts)
	}

	// The heavy ones stop; after a window of other statements they are gone.
	for i := range 200 {
		q := fmt.Sprintf("SELECT * FROM later_%d", i%5)
		h.m.RecordQuery(OpSelect, q, 10*time.Millisecond, nil)
		if i%10 == 0 {
			advance(5 * time.Second)
		}
	}
	counts, _ = statementSeries(t, h.reg)
	for _, q := range heavy {
		if _, ok := counts[fp(t, q)]; ok {
			t.Errorf("statement %q still exported a window after its last execution: %v", q, counts)
		}
	}
	if len(counts) != 3 {
		t.Errorf("exported %v, want the top 3 of the later statements", counts)
	}
}

// TestStatementCardinalityBounded: 100,000 distinct statements leave at most top series per
// family, a bounded set of tracked statements, and bounded memory.
func TestStatementCardinalityBounded(t *testing.T) {
	cfg := testConfig(t)
	h := newManager(t, cfg)
	s := h.m.metrics.stmts
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 100_000 {
		q := fmt.Sprintf("SELECT col_%d FROM table_%d WHERE id = %d", i, i, i)
		var err error
		if i%7 == 0 {
			err = &pgconn.PgError{Code: "23505", Message: "duplicate"}
		}
		h.m.RecordQuery(OpSelect, q, time.Duration(i%1000)*time.Microsecond, err)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	counts, series := statementSeries(t, h.reg)
	if len(counts) != cfg.StatementsTop || series > 3*cfg.StatementsTop {
		t.Errorf("%d statements, %d series exported for 100000 distinct statements; want %d statements and at most %d series",
			len(counts), series, cfg.StatementsTop, 3*cfg.StatementsTop)
	}
	s.mu.Lock()
	tracked := len(s.tracked)
	s.mu.Unlock()
	if tracked > s.capacity {
		t.Errorf("tracking %d statements (bound %d)", tracked, s.capacity)
	}
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("heap grew by %d MiB for 100000 distinct statements", grew>>20)
	}
}

// TestStatementSeenAllocatesNothing: an execution of a statement already seen allocates
// nothing, on success.
func TestStatementSeenAllocatesNothing(t *testing.T) {
	h := newManager(t, testConfig(t))
	const sql = "SELECT o.id, o.total FROM orders o WHERE o.customer_id = $1 AND o.status IN ('paid', 'shipped')"
	h.m.RecordQuery(OpSelect, sql, time.Millisecond, nil)
	if n := testing.AllocsPerRun(1000, func() { h.m.RecordQuery(OpSelect, sql, time.Millisecond, nil) }); n != 0 {
		t.Errorf("%v allocations per execution of a statement already seen", n)
	}
}
