package proxy

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// The isolation oracle's generator: deterministic scripts, by seed, of what clients send in
// transaction mode, mixing statements that change session state with statements that read it.
// Each client works on its own tables (made in setup), so that its results differ from those of
// the same script run alone on a direct connection only through session state leaking in or
// out of it.

// protoPath is how a statement reaches the server.
type protoPath uint8

const (
	pathSimple  protoPath = iota // Query (pgconn Exec); may hold several statements
	pathUnnamed                  // Parse/Bind/Execute of the unnamed statement (ExecParams)
	pathNamed                    // a named statement (Prepare, then ExecPrepared)
	pathProbe                    // the oracle's reading of the session's state
)

func (p protoPath) String() string {
	return [...]string{"simple", "unnamed", "named", "probe"}[p]
}

// step is one request of a client script.
type step struct {
	kind string // grammar production, "category/detail", for reading and grouping
	path protoPath
	sql  string
	args []string
	name string // statement name on pathNamed
	key  int    // an advisory lock key: sql has a %d for it
}

// text is the statement's SQL, with its advisory lock key moved by offset.
func (s step) text(offset int) string {
	if s.key != 0 {
		return fmt.Sprintf(s.sql, s.key+offset)
	}
	return s.sql
}

func (s step) String() string {
	if s.kind == "probe/full" {
		return "-- probe (all settings)"
	}
	if s.path == pathProbe {
		return "-- probe"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%s", s.path)
	if s.name != "" {
		fmt.Fprintf(&b, " %s", s.name)
	}
	b.WriteString("] ")
	b.WriteString(s.text(0))
	if len(s.args) > 0 {
		fmt.Fprintf(&b, "   $=%q", s.args)
	}
	return b.String()
}

// clientScript is what one client of a case sends, in order.
type clientScript struct {
	id    int    // client number in its case: its tables are oracle_t<id>, oracle_log<id>
	orm   string // the driver or ORM whose traffic it imitates, or "" for the general grammar
	steps []step
}

// oracleCase is K clients' scripts and how the runner interleaves them.
type oracleCase struct {
	seed      uint64
	clients   []clientScript
	stmtTurns bool // interleave at statement granularity (else a transaction and its probe at a time)
}

func (c *oracleCase) scripts() int { return len(c.clients) }

func (c *oracleCase) clone() *oracleCase {
	n := *c
	n.clients = make([]clientScript, len(c.clients))
	for i, cl := range c.clients {
		n.clients[i] = cl
		n.clients[i].steps = append([]step(nil), cl.steps...)
	}
	return &n
}

// oracleCategories are the families of state changes the general grammar draws from;
// PGSIDECAR_ORACLE_ONLY narrows it to one.
var oracleCategories = []string{"set", "set_config", "role", "isolation", "temp", "advisory", "listen",
	"prepare", "cursor", "discard", "wrapper", "multi"}

// PGSIDECAR_ORACLE_ONLY=unseen draws a documented exception into every case.

// gen draws scripts from a seed.
type gen struct {
	r     *rand.Rand
	only  string // one category of oracleCategories, or ""
	id    int    // the client being generated
	locks int    // advisory lock keys drawn for this client
	held  []int
	named int // statement names drawn
}

func (g *gen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }
func (g *gen) chance(p float64) bool    { return g.r.Float64() < p }

// genCase draws one case. orm cases are made of clients of a single ORM flavour, so that the
// pins they cause can be attributed to it.
func genCase(seed uint64, only string) *oracleCase {
	r := rand.New(rand.NewPCG(seed, 0x0dd1c0de))
	c := &oracleCase{seed: seed, stmtTurns: r.IntN(3) == 0}
	k := 2 + r.IntN(3)
	flavour := ""
	if only == "" && r.IntN(5) == 0 {
		flavour = ormFlavours[r.IntN(len(ormFlavours))]
	}
	if only == "orm" {
		flavour = ormFlavours[r.IntN(len(ormFlavours))]
	}
	general := only
	if only == "unseen" {
		general = ""
	}
	for id := range k {
		g := &gen{r: r, only: general, id: id}
		cs := clientScript{id: id, orm: flavour}
		if flavour != "" {
			cs.steps = withFullProbe(g.ormScript(flavour))
		} else {
			cs.steps = withFullProbe(g.script())
		}
		c.clients = append(c.clients, cs)
	}
	if only == "" || only == "unseen" {
		drawUnseen(c, only == "unseen")
	}
	return c
}

// unseenSteps are what no proxy can see (the README's table): each is a documented exception
// (documentedExceptions), drawn into a few cases so that the oracle shows it happens as the
// README says, and the rest of those cases is still compared.
var unseenSteps = []step{
	// A function whose body sets a setting no ParameterStatus reports.
	{kind: "unseen/function_set_config", path: pathSimple, sql: "select oracle_set_work_mem('7MB')"},
	// lastval() in a later transaction than its nextval().
	{kind: "unseen/lastval", path: pathSimple, sql: "select nextval('oracle_seq') > 0 as drawn"},
	// Statements after RESET ALL in the same text see the server's defaults for start-up
	// parameters.
	{kind: "unseen/reset_all_then_read", path: pathSimple, sql: "RESET ALL; select current_setting('application_name') as app"},
}

// drawUnseen adds one of unseenSteps to one client of about one case in 30 (every case when
// all is set), from a random stream of its own, so that the rest of the grammar draws the same
// scripts with or without it. A lastval step is followed, after a probe, by its lastval().
func drawUnseen(c *oracleCase, all bool) {
	r := rand.New(rand.NewPCG(c.seed, 0x5eeabe))
	if !all && r.IntN(30) != 0 {
		return
	}
	u := unseenSteps[r.IntN(len(unseenSteps))]
	cl := &c.clients[r.IntN(len(c.clients))]
	add := []step{u, probeStep()}
	if u.kind == "unseen/lastval" {
		add = append(add, step{kind: u.kind, path: pathSimple, sql: "select lastval() > 0 as same_session"}, probeStep())
	}
	cl.steps = append(add, cl.steps...)
}

func probeStep() step { return step{kind: "probe", path: pathProbe} }

// withFullProbe makes a script's last probe the full one, which reads every setting from
// pg_settings (ten times the cost of the others, which read a list of settings).
func withFullProbe(steps []step) []step {
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i].path == pathProbe {
			steps[i].kind = "probe/full"
			break
		}
	}
	return steps
}

