package pool

import (
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestExemplarsFromTheLibrary: a query run in a sampled OpenTelemetry span's context, or whose
// text carries a sqlcommenter traceparent, gets an exemplar of that trace in the query and
// statement histograms, under the fingerprint of the text without the comment; an unsampled
// span gives none.
func TestExemplarsFromTheLibrary(t *testing.T) {
	h := newManager(t, testConfig(t))
	h.waitHealthy(t)
	ctx := ctxTimeout(t, 30*time.Second)
	span := func(n byte, sampled bool) trace.SpanContext {
		cfg := trace.SpanContextConfig{TraceID: trace.TraceID{15: n}, SpanID: trace.SpanID{7: 1}}
		if sampled {
			cfg.TraceFlags = trace.FlagsSampled
		}
		return trace.NewSpanContext(cfg)
	}
	if _, err := h.m.Pool().Exec(trace.ContextWithSpanContext(ctx, span(1, true)), "SELECT 1 AS exemplar_span"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Pool().Exec(trace.ContextWithSpanContext(ctx, span(2, false)), "SELECT 1 AS exemplar_unsampled"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Pool().Exec(ctx, "SELECT 1 AS exemplar_comment /*traceparent='00-00000000000000000000000000000003-0000000000000001-01'*/"); err != nil {
		t.Fatal(err)
	}
	for sql, want := range map[string][]string{
		"SELECT 1 AS exemplar_span":      {"00000000000000000000000000000001"},
		"SELECT 1 AS exemplar_unsampled": nil,
		"SELECT 1 AS exemplar_comment":   {"00000000000000000000000000000003"},
	} {
		labels := map[string]string{"fingerprint": fp(t, sql)}
		if h.metricValue(t, "pgsidecar_statement_duration_seconds", labels) != 1 {
			t.Errorf("%q: not measured once under its fingerprint", sql)
		}
		if got := testutil.ExemplarTraces(t, h.reg, "pgsidecar_statement_duration_seconds", labels); !slices.Equal(got, want) {
			t.Errorf("%q: exemplar traces %v, want %v", sql, got, want)
		}
	}
	if got := testutil.ExemplarTraces(t, h.reg, "pgsidecar_query_duration_seconds", nil); !slices.Contains(got, "00000000000000000000000000000001") {
		t.Errorf("query histogram exemplar traces %v, want the span's", got)
	}
}

// TestExemplarLimit: one exemplar per bucket per interval, buckets apart.
func TestExemplarLimit(t *testing.T) {
	var l exemplarLimit
	now := time.Now().UnixNano()
	if !l.allow(0.002, now) || l.allow(0.0022, now+1) || !l.allow(0.2, now+1) || !l.allow(100, now) || l.allow(200, now) {
		t.Error("not one exemplar per bucket")
	}
	if l.allow(0.002, now+int64(exemplarInterval)-1) || !l.allow(0.002, now+int64(exemplarInterval)) {
		t.Error("not one exemplar per interval")
	}
}
