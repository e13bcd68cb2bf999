package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// The isolation oracle: generated scripts of K clients run interleaved through the proxy in
// transaction mode (over one server connection and over two) must give, statement by
// statement, the results and SQLSTATEs the same scripts give each alone on a direct
// connection, and the same session state read by a probe after every transaction. Any
// difference is session state that reached another client, or that a client lost.
//
// Environment:
//
//	PGSIDECAR_ORACLE_SCRIPTS  client scripts to run (default 2000)
//	PGSIDECAR_ORACLE_SEED     first case seed (default 1); case i has seed SEED+i
//	PGSIDECAR_ORACLE_ONLY     one category of oracleCategories, "orm", or "unseen" (a documented
//	                          exception in every case)
//	PGSIDECAR_ORACLE_SHOW     differences to shrink and print (default 5)
//	PGSIDECAR_ORACLE_POOL_MODE=session  checks the oracle itself: nothing is shared there
//
// One case: go test ./proxy -run 'TestIsolationOracle/seed=123$' (a seed outside the default
// range needs PGSIDECAR_ORACLE_SEED=123 PGSIDECAR_ORACLE_SCRIPTS=1).

// oracleException is a difference the proxy cannot avoid, accepted when a client of the case
// ran a step of kind: one row of the README's table of what no proxy can see.
type oracleException struct {
	kind string // a step kind of the grammar
	why  string
}

// documentedExceptions are the steps of unseenSteps, with the README's words for them.
var documentedExceptions = []oracleException{
	{"unseen/function_set_config", "a user function that changes session state inside: the change stays on the server connection"},
	{"unseen/lastval", "lastval() after nextval() in an earlier transaction may read another session's value, or none"},
	{"unseen/reset_all_then_read", "statements after RESET ALL in the same text see the server's defaults for start-up parameters"},
}

// probeSQL reads the session state a client could observe. Settings are listed by value
// alone, those that differ from the server's built-in default: a setting's source
// legitimately differs between the two sides (the proxy brings a server connection to a
// client's values with SET, where a direct session has them from its startup packet or the
// configuration file), so comparing sources, or choosing settings by source, would report
// equal values as different. Both sides start with the same startup parameters: the oracle's
// clients send application_name, which the pool's connections otherwise carry with the pool's
// name. A custom setting such as app.tenant, once defined on a backend, reads as empty rather
// than NULL after RESET or DISCARD ALL: no proxy can undo that short of closing the
// connection, so both count as unset. Settings whose value the route to the server decides
// go in probeVolatile.
var probeSQL = `select 'user=' || current_user || ' session=' || session_user
 || ' | settings=' || coalesce($SETTINGS$, '')
 || ' | app.tenant=' || coalesce(nullif(current_setting('app.tenant', true), ''), '<unset>')
 || ' | temp=' || (select count(*) from pg_class where relnamespace = pg_my_temp_schema())
 || ' | advisory=' || (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())
 || ' | sql_prepared=' || coalesce((select string_agg(name, ',' order by name) from pg_prepared_statements where from_sql), '')
 || ' | listen=' || coalesce((select string_agg(c, ',' order by c) from pg_listening_channels() c), '')
 || ' | hold_cursors=' || coalesce((select string_agg(name, ',' order by name) from pg_cursors where is_holdable), '')
 || ' | isolation=' || current_setting('transaction_isolation') || ',' || current_setting('transaction_read_only')`

// probeVolatile are settings the probe leaves out, with why.
var probeVolatile = map[string]string{
	// The probe's isolation field shows them.
	"transaction_isolation": "field", "transaction_read_only": "field",
	// The direct side connects over the unix socket, where these read as 0; over TCP they read
	// as the kernel's values.
	"tcp_keepalives_idle":     "socket",
	"tcp_keepalives_interval": "socket",
	"tcp_keepalives_count":    "socket",
	"tcp_user_timeout":        "socket",
}