// script is 2-4 units (a statement or two, or a transaction), each followed by a probe.
func (g *gen) script() []step {
	var out []step
	for range 2 + g.r.IntN(3) {
		if g.chance(0.4) {
			out = append(out, g.transaction()...)
		} else {
			for range 1 + g.r.IntN(2) {
				out = append(out, g.statement(false))
			}
		}
		out = append(out, probeStep())
	}
	return out
}

// transaction is BEGIN, a few statements (sometimes a savepoint rolled back, or an error), and
// COMMIT or ROLLBACK.
func (g *gen) transaction() []step {
	out := []step{g.onPath("tx/begin", g.pick("begin", "BEGIN", "start transaction", "BEGIN ISOLATION LEVEL REPEATABLE READ", "begin read write"))}
	for range 1 + g.r.IntN(3) {
		switch g.r.IntN(10) {
		case 0:
			out = append(out, g.simple("tx/savepoint", "savepoint sp1"), g.statement(true), g.simple("tx/rollback_to", g.pick("rollback to savepoint sp1", "ROLLBACK TO sp1")))
		case 1:
			out = append(out, g.onPath("tx/error", "select 1/0"))
		case 2:
			out = append(out, g.simple("tx/set_local", "set local statement_timeout = '10ms'"), g.simple("tx/timeout", "select pg_sleep(0.05)"))
		default:
			out = append(out, g.statement(true))
		}
	}
	return append(out, g.onPath("tx/end", g.pick("commit", "COMMIT", "end", "rollback", "ROLLBACK", "abort")))
}

