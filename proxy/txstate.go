package proxy

import (
	"container/list"
	"strconv"
	"strings"
	"sync"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Transaction mode keeps three kinds of state that PostgreSQL keeps per session, so that a client
// can move between server connections: its prepared statements (mapped onto statements shared by
// every client and prepared lazily on each server connection), the settings drivers rely on
// (applied on checkout where the server connection's differ), and the reasons it cannot move at
// all (pins).

// pstmt is a prepared statement shared by the clients that prepared the same text with the same
// parameter types, under one server-side name.
type pstmt struct {
	key  string // the Parse body after the statement name: query, parameter count and types
	name string // its name on server connections
	refs int    // client statements mapped to it
	op   pool.Operation
	sql  string
	eff  sessionsql.Effect // what running it does to the session
}

// parseBody is the body of a Parse that prepares st under its server-side name.
func (st *pstmt) parseBody() []byte {
	b := make([]byte, 0, len(st.name)+1+len(st.key))
	b = append(b, st.name...)
	b = append(b, 0)
	return append(b, st.key...)
}

// stmtRegistry holds the proxy-wide statements, keyed by text and parameter types.
type stmtRegistry struct {
	analysis *sessionsql.Cache

	mu    sync.Mutex
	byKey map[string]*pstmt
	next  uint64
}

// get returns the statement for key, creating it, and counts a client reference to it.
func (r *stmtRegistry) get(key string) *pstmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.byKey[key]; st != nil {
		st.refs++
		return st
	}
	r.next++
	sqlb, _ := cbytes([]byte(key))
	sql := sqlPrefix(sqlb)
	st := &pstmt{key: key, name: "pgsidecar_" + strconv.FormatUint(r.next, 10), refs: 1,
		op: pool.ClassifyOperation(sql), sql: sql, eff: r.analysis.Analyze(sqlb)}
	if r.byKey == nil {
		r.byKey = map[string]*pstmt{}
	}
	r.byKey[key] = st
	return st
}

// ref counts one more client reference to st, taking it back into the registry if the last
// one had gone.
func (r *stmtRegistry) ref(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs++
	if r.byKey[st.key] == nil {
		r.byKey[st.key] = st
	}
}

// put drops a client reference; the last one forgets the statement. Server connections that
// still have it prepared close it when it falls out of their LRU.
func (r *stmtRegistry) put(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs--
	if st.refs <= 0 && r.byKey[st.key] == st {
		delete(r.byKey, st.key)
	}
}

// stmtLRU is the statements prepared on one server connection, most recently used first.
type stmtLRU struct {
	order list.List // of *pstmt
	at    map[*pstmt]*list.Element
}

func (l *stmtLRU) has(st *pstmt) bool {
	e := l.at[st]
	if e != nil {
		l.order.MoveToFront(e)
	}
	return e != nil
}

// add records st as prepared and returns the statement to close to stay within max, if any.
func (l *stmtLRU) add(st *pstmt, max int) *pstmt {
	if l.at == nil {
		l.at = map[*pstmt]*list.Element{}
	}
	l.at[st] = l.order.PushFront(st)
	if l.order.Len() <= max {
		return nil
	}
	old := l.order.Remove(l.order.Back()).(*pstmt)
	delete(l.at, old)
	return old
}

func (l *stmtLRU) remove(st *pstmt) {
	if e := l.at[st]; e != nil {
		l.order.Remove(e)
		delete(l.at, st)
	}
}

func (l *stmtLRU) clear() {
	l.order.Init()
	l.at = nil
}

// startupWant is the settings a client asked for in its startup packet, by lower-cased name,
// as the values it gave. Names that are not plain identifiers are left out, as session mode
// leaves them; so is the proxy's own option (requestPinOption).
func startupWant(params map[string]string) map[string]string {
	want := map[string]string{}
	add := func(name, value string) {
		n := strings.ToLower(name)
		for _, r := range n {
			if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
				return
			}
		}
		if n == "client_encoding" && strings.EqualFold(value, "auto") || n == requestPinOption {
			return
		}
		want[n] = value
	}
	for name, value := range params {
		switch name {
		case "user", "database", "replication":
			continue
		}
		if name == "options" {
			for _, kv := range startupOptions(value) {
				add(kv[0], kv[1])
			}
			continue
		}
		add(name, value)
	}
	return want
}

