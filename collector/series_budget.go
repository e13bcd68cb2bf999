package collector

import (
	"cmp"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The series budget: past --collector.max-series, a collection leaves out whole tables, then
// whole metric families, never single series, so what is exported stays complete for each
// table and family it has. The order is fixed: tables by their rank in their database, the
// lowest ranked first, taken from every database in turn (the 50th table of each before the
// 49th of any); then families, the largest first, by name when equal. What is left out stays
// out until the collection fits in 90% of the budget with it, so a collection near the budget
// does not make series come and go from scrape to scrape.
//
// The budget counts the collectors' series only: pg_up, pg_static, the collectors' own
// success and duration series and the exporter's pgsidecar_* series are added beside them, and
// the pool's series belong to other collectors of the registry.

// DefaultSeriesBudget is the default of --collector.max-series: about 2 MB in the text format.
const DefaultSeriesBudget = 20000

// budgetRoom is the share of the budget a collection must fit in for what was left out to
// come back.
const budgetRoom = 0.9

// seriesBudget leaves out of each collection what does not fit, remembering how much it left
// out last time.
type seriesBudget struct {
	max int // 0: no budget

	mu      sync.Mutex
	cut     int     // units (tables, families) left out of the last collection
	dropped int     // series left out of the last collection
	total   float64 // series left out since start
	leftOut int     // tables the table limit left out of the last collection
}

// seriesUnit is a table or a metric family: what the budget leaves out whole.
type seriesUnit struct {
	table  string           // "datname\xffschemaname\xffrelname", or "" for a family
	desc   *prometheus.Desc // the family's, when table is ""
	name   string           // the family's name, for ordering
	rank   int              // the table's place in its database; -1 when not ranked
	series int
}

// apply returns the metrics of a collection (with tables, as in sink) that fit the budget, the
// tables in the choices of tables ranked by them.
func (b *seriesBudget) apply(metrics []prometheus.Metric, tables []string, choices map[string]*dbTables) []prometheus.Metric {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.max == 0 || (len(metrics) <= b.max && b.cut == 0) {
		b.cut, b.dropped = 0, 0
		return metrics
	}
	units := budgetUnits(metrics, tables, choices)
	// need is the fewest units to leave out to fit the budget, room the fewest to fit in 90% of
	// it; what was left out last time comes back only down to room.
	total := len(metrics)
	need, room := -1, -1
	left := total
	for i := 0; i <= len(units); i++ {
		if need < 0 && left <= b.max {
			need = i
		}
		if room < 0 && float64(left) <= budgetRoom*float64(b.max) {
			room = i
			break
		}
		if i < len(units) {
			left -= units[i].series
		}
	}
	if need < 0 {
		need = len(units)
	}
	if room < 0 {
		room = len(units)
	}
	k := max(need, min(b.cut, room))
	b.cut = k
	if k == 0 {
		b.dropped = 0
		return metrics
	}
	dropped := 0
	for _, u := range units[:k] {
		dropped += u.series
	}
	b.dropped = dropped
	b.total += float64(dropped)
	return leaveOut(metrics, tables, units[:k], dropped)
}

// fit returns the metrics of a scrape's partial answer (see Exporter.snapshot) that fit the
// budget: the fewest tables, then families, left out, with neither hysteresis nor rank (the
// collection in progress has not finished ranking), and nothing noted for the next collection.
func (b *seriesBudget) fit(metrics []prometheus.Metric, tables []string) []prometheus.Metric {
	if b.max == 0 || len(metrics) <= b.max {
		return metrics
	}
	units := budgetUnits(metrics, tables, nil)
	left, k := len(metrics), 0
	for k < len(units) && left > b.max {
		left -= units[k].series
		k++
	}
	return leaveOut(metrics, tables, units[:k], len(metrics)-left)
}

// leaveOut returns metrics without those of units, which have dropped series in all.
func leaveOut(metrics []prometheus.Metric, tables []string, units []seriesUnit, dropped int) []prometheus.Metric {
	outTables := map[string]bool{}
	outFamilies := map[*prometheus.Desc]bool{}
	for _, u := range units {
		if u.table != "" {
			outTables[u.table] = true
		} else {
			outFamilies[u.desc] = true
		}
	}
	kept := make([]prometheus.Metric, 0, len(metrics)-dropped)
	for i, m := range metrics {
		if tables[i] != "" && outTables[tables[i]] || outFamilies[m.Desc()] {
			continue
		}
		kept = append(kept, m)
	}
	return kept
}

// idle notes a collection without the collectors (this sidecar does not lead): nothing is left
// out of it, whatever was before.
func (b *seriesBudget) idle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cut, b.dropped, b.leftOut = 0, 0, 0
}

