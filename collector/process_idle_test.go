package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestProcessIdle: two sessions idle for over a second and one idle in a transaction give one
// histogram per state, with the ages in the right buckets.
func TestProcessIdle(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	openSession(t, "", "idle_hist_test")
	openSession(t, "", "idle_hist_test")
	tx := openSession(t, "", "idle_hist_test")
	if _, err := tx.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	e := newEnv(t, "", only("process_idle"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "process_idle")
	checkFamily(t, s, "pg_process_idle_seconds", dto.MetricType_HISTOGRAM, "application_name", "state")
	hist := func(state string) *dto.Histogram {
		for _, m := range s.families["pg_process_idle_seconds"].GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if got["state"] == state && got["application_name"] == "idle_hist_test" {
				return m.GetHistogram()
			}
		}
		t.Fatalf("no histogram for state %q:\n%s", state, s.body)
		return nil
	}
	for state, n := range map[string]uint64{"idle": 2, "idle in transaction": 1} {
		h := hist(state)
		if h.GetSampleCount() != n || h.GetSampleSum() < float64(n) {
			t.Errorf("%s: count %d sum %v, want %d sessions idle over 1 s each", state, h.GetSampleCount(), h.GetSampleSum(), n)
		}
		for _, b := range h.GetBucket() {
			switch b.GetUpperBound() {
			case 1:
				if b.GetCumulativeCount() != 0 {
					t.Errorf("%s: %d sessions idle at most 1 s", state, b.GetCumulativeCount())
				}
			case 300:
				if b.GetCumulativeCount() != n {
					t.Errorf("%s: %d sessions idle at most 300 s, want %d", state, b.GetCumulativeCount(), n)
				}
			}
		}
	}
}
