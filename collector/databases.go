package collector

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Per-database collection: pg_stat_user_tables and its siblings only show the database a
// session is connected to, so the per-database collectors run once in the database of the
// pool and, meanwhile, in every other database the role may connect to and
// --collector.databases selects, over side connections: sideWorkers databases at a time.

// databaseFilter selects databases by name: comma-separated names or path.Match patterns, a
// leading "!" excluding. With no include entries every database not excluded is selected.
type databaseFilter struct {
	include, exclude []string
}

// parseDatabaseFilter parses a --collector.databases value.
func parseDatabaseFilter(spec string) (databaseFilter, error) {
	var f databaseFilter
	for _, e := range strings.Split(spec, ",") {
		e = strings.TrimSpace(e)
		neg := strings.HasPrefix(e, "!")
		e = strings.TrimPrefix(e, "!")
		if e == "" {
			continue
		}
		if _, err := path.Match(e, ""); err != nil {
			return f, fmt.Errorf("--collector.databases (%q): bad pattern %q: %w", spec, e, err)
		}
		if neg {
			f.exclude = append(f.exclude, e)
		} else {
			f.include = append(f.include, e)
		}
	}
	return f, nil
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// match reports whether the filter selects the database.
func (f databaseFilter) match(name string) bool {
	if len(f.include) > 0 && !matchAny(f.include, name) {
		return false
	}
	return !matchAny(f.exclude, name)
}

// otherDatabasesQuery lists the databases besides the connected one that the role may connect
// to; templates are left out, as is a database that does not accept connections.
const otherDatabasesQuery = `
SELECT datname FROM pg_database
WHERE datallowconn AND NOT datistemplate AND datname <> current_database()
  AND has_database_privilege(datname, 'CONNECT')
ORDER BY datname`

// sideWorkers is how many other databases are visited at once: the server works on some
// while the sidecar turns another's rows into series. With 20 other databases, four visited
// at once made a scrape about 15% faster than two; the connections they use stay within
// maxIdle + 1 all the same.
const sideWorkers = 4

// sidePool holds the connections to other databases: at most maxIdle + 1 exist at once, the
// maxIdle kept open between scrapes (one per database, for the databases listed first) and one
// opened for a database beyond them; each kept one closes after idle unused. A new backend
// costs far more than the statistics queries themselves (start-up, authentication, a cold
// catalog cache), so keeping connections across scrapes is what makes per-database statistics
// cheap; the bound and the idle timeout keep a server with many databases from paying a
// backend per database for it.
type sidePool struct {
	from    *pgxpool.Pool // whose settings the connections take
	maxIdle int
	idle    time.Duration

	// slots holds a token for every connection that exists (kept or in use), so that there
	// are never more than maxIdle + 1, however many databases are visited at once.
	slots chan struct{}

	mu     sync.Mutex
	conns  map[string]*idleConn
	closed bool
}

type idleConn struct {
	conn  *pgx.Conn
	timer *time.Timer
}

func newSidePool(p *pgxpool.Pool, maxIdle int, idle time.Duration) *sidePool {
	return &sidePool{from: p, maxIdle: maxIdle, idle: idle, conns: map[string]*idleConn{},
		slots: make(chan struct{}, maxIdle+1)}
}

// get returns a connection to db: the idle one when there is one, else a new one.
func (p *sidePool) get(ctx context.Context, db string) (*pgx.Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("collector closed")
	}
	ic := p.conns[db]
	delete(p.conns, db)
	p.mu.Unlock()
	if ic != nil {
		ic.timer.Stop()
		// A kept connection the server ended meanwhile (pg_terminate_backend, DROP DATABASE
		// WITH (FORCE), a restart) fails its next query: a ping finds that out, for one round
		// trip beside the collectors' queries, and a new one is opened rather than this
		// database failed for a scrape.
		if !ic.conn.IsClosed() && ic.conn.Ping(ctx) == nil {
			return ic.conn, nil
		}
		closeConn(ic.conn) // its token goes to the new one
	} else {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c, err := p.connect(ctx, db)
	if err != nil {
		<-p.slots
	}
	return c, err
}

// connect opens a connection to db with the settings of the pool.
func (p *sidePool) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	pc := p.from.Config()
	cfg := pc.ConnConfig
	cfg.Database = db
	if pc.BeforeConnect != nil {
		// The pool's own hook: the password a reload gave it, among others.
		if err := pc.BeforeConnect(ctx, cfg); err != nil {
			return nil, err
		}
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if pc.AfterConnect != nil {
		if err := pc.AfterConnect(ctx, c); err != nil {
			closeConn(c)
			return nil, err
		}
	}
	return c, nil
}

// put keeps c for reuse until the idle timeout when keep is set (db is among the first maxIdle
// databases listed: with a fixed order, keeping whichever came last would make every scrape
// reconnect everywhere), or closes it, also when it is broken.
func (p *sidePool) put(c *pgx.Conn, db string, keep bool) {
	p.mu.Lock()
	if !keep || p.closed || c.IsClosed() || len(p.conns) >= p.maxIdle || p.idle <= 0 || p.conns[db] != nil {
		p.mu.Unlock()
		closeConn(c)
		<-p.slots
		return
	}
	ic := &idleConn{conn: c}
	ic.timer = time.AfterFunc(p.idle, func() { p.expire(db, ic) })
	p.conns[db] = ic
	p.mu.Unlock()
}

// expire closes ic when it is still the idle connection to db.
func (p *sidePool) expire(db string, ic *idleConn) {
	p.mu.Lock()
	if p.conns[db] != ic {
		p.mu.Unlock()
		return
	}
	delete(p.conns, db)
	p.mu.Unlock()
	closeConn(ic.conn)
	<-p.slots
}

// close closes the idle connections and refuses new ones.
func (p *sidePool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.closeIdle()
}

// closeIdle closes the idle connections, and keeps taking new ones.
func (p *sidePool) closeIdle() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[string]*idleConn{}
	p.mu.Unlock()
	for _, ic := range conns {
		ic.timer.Stop()
		closeConn(ic.conn)
		<-p.slots
	}
}