// statement is a state change (most of the time) or a read of state.
func (g *gen) statement(inTx bool) step {
	if g.chance(0.3) {
		return g.reader()
	}
	cat := g.only
	if cat == "" || cat == "orm" {
		cat = oracleCategories[g.r.IntN(len(oracleCategories))]
	}
	return g.change(cat, inTx)
}

// onPath puts a single statement without parameters on any path.
func (g *gen) onPath(kind, sql string) step {
	switch g.r.IntN(4) {
	case 0:
		return g.unnamed(kind, sql)
	case 1:
		return g.namedStep(kind, sql)
	default:
		return g.simple(kind, sql)
	}
}

// withArgs puts a statement with parameters on one of the extended paths.
func (g *gen) withArgs(kind, sql string, args ...string) step {
	s := g.unnamed(kind, sql)
	if g.chance(0.5) {
		s = g.namedStep(kind, sql)
	}
	s.args = args
	return s
}

func (g *gen) simple(kind, sql string) step  { return step{kind: kind, path: pathSimple, sql: sql} }
func (g *gen) unnamed(kind, sql string) step { return step{kind: kind, path: pathUnnamed, sql: sql} }
func (g *gen) namedStep(kind, sql string) step {
	g.named++
	return step{kind: kind, path: pathNamed, sql: sql, name: fmt.Sprintf("st%d", g.named)}
}

// settingValues are settings with values no client has at startup, in SET's value syntax.
var settingValues = []struct {
	name, spelled string
	values        []string
}{
	{"statement_timeout", "statement_timeout", []string{"'7s'", "9000", "'11s'"}},
	{"search_path", "search_path", []string{"oracle_alt, public", "'oracle_alt'", "public, oracle_alt"}},
	{"work_mem", "work_mem", []string{"'8MB'", "'5MB'", "6000"}},
	{"TimeZone", "TimeZone", []string{"'Asia/Tokyo'", "'Europe/Lisbon'", "'America/New_York'"}},
	{"DateStyle", "datestyle", []string{"'SQL, DMY'", "'German'", "'ISO, YMD'"}},
	{"application_name", "application_name", []string{"'app_x'", "'oracle_b'"}},
	{"client_min_messages", "client_min_messages", []string{"warning", "error", "'log'"}},
	{"app.tenant", "app.tenant", []string{"'acme'", "'globex'", "'initech'"}},
	{"IntervalStyle", "intervalstyle", []string{"iso_8601", "'sql_standard'"}},
}

func (g *gen) setting() (name, spelled, value string) {
	s := settingValues[g.r.IntN(len(settingValues))]
	return s.name, s.spelled, s.values[g.r.IntN(len(s.values))]
}

func unquote(v string) string { return strings.Trim(v, "'") }

