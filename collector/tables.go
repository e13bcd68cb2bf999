package collector

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	conf "github.com/pgsidecar/pgsidecar/internal/settings"
	"github.com/pgsidecar/pgsidecar/internal/thresholds"
)

// The table limit: in each database the per-table and per-index collectors export the tables
// that rank highest, not every table. A server with a schema per tenant has tens of thousands
// of tables, about 30 series each; exporting all of them made one scrape hundreds of thousands
// of series.
//
// Tables rank by activity: scans, rows written and live rows, all read from
// pg_stat_user_tables (cheap, unlike pg_table_size). The counters only grow, so the ranking
// moves slowly, and a table exported at the last collection keeps its place until an outsider
// ranks memberBonus times higher, so membership does not flap between two tables that are
// almost equal. Tables whose dead tuples are past the dead tuple alert's threshold are always
// exported besides, so that the alert sees every table it should.

// DefaultTablesLimit is the default of --collector.tables.limit: with the 29 series of
// stat_user_tables and statio_user_tables per table, 50 tables in each of 5 databases stay
// under 10,000 series.
const DefaultTablesLimit = 50

// rankInterval is how long a database's ranking is reused before its tables are ranked again.
// Ranking reads every table's statistics, which costs more than reading those of the tables
// chosen; counters that only grow change the ranking slowly, and the dead tuple alert waits 30
// minutes, so a minute's delay costs nothing.
const rankInterval = time.Minute

// memberBonus is the factor by which an outsider must outrank a table exported at the last
// collection to take its place.
const memberBonus = 1.25

// tableRankQuery reads what tables rank by. relid is read as bigint, which pgx scans into an
// int64 and sends back as one in the collectors' filter.
const tableRankQuery = `SELECT relid::bigint, schemaname::text, relname::text,
  (COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del + n_live_tup)::float8,
  n_live_tup::float8, n_dead_tup::float8
FROM pg_stat_user_tables`

// tableSettings are the settings of the table limit and the series budget, appended to
// Settings.
func tableSettings() []Setting {
	return []Setting{
		{Flag: "collector.tables.limit", Env: envName("collector.tables.limit"), Default: fmt.Sprint(DefaultTablesLimit),
			Help: "Tables per database whose statistics the per-table and per-index collectors (stat_user_tables, statio_user_tables, statio_user_indexes) export: those with the most scans, rows written and live rows (ranked once a minute), a table exported before keeping its place until another ranks 25% higher; tables past the dead tuple alert's threshold are exported besides. 0 exports every table (the default when started with postgres_exporter's flags or variables).",
			Set:  conf.Int("--collector.tables.limit", func(c *Config) *int { return &c.TablesLimit })},
		{Flag: "collector.max-series", Env: envName("collector.max-series"), Default: fmt.Sprint(DefaultSeriesBudget),
			Help: "Most series of the collectors in one scrape (about 100 bytes each in the text format). Past it, whole tables are left out, the lowest ranked first in every database, then whole metric families, the largest first; what was left out comes back once it fits in 90% of the budget. pg_up, the collectors' own series and the pool's are never left out. 0 sets no budget.",
			Set:  conf.Int("--collector.max-series", func(c *Config) *int { return &c.MaxSeries })},
	}
}

// validateTables checks the table limit and the series budget.
func (c Config) validateTables() []error {
	var errs []error
	if c.TablesLimit < 0 {
		errs = append(errs, fmt.Errorf("--collector.tables.limit (%d) must not be negative (0 exports every table)", c.TablesLimit))
	}
	if c.MaxSeries < 0 {
		errs = append(errs, fmt.Errorf("--collector.max-series (%d) must not be negative (0 sets no budget)", c.MaxSeries))
	}
	return errs
}

// tableLimiter chooses the tables of each database, remembering the last choice.
type tableLimiter struct {
	limit int // 0: every table
	// rank is set when tables are ranked even though every one is exported: the series budget
	// leaves out the lowest ranked first.
	rank bool
	// minDead and deadRatio are the dead tuple alert's thresholds.
	minDead, deadRatio float64

	// every is how long a ranking is reused (rankInterval; tests shorten it).
	every time.Duration

	mu      sync.Mutex
	members map[string]map[int64]bool // by database: the tables exported at the last collection
	ranked  map[string]rankedChoice   // by database: the last ranking
}

// rankedChoice is a database's last table choice and when it was made.
type rankedChoice struct {
	choice *tableChoice
	at     time.Time
}

func newTableLimiter(limit int, rank bool) *tableLimiter {
	t := thresholds.Default()
	return &tableLimiter{limit: limit, rank: rank, minDead: t.MinDeadTuples, deadRatio: t.DeadTupleRatio,
		every: rankInterval, members: map[string]map[int64]bool{}, ranked: map[string]rankedChoice{}}
}

// tableChoice is one database's tables in one collection.
type tableChoice struct {
	all    bool    // every table is exported
	relids []int64 // the tables exported, unless all
	// rank is every table's place, 0 first, by "schemaname\xffrelname".
	rank map[string]int
	left int // tables not exported
}