// requestPinOption is the start-up setting (options=-c pgsidecar.pool_mode=session) by which a
// client asks transaction mode for a session of its own, pinned from login.
const requestPinOption = "pgsidecar.pool_mode"

// requestsPin reports whether a client's start-up parameters ask for a pinned session.
func requestsPin(params map[string]string) bool {
	v, ok := params[requestPinOption]
	for _, kv := range startupOptions(params["options"]) {
		if strings.ToLower(kv[0]) == requestPinOption {
			v, ok = kv[1], true
		}
	}
	return ok && strings.EqualFold(v, "session")
}

// startupOptions reads the -c name=value settings of a startup options parameter.
func startupOptions(value string) [][2]string {
	var out [][2]string
	f := strings.Fields(value)
	for i := 0; i < len(f); i++ {
		opt := f[i]
		if opt == "-c" && i+1 < len(f) {
			i++
			opt = f[i]
		} else if v, ok := strings.CutPrefix(opt, "-c"); ok {
			opt = v
		} else if v, ok := strings.CutPrefix(opt, "--"); ok {
			opt = v
		} else {
			continue
		}
		if k, v, ok := strings.Cut(opt, "="); ok {
			out = append(out, [2]string{strings.ReplaceAll(k, "-", "_"), v})
		}
	}
	return out
}

// literal makes v an SQL string constant that reads the same whatever
// standard_conforming_strings is: a client may have turned it off on the connection.
func literal(v string) string {
	q := strings.ReplaceAll(v, "'", "''")
	if strings.IndexByte(v, '\\') >= 0 {
		return "E'" + strings.ReplaceAll(q, `\`, `\\`) + "'"
	}
	return "'" + q + "'"
}

// settingIdent writes a setting name as quoted identifiers, part by part (app.tenant becomes
// "app"."tenant"), so that any name the server reported can be RESET.
func settingIdent(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

// Reading settings back. A client's settings that outlive its transactions are whatever the
// server holds once a transaction ends, which no reading of SQL text can tell in every case
// (savepoints, errors, a rollback, a statement that runs set_config in a CTE or only for some
// rows). So after a client's requests that may have changed settings, the proxy asks the server
// before the connection goes to anyone else.

// readBackSQL is the query that reads a session's own settings: every built-in one set in the
// session (pg_settings lists no custom ones), and the custom ones named.
func readBackSQL(custom map[string]struct{}) string {
	var b strings.Builder
	b.WriteString("SELECT pg_catalog.lower(name), setting FROM pg_catalog.pg_settings WHERE source = 'session' AND name NOT IN ('role', 'session_authorization')")
	if len(custom) > 0 {
		b.WriteString(" UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM (VALUES ")
		first := true
		for n := range custom {
			if !first {
				b.WriteString(", ")
			}
			first = false
			b.WriteString("(" + literal(n) + ")")
		}
		b.WriteString(") v(n) WHERE pg_catalog.current_setting(n, true) IS NOT NULL")
	}
	return b.String()
}

// restoreSQL is the query that brings back a client's start-up values of the settings a RESET
// (or DISCARD ALL, or SET ... TO DEFAULT) returned to the server's defaults, as PostgreSQL
// returns a direct connection's to its start-up values. It changes only those the session does
// not hold a value of its own for, so it does nothing where the RESET did not happen (its
// statement failed and rolled back). It returns "" when there is nothing to restore.
func restoreSQL(start map[string]string, resets []string) string {
	var vals []string
	for _, r := range resets {
		for name, v := range start {
			if r == "*" || r == name {
				vals = append(vals, "("+literal(name)+", "+literal(v)+")")
			}
		}
	}
	if len(vals) == 0 {
		return ""
	}
	return "SELECT pg_catalog.set_config(v.n, v.v, false) FROM (VALUES " + strings.Join(vals, ", ") +
		") v(n, v) JOIN pg_catalog.pg_settings s ON pg_catalog.lower(s.name) = v.n WHERE s.source <> 'session'"
}