// change draws a state change of a category.
func (g *gen) change(cat string, inTx bool) step {
	t := fmt.Sprintf("oracle_t%d", g.id)
	switch cat {
	case "set":
		name, spelled, v := g.setting()
		switch g.r.IntN(9) {
		case 0:
			return g.onPath("set/reset", g.pick("RESET ", "reset ")+spelled)
		case 1:
			return g.onPath("set/reset_all", g.pick("RESET ALL", "reset all"))
		case 2:
			return g.onPath("set/default", "set "+spelled+" to default")
		case 3:
			return g.onPath("set/local", "SET LOCAL "+spelled+" = "+v)
		case 4:
			if name == "TimeZone" {
				return g.onPath("set/time_zone", "SET TIME ZONE "+g.pick(v, "LOCAL", "'UTC'"))
			}
			return g.onPath("set/session", "SET SESSION "+spelled+" TO "+v)
		case 5:
			return g.onPath("set/odd_spacing", "  SeT\n\t"+spelled+"   =   "+v+"  ")
		default:
			return g.onPath("set/plain", g.pick("SET ", "set ")+spelled+g.pick(" = ", " TO ", " to ")+v)
		}
	case "set_config":
		name, _, v := g.setting()
		local := "false"
		if g.chance(0.25) {
			local = "true"
		}
		fn := g.pick("set_config", "pg_catalog.set_config", `"set_config"`, "SET_CONFIG", `pg_catalog."set_config"`)
		switch g.r.IntN(6) {
		case 0:
			return g.withArgs("set_config/param_value", fmt.Sprintf("select %s('%s', $1, %s)", fn, name, local), unquote(v))
		case 1:
			return g.withArgs("set_config/param_name", "select set_config($1, $2, false)", name, unquote(v))
		case 2:
			return g.onPath("set_config/spaced", fmt.Sprintf("SELECT %s ( '%s' , '%s' , %s ) AS x", fn, name, unquote(v), strings.ToUpper(local)))
		default:
			return g.onPath("set_config/plain", fmt.Sprintf("select %s('%s', '%s', %s)", fn, name, unquote(v), local))
		}
	case "role":
		switch g.r.IntN(7) {
		case 0:
			return g.onPath("role/reset", g.pick("RESET ROLE", "set role none", "reset role"))
		case 1:
			return g.onPath("role/session_authorization", "SET SESSION AUTHORIZATION oracle_role")
		case 2:
			return g.onPath("role/reset_session_authorization", g.pick("RESET SESSION AUTHORIZATION", "set session authorization default"))
		case 3:
			return g.onPath("role/set_config", "select set_config('role', 'oracle_role', false)")
		case 4:
			return g.onPath("role/local", "SET LOCAL ROLE oracle_role")
		default:
			return g.onPath("role/set", g.pick("SET ROLE oracle_role", "set role 'oracle_role'", "SET SESSION ROLE oracle_role"))
		}
	case "isolation":
		return g.onPath("isolation/characteristics", g.pick(
			"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
			"set session characteristics as transaction isolation level repeatable read",
			"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
			"set default_transaction_isolation = 'serializable'",
			"SET default_transaction_read_only = on",
			"reset default_transaction_isolation"))
	case "temp":
		if inTx && g.chance(0.3) {
			return g.onPath("temp/on_commit_drop", "create temp table tmp_d (x int) on commit drop")
		}
		return g.onPath("temp/create", g.pick(
			"CREATE TEMP TABLE tmp_a (x int)",
			"create temporary table tmp_a as select 1 as x",
			"SELECT 1 AS x INTO TEMP tmp_b",
			"select 2 as x into temporary table tmp_b",
			"CREATE TABLE pg_temp.tmp_c (x int)",
			"create temp view tmp_v as select 1 as x",
			"CREATE TEMP SEQUENCE tmp_s",
			"drop table if exists tmp_a"))
	case "advisory":
		// Every lock takes a key of its own (offset per run, as the runs share the cluster),
		// so that a lock left on a server connection never makes a later statement wait.
		lock := func(kind, tmpl string, k int) step {
			s := g.onPath(kind, tmpl)
			s.key = k
			return s
		}
		if len(g.held) > 0 && g.chance(0.3) {
			return lock("advisory/unlock", "select pg_advisory_unlock(%d)", g.held[g.r.IntN(len(g.held))])
		}
		if g.chance(0.1) {
			g.held = nil
			return g.onPath("advisory/unlock_all", "select pg_advisory_unlock_all()")
		}
		g.locks++
		k := 1000*(g.id+1) + g.locks
		if inTx && g.chance(0.4) {
			return lock("advisory/xact", "select pg_advisory_xact_lock(%d)", k)
		}
		g.held = append(g.held, k)
		switch g.r.IntN(3) {
		case 0:
			return lock("advisory/try", "select pg_try_advisory_lock(%d)", k)
		case 1:
			return lock("advisory/qualified", "SELECT pg_catalog.pg_advisory_lock(%d)", k)
		default:
			return lock("advisory/lock", "select pg_advisory_lock(%d)", k)
		}
	case "listen":
		ch := fmt.Sprintf("oracle_ch%d", g.id)
		return g.onPath("listen/"+g.pick("listen", "unlisten"), g.pick("LISTEN "+ch, `listen "`+ch+`"`, "UNLISTEN "+ch, "unlisten *", "LISTEN "+ch))
	case "prepare":
		switch g.r.IntN(5) {
		case 0:
			return g.onPath("prepare/execute", g.pick("EXECUTE ps_a(1)", "execute ps_b(2)"))
		case 1:
			return g.onPath("prepare/deallocate", g.pick("DEALLOCATE ps_a", "deallocate prepare ps_b", "DEALLOCATE ALL"))
		default:
			return g.onPath("prepare/prepare", g.pick("PREPARE ps_a AS select v from "+t+" where id = $1",
				"prepare ps_b (int) as select $1 + 1"))
		}
	case "cursor":
		if g.chance(0.3) {
			return g.onPath("cursor/close", g.pick("CLOSE cur_h", "close all", "FETCH 1 FROM cur_h"))
		}
		return g.onPath("cursor/declare_hold", g.pick("DECLARE cur_h CURSOR WITH HOLD FOR select v from "+t+" order by id",
			"declare cur_h no scroll cursor with  hold for select 1"))
	case "discard":
		return g.onPath("discard/"+g.pick("all", "other"), g.pick("DISCARD ALL", "discard all", "DISCARD TEMP", "discard plans", "DISCARD SEQUENCES", "LOAD 'plpgsql'"))
	case "wrapper":
		name, _, v := g.setting()
		switch g.r.IntN(5) {
		case 0:
			return g.onPath("wrapper/cte", fmt.Sprintf("with x as (select set_config('%s', '%s', false) as v) select v from x", name, unquote(v)))
		case 1:
			return g.onPath("wrapper/subquery", fmt.Sprintf("select (select set_config('%s', '%s', false)) as v", name, unquote(v)))
		case 2:
			return g.simple("wrapper/do_set_config", fmt.Sprintf("DO $$ BEGIN PERFORM set_config('%s', '%s', false); END $$", name, unquote(v)))
		case 3:
			return g.simple("wrapper/do_execute", fmt.Sprintf("do $body$ begin execute 'SET %s = ' || quote_literal('%s'); end $body$", name, unquote(v)))
		default:
			return g.simple("wrapper/do_temp", "DO $$ BEGIN CREATE TEMP TABLE tmp_e (x int); END $$")
		}
	case "multi":
		_, spelled, v := g.setting()
		pre := g.pick(`select 'a;b' as s`, `select E'it\'s; ok' as s`, `select $q$;'"$q$ as s`, `select 1 /* ; */ as s`,
			"select 1 -- ;\n", `select ';' as "x;y"`)
		switch g.r.IntN(3) {
		case 0:
			return g.simple("multi/set_then_read", "SET "+spelled+" = "+v+"; select current_setting('"+spelled+"')")
		case 1:
			return g.simple("multi/quoted_then_set", pre+"; set "+spelled+" to "+v)
		default:
			return g.simple("multi/read_set_read", pre+"; SET "+spelled+" = "+v+"; select v from "+t+" where id = 2")
		}
	}
	panic("unknown category " + cat)
}