// probeSettings are the settings the light probe reads: those the grammar and the ORMs set,
// and their neighbours.
var probeSettings = []string{"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
	"search_path", "work_mem", "TimeZone", "DateStyle", "IntervalStyle", "application_name",
	"client_min_messages", "standard_conforming_strings", "extra_float_digits", "client_encoding",
	"default_transaction_isolation", "default_transaction_read_only", "role", "session_authorization"}

// probeQuery is the full probe, or the light one, which reads probeSettings instead of
// pg_settings.
func probeQuery(full bool) string {
	var settings string
	if full {
		names := make([]string, 0, len(probeVolatile))
		for n := range probeVolatile {
			names = append(names, literal(n))
		}
		settings = `(select string_agg(name || '=' || setting, ';' order by name) from pg_settings
     where setting is distinct from boot_val and name <> all(array[` + strings.Join(names, ",") + `]::text[]))`
	} else {
		names := make([]string, len(probeSettings))
		for i, n := range probeSettings {
			names[i] = literal(n)
		}
		settings = `(select string_agg(n || '=' || current_setting(n), ';' order by n) from unnest(array[` + strings.Join(names, ",") + `]) n)`
	}
	return strings.Replace(probeSQL, "$SETTINGS$", settings, 1)
}

// oracle holds what cases share: the setup and one proxy per pool size.
type oracle struct {
	proxies    []*oracleProxy
	probe      string // the full probe
	lightProbe string
	excused    atomic.Int64 // runs that differed where a documented exception was drawn

	mu          sync.Mutex
	excusedKind map[string]int // of those, by the exception's step kind
}

type oracleProxy struct {
	h     *harness
	conns int
}

// keepTB lets a harness outlive the test that made it (the fuzz target's, made once).
type keepTB struct {
	testing.TB
	cleanups *[]func()
}

func (k keepTB) Cleanup(f func()) { *k.cleanups = append(*k.cleanups, f) }

var oracleSetup = `
do $$ begin if not exists (select from pg_roles where rolname = 'oracle_role') then create role oracle_role; end if; end $$;
-- So that the probe lists the same settings under SET ROLE as without it.
grant pg_read_all_settings to oracle_role;
create schema if not exists oracle_alt;
-- What documentedExceptions draw: a function that sets work_mem inside, a sequence.
create or replace function public.oracle_set_work_mem(v text) returns text language sql
  as $$ select set_config('work_mem', v, false) $$;
create sequence if not exists public.oracle_seq;
`

func newOracle(t testing.TB) *oracle {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	sql := oracleSetup
	for i := range 4 {
		sql += fmt.Sprintf(`create table if not exists public.oracle_t%[1]d (id int primary key, v text);
insert into public.oracle_t%[1]d select g, 'c%[1]d-' || g from generate_series(1, 5) g on conflict do nothing;
create table if not exists oracle_alt.oracle_t%[1]d (id int primary key, v text);
insert into oracle_alt.oracle_t%[1]d select g, 'alt%[1]d-' || g from generate_series(1, 5) g on conflict do nothing;
create table if not exists public.oracle_log%[1]d (v text);
`, i)
	}
	if err := cluster.Exec(ctx, sql); err != nil {
		t.Fatalf("oracle setup: %v", err)
	}
	o := &oracle{probe: probeQuery(true), lightProbe: probeQuery(false)}
	for _, n := range []int32{1, 2} {
		h := newTxHarness(t, n, func(pc *pool.Config, c *Config) {
			// A client may wait for a pinned client's whole script before it gets the only
			// server connection, which a loaded machine (the race detector, other packages'
			// tests) makes slow.
			pc.ConnectTimeout = 60 * time.Second
			c.Auth = AuthTrust
			// Session mode, where nothing is shared, checks the oracle itself: it must find
			// no difference there. A client holds a server connection from login, so each
			// needs one.
			if m := os.Getenv("PGSIDECAR_ORACLE_POOL_MODE"); m != "" {
				c.PoolMode = PoolMode(m)
				pc.MaxConns = 8
			}
		})
		o.proxies = append(o.proxies, &oracleProxy{h: h, conns: int(n)})
	}
	return o
}