// budgetUnits lists the tables and families of a collection in the order the budget leaves
// them out.
func budgetUnits(metrics []prometheus.Metric, tables []string, choices map[string]*dbTables) []seriesUnit {
	byTable := map[string]int{}
	byDesc := map[*prometheus.Desc]int{}
	for i, m := range metrics {
		if tables[i] != "" {
			byTable[tables[i]]++
		} else {
			byDesc[m.Desc()]++
		}
	}
	units := make([]seriesUnit, 0, len(byTable)+len(byDesc))
	for t, n := range byTable {
		rank := -1
		db, rel, _ := strings.Cut(t, "\xff")
		if d := choices[db]; d != nil && d.choice != nil {
			if r, ok := d.choice.rank[rel]; ok {
				rank = r
			}
		}
		units = append(units, seriesUnit{table: t, rank: rank, series: n})
	}
	// Tables: unranked ones first (their ranking failed), then the lowest ranked, then by name.
	slices.SortFunc(units, func(a, b seriesUnit) int {
		ar, br := a.rank, b.rank
		if ar < 0 {
			ar = int(^uint(0) >> 1)
		}
		if br < 0 {
			br = int(^uint(0) >> 1)
		}
		return cmp.Or(cmp.Compare(br, ar), strings.Compare(b.table, a.table))
	})
	families := make([]seriesUnit, 0, len(byDesc))
	for d, n := range byDesc {
		families = append(families, seriesUnit{desc: d, name: descName(d), series: n})
	}
	slices.SortFunc(families, func(a, b seriesUnit) int {
		return cmp.Or(cmp.Compare(b.series, a.series), strings.Compare(a.name, b.name))
	})
	return append(units, families...)
}

// descName reads a Desc's metric name.
func descName(d *prometheus.Desc) string {
	name, _, _ := strings.Cut(strings.TrimPrefix(d.String(), `Desc{fqName: "`), `"`)
	return name
}

// budgetDescs are the series of the table limit and the series budget.
type budgetDescs struct {
	budget, dropped, leftOut *prometheus.Desc
}

func newBudgetDescs() budgetDescs {
	return budgetDescs{
		budget: gaugeDesc("pgsidecar_collector_series_budget",
			"Most series of the collectors in one scrape (--collector.max-series); 0 for no budget."),
		dropped: gaugeDesc("pgsidecar_collector_series_over_budget",
			"Series the series budget left out of the last collection (whole tables, then whole families); 0 when it fit. PgSidecarCollectorSeriesBudgetExceeded fires while it is above 0."),
		leftOut: gaugeDesc("pgsidecar_collector_tables_left_out",
			"Tables whose statistics the last collection left out, past --collector.tables.limit in each database."),
	}
}

// collectBudget sends the budget's series and the count of series it left out, the latter
// also as pgsidecar_collector_dropped_series_total{reason="budget"}.
func (e *Exporter) collectBudget(ch chan<- prometheus.Metric) {
	b := e.budget
	b.mu.Lock()
	dropped, total, leftOut := b.dropped, b.total, b.leftOut
	b.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(e.budgetDescs.budget, prometheus.GaugeValue, float64(b.max))
	ch <- prometheus.MustNewConstMetric(e.budgetDescs.dropped, prometheus.GaugeValue, float64(dropped))
	ch <- prometheus.MustNewConstMetric(e.budgetDescs.leftOut, prometheus.GaugeValue, float64(leftOut))
	ch <- prometheus.MustNewConstMetric(e.droppedDesc, prometheus.CounterValue, total, "budget")
}

// initBudget sets up the table limit and the series budget from the config.
func (e *Exporter) initBudget() {
	e.tableLim = newTableLimiter(e.cfg.TablesLimit, e.cfg.MaxSeries > 0)
	e.budget = &seriesBudget{max: e.cfg.MaxSeries}
	e.budgetDescs = newBudgetDescs()
}

// fitBudget applies the series budget to the collectors' series of a collection (s locked),
// and notes the tables the table limit left out.
func (e *Exporter) fitBudget(s *sink, choices map[string]*dbTables) []prometheus.Metric {
	e.tableLim.keep(choices)
	kept := e.budget.apply(s.metrics, s.tables, choices)
	e.budget.mu.Lock()
	e.budget.leftOut = tablesLeftOut(choices)
	e.budget.mu.Unlock()
	return kept
}