// rankedTable is a row of tableRankQuery.
type rankedTable struct {
	relid             int64
	schema, rel       string
	score, live, dead float64
	forced            bool // past the dead tuple alert's threshold
	member            bool // exported at the last collection
}

// choose picks the tables of db to export: those of its last ranking, if it is recent, else
// those of a new ranking read on q.
func (l *tableLimiter) choose(ctx context.Context, q Querier, db string) (*tableChoice, error) {
	l.mu.Lock()
	last, ok := l.ranked[db]
	l.mu.Unlock()
	if ok && time.Since(last.at) < l.every {
		return last.choice, nil
	}
	c, err := l.rankTables(ctx, q, db)
	if err == nil {
		l.mu.Lock()
		l.ranked[db] = rankedChoice{choice: c, at: time.Now()}
		l.mu.Unlock()
	}
	return c, err
}

// rankTables ranks db's tables on q and picks those to export.
func (l *tableLimiter) rankTables(ctx context.Context, q Querier, db string) (*tableChoice, error) {
	var tables []rankedTable
	err := queryRows(ctx, q, tableRankQuery, func(r pgx.Rows) error {
		var t rankedTable
		if err := r.Scan(&t.relid, &t.schema, &t.rel, &t.score, &t.live, &t.dead); err != nil {
			return err
		}
		tables = append(tables, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	prev := l.members[db]
	l.mu.Unlock()
	l.order(tables, prev)
	c := &tableChoice{all: l.limit == 0, rank: make(map[string]int, len(tables))}
	for i, t := range tables {
		c.rank[t.schema+"\xff"+t.rel] = i
	}
	if c.all {
		return c, nil
	}
	forced := 0
	for _, t := range tables {
		if t.forced {
			forced++
		}
	}
	n := min(len(tables), forced+l.limit)
	members := make(map[int64]bool, n)
	c.relids = make([]int64, n)
	for i, t := range tables[:n] {
		c.relids[i] = t.relid
		members[t.relid] = true
	}
	c.left = len(tables) - n
	l.mu.Lock()
	l.members[db] = members
	l.mu.Unlock()
	return c, nil
}

// order sorts tables into their ranking: those past the dead tuple threshold first, then by
// score (a table exported last time counting memberBonus times its own), then the tables
// exported last time (after a statistics reset every score is 0), then by name, so that equal
// tables always rank alike.
func (l *tableLimiter) order(tables []rankedTable, prev map[int64]bool) {
	for i := range tables {
		t := &tables[i]
		t.forced = t.dead > l.minDead && t.dead/(t.live+t.dead) > l.deadRatio
		t.member = prev[t.relid]
	}
	eff := func(t *rankedTable) float64 {
		if t.member {
			return t.score * memberBonus
		}
		return t.score
	}
	slices.SortFunc(tables, func(a, b rankedTable) int {
		if a.forced != b.forced {
			if a.forced {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(eff(&b), eff(&a)); c != 0 {
			return c
		}
		if a.member != b.member {
			if a.member {
				return -1
			}
			return 1
		}
		return cmp.Or(strings.Compare(a.schema, b.schema), strings.Compare(a.rel, b.rel))
	})
}

// keep forgets the choices of the databases not in visited (dropped, or no longer selected).
func (l *tableLimiter) keep(visited map[string]*dbTables) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for db := range l.members {
		if visited[db] == nil {
			delete(l.members, db)
		}
	}
	for db := range l.ranked {
		if visited[db] == nil {
			delete(l.ranked, db)
		}
	}
}

// dbTables is one database's table choice within one collection, made once, on the first
// connection that asks, for every collector that needs it.
type dbTables struct {
	lim    *tableLimiter
	db     string
	once   sync.Once
	choice *tableChoice
	err    error
}

// get returns the choice, nil when tables are neither limited nor ranked.
func (d *dbTables) get(ctx context.Context, q Querier) (*tableChoice, error) {
	if d == nil || d.lim == nil || (d.lim.limit == 0 && !d.lim.rank) {
		return nil, nil
	}
	d.once.Do(func() { d.choice, d.err = d.lim.choose(ctx, q, d.db) })
	return d.choice, d.err
}

// tablesFor returns db's table choice of this collection, creating it on first use. It is
// called from the collection's goroutine only, before the collectors start.
func (e *Exporter) tablesFor(tables map[string]*dbTables, db string) *dbTables {
	d := tables[db]
	if d == nil {
		d = &dbTables{lim: e.tableLim, db: db}
		tables[db] = d
	}
	return d
}

// tableFilter is the WHERE clause (with its arguments) that limits a per-table collector's
// query to the tables chosen in s's database; empty when every table is exported.
func (s *Scrape) tableFilter(ctx context.Context) (string, []any, error) {
	c, err := s.tables.get(ctx, s.Conn)
	if err != nil || c == nil || c.all {
		return "", nil, err
	}
	return "\nWHERE relid::bigint = ANY($1)", []any{c.relids}, nil
}

// tablesLeftOut sums the tables the limit left out in the databases of one collection.
func tablesLeftOut(tables map[string]*dbTables) int {
	n := 0
	for _, d := range tables {
		if d.choice != nil {
			n += d.choice.left
		}
	}
	return n
}