// open reports how many idle connections the pool keeps (tests use it).
func (p *sidePool) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// databaseGone reports whether err says the database does not exist (any more).
func databaseGone(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "3D000"
}

// hasPerDatabase reports whether a per-database collector is enabled.
func (e *Exporter) hasPerDatabase() bool {
	for _, c := range e.cols {
		if c.perDatabase {
			return true
		}
	}
	return false
}

// otherDatabases lists the databases besides the connected one the per-database collectors
// visit, and logs the --collector.databases patterns that match none of them (a typo) when
// that set changes: at the first collection, and whenever databases come or go.
func (e *Exporter) otherDatabases(ctx context.Context, q Querier) ([]string, error) {
	var out, all []string
	err := queryRows(ctx, q, otherDatabasesQuery, func(r pgx.Rows) error {
		var name string
		if err := r.Scan(&name); err != nil {
			return err
		}
		all = append(all, name)
		if e.databases.match(name) {
			out = append(out, name)
		}
		return nil
	})
	if err == nil {
		e.noteUnmatched(e.databases.unmatched(all))
	}
	return out, err
}

// unmatched lists the patterns, "!" kept, that match none of names.
func (f databaseFilter) unmatched(names []string) []string {
	var out []string
	check := func(patterns []string, prefix string) {
		for _, p := range patterns {
			if !slices.ContainsFunc(names, func(n string) bool { ok, _ := path.Match(p, n); return ok }) {
				out = append(out, prefix+p)
			}
		}
	}
	check(f.include, "")
	check(f.exclude, "!")
	return out
}

// noteUnmatched logs the patterns that match no database when they differ from the last ones
// logged.
func (e *Exporter) noteUnmatched(patterns []string) {
	key := strings.Join(patterns, ",")
	e.mu.Lock()
	prev, known := e.unmatchedPatterns, e.unmatchedKnown
	e.unmatchedPatterns, e.unmatchedKnown = key, true
	e.mu.Unlock()
	switch {
	case known && key == prev:
	case key != "":
		e.log.Warn("--collector.databases patterns match no database besides the pool's own (which is always read)",
			"patterns", key, "databases", e.cfg.Databases)
	case known:
		e.log.Info("--collector.databases patterns all match a database again", "databases", e.cfg.Databases)
	}
}