// reader draws a statement whose result depends on session state.
func (g *gen) reader() step {
	t := fmt.Sprintf("oracle_t%d", g.id)
	switch g.r.IntN(9) {
	case 0:
		return g.withArgs("read/own_table_param", "select v from "+t+" where id = $1", "3")
	case 1:
		return g.onPath("read/temp", g.pick("select count(*) from tmp_a", "select x from tmp_b", "select * from pg_temp.tmp_c"))
	case 2:
		// A custom setting once defined on a backend reads as '' ever after, not NULL: no proxy
		// can undo that short of closing the connection, so both count as unset.
		return g.withArgs("read/current_setting", "select coalesce(nullif(current_setting($1, true), ''), '<unset>')", g.pick("app.tenant", "work_mem", "search_path", "TimeZone"))
	case 3:
		return g.onPath("read/timestamptz", "select to_char(timestamptz '2020-01-01 00:00:00+00', 'YYYY-MM-DD HH24:MI TZ') as ts, date '2020-03-04'::text as d, interval '1 day 2 hours'::text as i")
	case 4:
		return g.onPath("read/show", "SHOW "+g.pick("work_mem", "search_path", "TimeZone", "DateStyle", "statement_timeout", "client_min_messages", "transaction_isolation"))
	case 5:
		return g.onPath("read/write_log", fmt.Sprintf("insert into oracle_log%d (v) values ('w') returning v", g.id))
	default:
		return g.onPath("read/own_table", "select v from "+t+" where id = 1")
	}
}

