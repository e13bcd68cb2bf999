package collector

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestEmitCheckFailsOnUndeclared: in tests, a collector's sample whose name, type or server
// version its declaration does not have is reported (and fails the test that scrapes it).
func TestEmitCheckFailsOnUndeclared(t *testing.T) {
	takeUndeclared()
	var archived, numTimed *prometheus.Desc
	for _, d := range Declarations() {
		for _, m := range d.Metrics {
			switch descName(m.Desc) {
			case "pg_stat_archiver_archived_count":
				archived = m.Desc
			case "pg_stat_checkpointer_num_timed_total":
				numTimed = m.Desc
			}
		}
	}
	s := &Scrape{sink: newSink(), collector: "archiver", Version: 150000}
	s.Counter(archived, 1) // as declared
	s.Gauge(prometheus.NewDesc("pg_stat_archiver_not_declared", "Test.", nil, nil), 1)
	s.Gauge(archived, 1)
	s.collector = "checkpointer"
	s.Counter(numTimed, 1) // PostgreSQL 17 and later only
	got := takeUndeclared()
	for _, want := range []string{
		"collector archiver emitted pg_stat_archiver_not_declared, which it does not declare",
		"collector archiver emitted pg_stat_archiver_archived_count as a gauge; it declares a counter",
		"collector checkpointer emitted pg_stat_checkpointer_num_timed_total on server version 150000",
	} {
		if !slices.ContainsFunc(got, func(msg string) bool { return strings.HasPrefix(msg, want) }) {
			t.Errorf("no report %q; got %q", want, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("got %d reports, want 3: %q", len(got), got)
	}
}

// TestDeclarationsAreComplete: every metric a collector declares has a type, which the
// reference docs print.
func TestDeclarationsAreComplete(t *testing.T) {
	n := 0
	for _, d := range Declarations() {
		for _, m := range d.Metrics {
			n++
			if m.Type == "" {
				t.Errorf("%s: %s declares no type", d.Collector, descName(m.Desc))
			}
		}
	}
	if n < 100 {
		t.Errorf("%d metrics declared, want every collector's (over 100)", n)
	}
}