// renderResult is what a step returned, as text: command tag and rows, or SQLSTATE.
func renderResult(r *pgconn.Result) string {
	if r.Err != nil {
		return renderErr(r.Err)
	}
	var b strings.Builder
	b.WriteString(r.CommandTag.String())
	for _, row := range r.Rows {
		b.WriteString(" [")
		for i, v := range row {
			if i > 0 {
				b.WriteByte('|')
			}
			if v == nil {
				b.WriteString("NULL")
			} else {
				b.Write(v)
			}
		}
		b.WriteByte(']')
	}
	return b.String()
}

func renderErr(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "ERROR " + pgErr.Code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "ERROR timeout"
	}
	return "ERROR connection"
}

// oracleConn is a client connection and the named statements it prepared (as a driver's
// statement cache would, it prepares a name again only for a different text).
type oracleConn struct {
	c        *pgconn.PgConn
	prepared map[string]string
}

func (o *oracle) runStep(c *oracleConn, s step, keyOffset int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	args := make([][]byte, len(s.args))
	for i, a := range s.args {
		args[i] = []byte(a)
	}
	switch s.path {
	case pathProbe:
		probe := o.lightProbe
		if s.kind == "probe/full" {
			probe = o.probe
		}
		res, err := c.c.Exec(ctx, probe).ReadAll()
		if err != nil {
			return renderErr(err)
		}
		return string(res[0].Rows[0][0])
	case pathSimple:
		res, err := c.c.Exec(ctx, s.text(keyOffset)).ReadAll()
		var parts []string
		for _, r := range res {
			parts = append(parts, renderResult(r))
		}
		if err != nil && (len(res) == 0 || res[len(res)-1].Err == nil) {
			parts = append(parts, renderErr(err))
		}
		return strings.Join(parts, "; ")
	case pathUnnamed:
		return renderResult(c.c.ExecParams(ctx, s.text(keyOffset), args, nil, nil, nil).Read())
	case pathNamed:
		if sql := s.text(keyOffset); c.prepared[s.name] != sql {
			if _, err := c.c.Prepare(ctx, s.name, sql, nil); err != nil {
				return "prepare: " + renderErr(err)
			}
			c.prepared[s.name] = sql
		}
		return renderResult(c.c.ExecPrepared(ctx, s.name, args, nil, nil).Read())
	}
	panic("unknown path")
}

// traceEntry is one turn of the interleaving: a client ran steps [from, to).
type traceEntry struct {
	client, from, to int
	blocked          bool // it waited for a server connection past its turn
}

const oracleApp = "oracle"

var lockRuns atomic.Int64

// lockOffset moves a run's advisory lock keys away from every other run's: runs go on at once,
// and a closed session's locks outlive its connection for a moment.
func lockOffset() int { return int(lockRuns.Add(1)%100000) * 10000 }