// noteCurrentDatabase reports the outcome of the per-database collectors in the connected
// database (results, once they ran there): it is always read.
func (e *Exporter) noteCurrentDatabase(current string, s *sink, results []colResult) {
	ok, dur := 1.0, time.Duration(0)
	for i, c := range e.cols {
		if c.perDatabase {
			dur += results[i].dur
			if results[i].err != nil {
				ok = 0
			}
		}
	}
	s.add(e.dbSuccessDesc, prometheus.GaugeValue, ok, []string{current})
	s.add(e.dbDurationDesc, prometheus.GaugeValue, dur.Seconds(), []string{current})
}

// collectDatabases runs the per-database collectors in each other database, sideWorkers
// databases at a time in list order, on side connections, within the collection's deadline,
// and reports every visited database's outcome; results gets the collectors' (only those of
// the per-database collectors are set). It runs beside the collectors of the connected
// database. A database dropped since it was listed is skipped silently; one that refuses the
// connection is reported and logged, without failing the collectors.
func (e *Exporter) collectDatabases(ctx context.Context, others []string, version int,
	s *sink, tables map[string]*dbTables, results []colResult) {
	next := make(chan int, len(others))
	for i := range others {
		next <- i
	}
	close(next)
	workers := min(sideWorkers, len(others))
	each := make([][]colResult, workers)
	var wg sync.WaitGroup
	for w := range workers {
		each[w] = make([]colResult, len(results))
		wg.Go(func() {
			for i := range next {
				db := others[i]
				if e.beforeDatabase != nil {
					e.beforeDatabase(db)
				}
				start := time.Now()
				ok, gone := e.collectDatabase(ctx, db, version, s, tables[db], i < e.cfg.DatabasesMaxIdle, each[w])
				if gone {
					continue
				}
				v := 0.0
				if ok {
					v = 1
				}
				s.add(e.dbSuccessDesc, prometheus.GaugeValue, v, []string{db})
				s.add(e.dbDurationDesc, prometheus.GaugeValue, time.Since(start).Seconds(), []string{db})
			}
		})
	}
	wg.Wait()
	for _, res := range each {
		for i, r := range res {
			results[i].dur += r.dur
			if results[i].err == nil {
				results[i].err = r.err
			}
		}
	}
}

// collectDatabase runs the per-database collectors in db, keeping the connection for the next
// scrape if keep is set. gone is true when db no longer exists.
func (e *Exporter) collectDatabase(ctx context.Context, db string, version int, s *sink, tables *dbTables,
	keep bool, results []colResult) (ok, gone bool) {
	failAll := func(err error) {
		for i, c := range e.cols {
			if c.perDatabase && results[i].err == nil {
				results[i].err = fmt.Errorf("database %q: %w", db, err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		failAll(err) // out of time: the collectors did not finish
		return false, false
	}
	conn, err := e.side.get(ctx, db)
	if err != nil {
		if databaseGone(err) {
			return false, true
		}
		if ctx.Err() != nil {
			failAll(ctx.Err())
		}
		e.noteDatabase(db, err)
		return false, false
	}
	e.noteDatabase(db, nil)
	ok = true
	for i, c := range e.cols {
		if !c.perDatabase {
			continue
		}
		start := time.Now()
		err := e.runOne(ctx, c.c, &Scrape{Conn: conn, Version: version, sink: s, tables: tables, collector: c.name})
		results[i].dur += time.Since(start)
		if err != nil {
			ok = false
			if results[i].err == nil {
				results[i].err = fmt.Errorf("database %q: %w", db, err)
			}
		}
		if conn.IsClosed() {
			if ctx.Err() != nil {
				e.cancelOnServer(conn.PgConn())
			}
			break
		}
	}
	e.side.put(conn, db, keep)
	return ok, false
}

// noteDatabase logs a database that starts refusing the collector's connection, or accepts it
// again, once rather than on every scrape.
func (e *Exporter) noteDatabase(db string, err error) {
	key := "database " + db
	e.mu.Lock()
	_, was := e.failing[key]
	if err != nil {
		e.failing[key] = e.errString(err)
	} else {
		delete(e.failing, key)
	}
	e.mu.Unlock()
	switch {
	case err != nil && !was:
		e.log.Warn("Collector cannot connect to a database", "datname", db, "error", e.errString(err))
	case err == nil && was:
		e.log.Info("Collector connects to the database again", "datname", db)
	}
}
