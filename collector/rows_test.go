package collector

import (
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// only switches on the named collectors and every other one off.
func only(names ...string) func(*Config) {
	return func(c *Config) {
		c.Enabled = map[string]bool{}
		for _, n := range Names() {
			c.Enabled[n] = slices.Contains(names, n)
		}
	}
}

// checkFamily fails unless name is exported with the type and exactly the label names given
// (postgres_exporter's), and returns its series.
func checkFamily(t *testing.T, s scrape, name string, typ dto.MetricType, labels ...string) []*dto.Metric {
	t.Helper()
	mf := s.families[name]
	if mf == nil {
		t.Errorf("%s missing", name)
		return nil
	}
	if mf.GetType() != typ {
		t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
	}
	want := slices.Clone(labels)
	slices.Sort(want)
	for _, m := range mf.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName())
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: labels %v, want %v", name, got, want)
			break
		}
	}
	return mf.GetMetric()
}

// collectorOK fails unless the named collector succeeded in the scrape.
func collectorOK(t *testing.T, s scrape, name string) {
	t.Helper()
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": name}); got != 1 {
		t.Errorf("%s success = %v\n%s", name, got, s.body)
	}
}

func TestRowQuerySQL(t *testing.T) {
	q := rowQuery{
		labels: []string{"datname"},
		cols:   []column{gauge("n", nil), counter(epoch("t"), nil)},
		from:   "FROM v",
	}
	got := q.sql()
	for _, want := range []string{"COALESCE((datname)::text, '')", "(n)::float8", "(COALESCE(floor(extract(epoch FROM t)), 0))::float8", "\nFROM v"} {
		if !strings.Contains(got, want) {
			t.Errorf("query lacks %q:\n%s", want, got)
		}
	}
}