// directURL connects to the cluster itself, over its unix socket when it has one (no SCRAM
// exchange per connection).
func directURL() string {
	if cluster.External() {
		return cluster.URL("") + "&application_name=" + oracleApp
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres application_name=%s", cluster.Dir(), cluster.Port(), oracleApp)
}

// runDirect runs each client's script alone on its own connection to the cluster.
func (o *oracle) runDirect(c *oracleCase) ([][]string, error) {
	out := make([][]string, len(c.clients))
	errs := make([]error, len(c.clients))
	offset := lockOffset()
	var wg sync.WaitGroup
	for i, cl := range c.clients {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			pc, err := pgconn.Connect(ctx, directURL())
			if err != nil {
				errs[i] = err
				return
			}
			defer pc.Close(context.Background())
			conn := &oracleConn{c: pc, prepared: map[string]string{}}
			for _, s := range cl.steps {
				out[i] = append(out[i], o.runStep(conn, s, offset))
			}
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// runProxy runs the clients through a proxy, each on its own goroutine, giving turns (a step,
// or the steps up to and including the next probe) in an order drawn from the case's seed. A
// turn that waits for a server connection (a pinned client holds it) lets the others go on.
func (o *oracle) runProxy(p *oracleProxy, c *oracleCase) ([][]string, []traceEntry, error) {
	k := len(c.clients)
	out := make([][]string, k)
	conns := make([]*oracleConn, k)
	offset := lockOffset()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range k {
		pc, err := pgconn.Connect(ctx, p.h.url("postgres", "", "application_name="+oracleApp))
		if err != nil {
			for _, cc := range conns[:i] {
				_ = cc.c.Close(context.Background())
			}
			return nil, nil, err
		}
		conns[i] = &oracleConn{c: pc, prepared: map[string]string{}}
	}
	done := make(chan int, k)
	turns := make([]chan int, k)
	var wg sync.WaitGroup
	for i := range k {
		turns[i] = make(chan int, 1)
		wg.Go(func() {
			steps, pos := c.clients[i].steps, 0
			for n := range turns[i] {
				for range n {
					out[i] = append(out[i], o.runStep(conns[i], steps[pos], offset))
					pos++
				}
				if pos == len(steps) {
					// Leaving releases a pinned server connection.
					_ = conns[i].c.Close(context.Background())
				}
				done <- i
			}
			if pos < len(steps) {
				_ = conns[i].c.Close(context.Background())
			}
		})
	}
	rng := rand.New(rand.NewPCG(c.seed, 0x5c4ed))
	planned := make([]int, k)
	busy := make([]bool, k)
	isBlocked := make([]bool, k)
	blocked := 0 // busy clients seen waiting for a server connection
	var trace []traceEntry
	finish := func(i int) {
		busy[i] = false
		if isBlocked[i] {
			isBlocked[i] = false
			blocked--
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		var cands []int
		anyBusy := false
		for i := range k {
			anyBusy = anyBusy || busy[i]
			if !busy[i] && planned[i] < len(c.clients[i].steps) {
				cands = append(cands, i)
			}
		}
		if len(cands) == 0 {
			if !anyBusy {
				break
			}
			finish(<-done)
			continue
		}
		i := cands[rng.IntN(len(cands))]
		steps := c.clients[i].steps
		n := 1
		if !c.stmtTurns {
			for planned[i]+n < len(steps) && steps[planned[i]+n-1].path != pathProbe {
				n++
			}
		}
		trace = append(trace, traceEntry{client: i, from: planned[i], to: planned[i] + n})
		planned[i] += n
		busy[i] = true
		turns[i] <- n
		// Wait for the turn, or until the client waits for a server connection.
		t0 := time.Now()
	wait:
		for {
			select {
			case j := <-done:
				finish(j)
				if j == i {
					break wait
				}
			case <-time.After(500 * time.Microsecond):
				if p.waiting() > blocked || time.Since(t0) > 300*time.Millisecond {
					trace[len(trace)-1].blocked = true
					isBlocked[i] = true
					blocked++
					break wait
				}
			}
		}
	}
	if time.Now().After(deadline) {
		err = fmt.Errorf("case did not finish in time")
	}
	for i := range k {
		close(turns[i])
	}
	go func() {
		for range done {
		}
	}()
	wg.Wait()
	close(done)
	return out, trace, err
}

// clean brings the proxy's server connections back to a fresh state between cases: every
// client gone, then each connection pinned by a client of the oracle's (a session advisory
// lock) so that it is discarded (DISCARD ALL) when that client leaves.
func (o *oracle) clean(p *oracleProxy) error {
	if err := p.waitIdle(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var cs []*pgconn.PgConn
	defer func() {
		for _, pc := range cs {
			_ = pc.Close(ctx)
		}
	}()
	for i := range p.conns {
		pc, err := pgconn.Connect(ctx, p.h.url("postgres", "", "application_name="+oracleApp))
		if err != nil {
			return fmt.Errorf("clean: %w", err)
		}
		cs = append(cs, pc)
		if _, err := pc.Exec(ctx, fmt.Sprintf("select pg_advisory_lock(%d)", 1+i)).ReadAll(); err != nil {
			return fmt.Errorf("clean: %w", err)
		}
	}
	for _, pc := range cs {
		_ = pc.Close(ctx)
	}
	cs = nil
	return p.waitIdle()
}

// gauge reads one gauge; the oracle polls a few often, which gathering the whole registry
// would make costly.
func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// waitIdle waits until no client is connected and no server connection is held, polling more
// often than harness.waitIdle: the oracle waits twice per case and proxy.
func (p *oracleProxy) waitIdle() error {
	m := p.h.srv.m
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if gauge(m.authenticating)+gauge(m.waiting)+gauge(m.active)+gauge(m.idle) == 0 && gauge(m.serverActive) == 0 {
			return nil
		}
		time.Sleep(500 * time.Microsecond)
	}
	return fmt.Errorf("the proxy's clients did not leave\nlogs:\n%s", p.h.log.String())
}

// waiting is the number of clients waiting for a server connection.
func (p *oracleProxy) waiting() int { return int(gauge(p.h.srv.m.waiting)) }

// pinCounts is the proxy's pgsidecar_proxy_pinned_sessions_total by reason.
func (p *oracleProxy) pinCounts() map[string]float64 {
	m := map[string]float64{}
	for _, r := range pinReasons {
		var d dto.Metric
		if err := p.h.srv.m.pinnedTotal.WithLabelValues(r).Write(&d); err == nil {
			m[r] = d.GetCounter().GetValue()
		}
	}
	return m
}

// oracleDiff is the first difference of a case on one proxy.
type oracleDiff struct {
	c             *oracleCase
	conns         int
	client, step  int
	proxy, direct string
	group         string
	trace         []traceEntry
	proxyResults  [][]string
	directResults [][]string
	err           error
	shrunkFrom    int // steps before shrinking
}

// compare finds the first difference, in the order the proxy ran the steps.
func compare(c *oracleCase, conns int, trace []traceEntry, prox, direct [][]string) *oracleDiff {
	for _, te := range trace {
		for s := te.from; s < te.to; s++ {
			var pv, dv string
			if s < len(prox[te.client]) {
				pv = prox[te.client][s]
			}
			if s < len(direct[te.client]) {
				dv = direct[te.client][s]
			}
			if pv != dv {
				st := c.clients[te.client].steps[s]
				return &oracleDiff{c: c, conns: conns, client: te.client, step: s, proxy: pv, direct: dv,
					group: diffGroup(st, pv, dv), trace: trace, proxyResults: prox, directResults: direct}
			}
		}
	}
	return nil
}

// diffGroup names what differs: a field of the probe (and which settings), or the result of a
// kind of statement.
func diffGroup(st step, pv, dv string) string {
	if st.path != pathProbe {
		return "result of " + st.kind
	}
	pf, df := strings.Split(pv, " | "), strings.Split(dv, " | ")
	if len(pf) != len(df) {
		return "probe failed: " + pv
	}
	var fields []string
	for i := range pf {
		if pf[i] == df[i] {
			continue
		}
		name, pval, _ := strings.Cut(pf[i], "=")
		_, dval, _ := strings.Cut(df[i], "=")
		if name == "settings" {
			fields = append(fields, "settings("+strings.Join(settingsDiff(pval, dval), ",")+")")
		} else {
			fields = append(fields, name)
		}
	}
	return "probe " + strings.Join(fields, " ")
}

// probeDiff keeps the fields of two probes that differ, and of settings those that differ.
func probeDiff(a, b string) (string, string) {
	af, bf := strings.Split(a, " | "), strings.Split(b, " | ")
	if len(af) != len(bf) {
		// One side failed: the other's whole probe says little.
		short := func(s string) string {
			if len(s) > 120 {
				return s[:120] + "..."
			}
			return s
		}
		return short(a), short(b)
	}
	var ao, bo []string
	for i := range af {
		if af[i] == bf[i] {
			continue
		}
		name, av, _ := strings.Cut(af[i], "=")
		_, bv, _ := strings.Cut(bf[i], "=")
		if name == "settings" {
			am, bm := settingsMap(av), settingsMap(bv)
			var as, bs []string
			val := func(m map[string]string, k string) string {
				if v, ok := m[k]; ok {
					return v
				}
				return "(built-in default)"
			}
			for _, k := range settingsDiff(av, bv) {
				as = append(as, k+"="+val(am, k))
				bs = append(bs, k+"="+val(bm, k))
			}
			ao, bo = append(ao, "settings: "+strings.Join(as, ", ")), append(bo, "settings: "+strings.Join(bs, ", "))
			continue
		}
		ao, bo = append(ao, af[i]), append(bo, bf[i])
	}
	return strings.Join(ao, " | "), strings.Join(bo, " | ")
}

// settingsMap reads the probe's name=value list. Values hold no ";".
func settingsMap(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

func settingsDiff(a, b string) []string {
	am, bm := settingsMap(a), settingsMap(b)
	var out []string
	for k, v := range am {
		if bm[k] != v {
			out = append(out, k)
		}
	}
	for k := range bm {
		if _, ok := am[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// excepted returns the documented exception that covers the case, or nil.
func excepted(c *oracleCase) *oracleException {
	for i, e := range documentedExceptions {
		for _, cl := range c.clients {
			for _, s := range cl.steps {
				if s.kind == e.kind {
					return &documentedExceptions[i]
				}
			}
		}
	}
	return nil
}

// proxyRun is a case's run through one proxy.
type proxyRun struct {
	p       *oracleProxy
	results [][]string
	trace   []traceEntry
	pins    map[string]float64 // sessions pinned, by reason
	err     error
}

// runOn runs a case through a proxy, then cleans the proxy for the next case.
func (o *oracle) runOn(p *oracleProxy, c *oracleCase) *proxyRun {
	r := &proxyRun{p: p, pins: map[string]float64{}}
	before := p.pinCounts()
	r.results, r.trace, r.err = o.runProxy(p, c)
	for reason, v := range p.pinCounts() {
		if d := v - before[reason]; d > 0 {
			r.pins[reason] = d
		}
	}
	if err := o.clean(p); err != nil && r.err == nil {
		r.err = err
	}
	return r
}

// checkOn runs a case on some proxies and directly, all at once (each run's advisory lock keys
// are its own), and returns the first difference on each proxy.
func (o *oracle) checkOn(ps []*oracleProxy, c *oracleCase) ([]*oracleDiff, map[string]float64, error) {
	var direct [][]string
	var derr error
	runs := make([]*proxyRun, len(ps))
	var wg sync.WaitGroup
	wg.Go(func() { direct, derr = o.runDirect(c) })
	for i, p := range ps {
		wg.Go(func() { runs[i] = o.runOn(p, c) })
	}
	wg.Wait()
	if derr != nil {
		return nil, nil, fmt.Errorf("direct run of seed %d: %w", c.seed, derr)
	}
	var diffs []*oracleDiff
	pins := map[string]float64{}
	for _, r := range runs {
		for reason, v := range r.pins {
			pins[reason] += v
		}
		if r.err != nil {
			diffs = append(diffs, &oracleDiff{c: c, conns: r.p.conns, err: r.err, group: "runner: " + r.err.Error(), trace: r.trace})
			continue
		}
		if d := compare(c, r.p.conns, r.trace, r.results, direct); d != nil {
			if e := excepted(c); e != nil {
				// Documented (e.why): counted, not failed.
				o.excused.Add(1)
				o.mu.Lock()
				if o.excusedKind == nil {
					o.excusedKind = map[string]int{}
				}
				o.excusedKind[e.kind]++
				o.mu.Unlock()
				continue
			}
			diffs = append(diffs, d)
		}
	}
	return diffs, pins, nil
}

// shrink drops clients, then steps, while some difference remains on the same proxy.
func (o *oracle) shrink(d *oracleDiff, budget time.Duration) *oracleDiff {
	var p *oracleProxy
	for _, q := range o.proxies {
		if q.conns == d.conns {
			p = q
		}
	}
	total := 0
	for _, cl := range d.c.clients {
		total += len(cl.steps)
	}
	end := time.Now().Add(budget)
	try := func(c *oracleCase) *oracleDiff {
		ds, _, err := o.checkOn([]*oracleProxy{p}, c)
		if err != nil || len(ds) == 0 || ds[0].err != nil {
			return nil
		}
		return ds[0]
	}
	best := d
	for i := len(best.c.clients) - 1; i >= 0 && len(best.c.clients) > 1 && time.Now().Before(end); i-- {
		c := best.c.clone()
		c.clients = slices.Delete(c.clients, i, i+1)
		if nd := try(c); nd != nil {
			best = nd
		}
	}
	for progress := true; progress && time.Now().Before(end); {
		progress = false
		for ci := len(best.c.clients) - 1; ci >= 0; ci-- {
			for si := len(best.c.clients[ci].steps) - 1; si >= 0 && time.Now().Before(end); si-- {
				if si >= len(best.c.clients[ci].steps) {
					continue
				}
				c := best.c.clone()
				c.clients[ci].steps = slices.Delete(c.clients[ci].steps, si, si+1)
				if nd := try(c); nd != nil {
					best, progress = nd, true
				}
			}
		}
	}
	best.shrunkFrom = total
	return best
}

// String is the difference as a person reads it: the steps in the order the proxy ran them,
// with both results where they differ.
func (d *oracleDiff) String() string {
	var b strings.Builder
	mode := "a transaction (and its probe) per turn"
	if d.c.stmtTurns {
		mode = "a statement per turn"
	}
	steps := 0
	for _, cl := range d.c.clients {
		steps += len(cl.steps)
	}
	fmt.Fprintf(&b, "seed=%d, %d server connection(s), %s; %s", d.c.seed, d.conns, mode, d.group)
	if d.shrunkFrom > 0 {
		fmt.Fprintf(&b, " (shrunk from %d steps to %d)", d.shrunkFrom, steps)
	}
	b.WriteString("\n")
	if d.err != nil {
		fmt.Fprintf(&b, "  %v\n", d.err)
	}
	for _, cl := range d.c.clients {
		if cl.orm != "" {
			fmt.Fprintf(&b, "  client %d imitates %s\n", cl.id, cl.orm)
		}
	}
	for _, te := range d.trace {
		for s := te.from; s < te.to; s++ {
			st := d.c.clients[te.client].steps[s]
			fmt.Fprintf(&b, "  c%d  %s\n", d.c.clients[te.client].id, st)
			var pv, dv string
			if s < len(d.proxyResults[te.client]) {
				pv = d.proxyResults[te.client][s]
			}
			if s < len(d.directResults[te.client]) {
				dv = d.directResults[te.client][s]
			}
			switch {
			case pv == dv && st.path == pathProbe:
				b.WriteString("        -> (the same state)\n")
			case pv == dv:
				fmt.Fprintf(&b, "        -> %s\n", pv)
			case st.path == pathProbe:
				pv, dv = probeDiff(pv, dv)
				fmt.Fprintf(&b, "        -> proxy:  %s\n        -> direct: %s\n", pv, dv)
			default:
				fmt.Fprintf(&b, "        -> proxy:  %s\n        -> direct: %s\n", pv, dv)
			}
			if te.client == d.client && s == d.step {
				b.WriteString("        ^^^ first difference\n")
				return b.String()
			}
		}
		if te.blocked {
			fmt.Fprintf(&b, "  c%d  (waits for a server connection)\n", d.c.clients[te.client].id)
		}
	}
	return b.String()
}

// oracleRegressionSeeds are cases the long run found, run ahead of the default range: a named
// Parse of a statement the proxy knew, or a DEALLOCATE, in a failed transaction was answered by
// the proxy where the server refuses it (25P02).
var oracleRegressionSeeds = []uint64{101275, 108484, 114884, 100575, 107363, 117604}

// TestIsolationOracle runs generated cases (see the top of this file).
func TestIsolationOracle(t *testing.T) {
	only := os.Getenv("PGSIDECAR_ORACLE_ONLY")
	if only != "" && only != "orm" && only != "unseen" && !slices.Contains(oracleCategories, only) {
		t.Fatalf("PGSIDECAR_ORACLE_ONLY=%s: want orm, unseen or one of %v", only, oracleCategories)
	}
	o := newOracle(t)
	want := envInt("PGSIDECAR_ORACLE_SCRIPTS", 2000)
	seed := uint64(envInt("PGSIDECAR_ORACLE_SEED", 1))
	show := envInt("PGSIDECAR_ORACLE_SHOW", 5)
	type group struct {
		n     int
		first *oracleDiff
	}
	groups := map[string]*group{}
	ormPins := map[string]map[string]float64{}
	scripts, cases, failed := 0, 0, 0
	start := time.Now()
	seeds := func(yield func(uint64) bool) {
		if only == "" && os.Getenv("PGSIDECAR_ORACLE_SEED") == "" {
			for _, s := range oracleRegressionSeeds {
				if !yield(s) {
					return
				}
			}
		}
		for ; scripts < want; seed++ {
			if !yield(seed) {
				return
			}
		}
	}
	for seed := range seeds {
		c := genCase(seed, only)
		scripts += c.scripts()
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			cases++
			diffs, pins, err := o.checkOn(o.proxies, c)
			if err != nil {
				t.Fatal(err)
			}
			if len(diffs) > 0 {
				failed++
			}
			for _, d := range diffs {
				g := groups[d.group]
				if g == nil {
					g = &group{first: d}
					groups[d.group] = g
				}
				g.n++
			}
			if orm := c.clients[0].orm; orm != "" {
				for r, v := range pins {
					if ormPins[orm] == nil {
						ormPins[orm] = map[string]float64{}
					}
					ormPins[orm][r] += v
				}
			}
		})
	}
	t.Logf("%d cases (%d client scripts) in %v; %d runs differed only where a documented exception was drawn %v",
		cases, scripts, time.Since(start).Round(time.Millisecond), o.excused.Load(), o.excusedKind)
	if os.Getenv("PGSIDECAR_ORACLE_ONLY") == "unseen" && o.excused.Load() == 0 {
		t.Error("no run differed where the README's table says a proxy cannot see: is the grammar still drawing them?")
	}
	for orm, pins := range ormPins {
		t.Errorf("clients imitating %s were pinned: %v (want none)", orm, pins)
	}
	if failed == 0 {
		return
	}
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return groups[names[i]].n > groups[names[j]].n })
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d cases differ from direct connections; by first difference:\n", failed, cases)
	for _, n := range names {
		fmt.Fprintf(&b, "  %5d  %s (e.g. seed=%d)\n", groups[n].n, n, groups[n].first.c.seed)
	}
	for i, n := range names {
		if i >= show {
			fmt.Fprintf(&b, "(%d more groups; PGSIDECAR_ORACLE_SHOW=n shows more)\n", len(names)-i)
			break
		}
		d := groups[n].first
		if d.err == nil {
			d = o.shrink(d, 10*time.Second)
		}
		fmt.Fprintf(&b, "\n%s", d)
	}
	t.Error(b.String())
}

var fuzzOracle struct {
	once sync.Once
	o    *oracle
}

// FuzzIsolation runs the case of a seed through the oracle.
func FuzzIsolation(f *testing.F) {
	f.Add(uint64(1))
	f.Add(uint64(77))
	var cleanups []func()
	f.Cleanup(func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	})
	f.Fuzz(func(t *testing.T, seed uint64) {
		fuzzOracle.once.Do(func() {
			if cluster == nil {
				// Fuzz workers start no cluster in TestMain; this one outlives the target, and
				// the cluster's watchdog stops it when the worker exits.
				c, err := pgtest.Start(pgtest.Options{MaxConnections: 50})
				if err != nil {
					t.Fatal(err)
				}
				cluster = c
			}
			fuzzOracle.o = newOracle(keepTB{TB: t, cleanups: &cleanups})
		})
		o := fuzzOracle.o
		if o == nil {
			t.Skip("no oracle")
		}
		c := genCase(seed, "")
		diffs, pins, err := o.checkOn(o.proxies, c)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range diffs {
			if d.err == nil {
				d = o.shrink(d, 10*time.Second)
			}
			t.Errorf("%s", d)
		}
		if orm := c.clients[0].orm; orm != "" && len(pins) > 0 {
			t.Errorf("seed=%d: clients imitating %s were pinned: %v", seed, orm, pins)
		}
	})
}