// ormFlavours are the drivers and ORMs whose traffic the orm cases imitate.
var ormFlavours = []string{"pgx", "node-postgres", "psycopg", "django", "rails", "sequelize", "prisma"}

// ormScript is what a flavour sends: its connect-time statements, then 2-4 units of reads,
// writes and transactions, each followed by a probe. None of it should pin.
func (g *gen) ormScript(flavour string) []step {
	t, log := fmt.Sprintf("oracle_t%d", g.id), fmt.Sprintf("oracle_log%d", g.id)
	var out []step
	id := func() string { return fmt.Sprint(1 + g.r.IntN(5)) }
	// pgx names its cached statements after their text; Rails numbers them.
	stmt := func(sql string, args ...string) step {
		s := step{kind: "orm/" + flavour, sql: sql, args: args}
		switch flavour {
		case "pgx":
			s.path, s.name = pathNamed, fmt.Sprintf("stmtcache_%08x", hashString(sql))
		case "rails":
			s.path, s.name = pathNamed, fmt.Sprintf("a%d", 1+hashString(sql)%7)
		case "psycopg":
			s.path = pathSimple
			s.sql = strings.ReplaceAll(sql, "$1", "'"+strings.Join(args, "")+"'")
			s.args = nil
		default:
			s.path = pathUnnamed
		}
		return s
	}
	plain := func(sql string) step { return step{kind: "orm/" + flavour, path: pathSimple, sql: sql} }
	switch flavour {
	case "django":
		s := stmt("SELECT set_config('TimeZone', $1, false)", g.pick("UTC", "Europe/Paris"))
		out = append(out, s)
	case "rails":
		out = append(out, plain("SET client_min_messages TO 'warning'"), plain("SET standard_conforming_strings = on"),
			plain("SET intervalstyle = iso_8601"), plain("SET SESSION timezone TO 'UTC'"))
	case "sequelize":
		out = append(out, plain("SET client_min_messages TO warning; SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE"))
	case "psycopg":
		if g.chance(0.5) {
			out = append(out, plain("SET DateStyle = 'ISO'"))
		}
	}
	out = append(out, probeStep())
	for range 2 + g.r.IntN(3) {
		switch g.r.IntN(3) {
		case 0:
			out = append(out, stmt("select v from "+t+" where id = $1", id()))
		case 1:
			out = append(out, plain(g.pick("BEGIN", "begin")), stmt("insert into "+log+" (v) values ($1) returning v", "o"),
				stmt("select v from "+t+" where id = $1", id()), plain(g.pick("COMMIT", "commit")))
		default:
			out = append(out, plain("BEGIN"), stmt("select count(*) from "+t+" where id > $1", id()), plain("ROLLBACK"))
		}
		if flavour == "prisma" && g.chance(0.3) {
			out = append(out, plain("DEALLOCATE ALL"))
		}
		out = append(out, probeStep())
	}
	return out
}

func hashString(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}
