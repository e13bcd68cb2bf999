package proxy

import (
	"container/list"
	"encoding/binary"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Transaction mode keeps three kinds of state that PostgreSQL keeps per session, so that a client
// can move between server connections: its prepared statements (mapped onto statements shared by
// every client and prepared lazily on each server connection), the settings drivers rely on
// (applied on checkout where the server connection's differ), and the reasons it cannot move at
// all (pins).

// pstmt is a prepared statement shared by the clients that prepared the same text with the same
// parameter types, under one server-side name. It is one version of its text: when a server
// says its result type changed (DDL), later Parses of the text get a new version, while the
// clients that hold this one keep getting the error, as they would on a direct connection.
type pstmt struct {
	key  string // the Parse body after the statement name: query, parameter count and types
	name string // its name on server connections
	refs int    // client statements mapped to it; guarded by the registry's mu
	op   pool.Operation
	sql  string
	// valid: a server has prepared it, so the proxy may answer a Parse of it alone.
	valid atomic.Bool
	// stale: a server said its result type changed (0A000, cached plan must not change result
	// type), or it had another one where the proxy prepared it later; it is no longer prepared
	// on connections that lack it.
	stale atomic.Bool
	// result is its result type where the proxy first prepared it (resultSig): where it
	// prepares it later, the result type must be the same.
	result atomic.Pointer[string]
}

// resultSig is the result type a Describe of a statement answers, RowDescription (typ 'T',
// body) or NoData ('n'): the columns' names, types and type modifiers, what PostgreSQL compares
// to tell that a statement's result type changed.
func resultSig(typ byte, body []byte) string {
	if typ != 'T' || len(body) < 2 {
		return "n"
	}
	sig := make([]byte, 0, len(body))
	n := int(binary.BigEndian.Uint16(body))
	rest := body[2:]
	for range n {
		name, r := cbytes(rest)
		if len(r) < 18 {
			return string(body) // malformed: compare it whole
		}
		sig = append(append(sig, name...), 0)
		sig = append(sig, r[6:16]...) // type OID, length and modifier
		rest = r[18:]
	}
	return string(sig)
}

// The SQLSTATE and message with which PostgreSQL refuses a statement whose result type changed.
const (
	staleCode = "0A000"
	staleMsg  = "cached plan must not change result type"
)

// parseBody is the body of a Parse that prepares st under its server-side name.
func (st *pstmt) parseBody() []byte {
	b := make([]byte, 0, len(st.name)+1+len(st.key))
	b = append(b, st.name...)
	b = append(b, 0)
	return append(b, st.key...)
}

// stmtRegistry holds the proxy-wide statements, keyed by text and parameter types: the current
// version of each text that a client holds.
type stmtRegistry struct {
	mu    sync.Mutex
	byKey map[string]*pstmt
	next  uint64
	// unused counts stale versions that lost their last client: server connections that see it
	// change close such versions they still have prepared.
	unused atomic.Uint64
}

// get returns the current version of the statement for key, creating it, and counts a client
// reference to it.
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
		op: pool.ClassifyOperation(sql), sql: sql}
	if r.byKey == nil {
		r.byKey = map[string]*pstmt{}
	}
	r.byKey[key] = st
	return st
}

// known is get for a statement a server has prepared: it returns nil, and counts nothing, when
// the current version of key (if any) has not been prepared yet.
func (r *stmtRegistry) known(key string) *pstmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byKey[key]
	if st == nil || !st.valid.Load() {
		return nil
	}
	st.refs++
	return st
}

// ref counts one more client reference to st, taking it back into the registry if the last
// one had gone (unless a newer version has taken its place).
func (r *stmtRegistry) ref(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs++
	if r.byKey[st.key] == nil && !st.stale.Load() {
		r.byKey[st.key] = st
	}
}

// put drops a client reference; the last one forgets the statement. Server connections that
// still have it prepared close it when it falls out of their LRU, or, for a stale version, when
// they next prepare or use a statement.
func (r *stmtRegistry) put(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs--
	if st.refs <= 0 && r.byKey[st.key] == st {
		delete(r.byKey, st.key)
	}
	if st.refs == 0 && st.stale.Load() {
		r.unused.Add(1)
	}
}

// markStale records that a server refused st because its result type changed: the next Parse
// of its text gets a new version.
func (r *stmtRegistry) markStale(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.stale.Swap(true) {
		return
	}
	if r.byKey[st.key] == st {
		delete(r.byKey, st.key)
	}
	if st.refs <= 0 {
		r.unused.Add(1)
	}
}

// unusedIn returns the stale versions in l that no client holds any more.
func (r *stmtRegistry) unusedIn(l *stmtLRU) []*pstmt {
	var out []*pstmt
	r.mu.Lock()
	defer r.mu.Unlock()
	for e := l.order.Front(); e != nil; e = e.Next() {
		if st := e.Value.(*pstmt); st.stale.Load() && st.refs <= 0 {
			out = append(out, st)
		}
	}
	return out
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

// add records st as prepared and returns the statements to close to stay within max.
func (l *stmtLRU) add(st *pstmt, max int) []*pstmt {
	if l.at == nil {
		l.at = map[*pstmt]*list.Element{}
	}
	l.at[st] = l.order.PushFront(st)
	var evict []*pstmt
	for l.order.Len() > max {
		old := l.order.Remove(l.order.Back()).(*pstmt)
		delete(l.at, old)
		evict = append(evict, old)
	}
	return evict
}

// keep records st as prepared if it is not, without evicting: the server prepared it again
// after the proxy had taken it for gone (a Parse that failed in an earlier batch).
func (l *stmtLRU) keep(st *pstmt) {
	if l.at == nil {
		l.at = map[*pstmt]*list.Element{}
	}
	if l.at[st] == nil {
		l.at[st] = l.order.PushFront(st)
	}
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

// trackedParams are the settings drivers rely on that transaction mode carries from server
// connection to server connection, lower-cased, besides those a client gives in its startup
// packet. A SET of any other setting pins the session.
var trackedParams = map[string]bool{
	"client_encoding": true, "datestyle": true, "timezone": true, "intervalstyle": true,
	"standard_conforming_strings": true, "extra_float_digits": true, "application_name": true,
	"search_path": true,
}

// quoteLiteral makes v an SQL string literal.
func quoteLiteral(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

// startupWant is the settings a client asked for in its startup packet, lower-cased, as SQL
// values. Names that are not plain identifiers are left out, as session mode leaves them.
func startupWant(params map[string]string) map[string]string {
	want := map[string]string{}
	add := func(name, value string) {
		n := strings.ToLower(name)
		for _, r := range n {
			if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
				return
			}
		}
		if n == "client_encoding" && strings.EqualFold(value, "auto") {
			return
		}
		want[n] = quoteLiteral(value)
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

// paramChange is the effect of a SET or RESET of a setting: value "" resets it. The session
// carries it if it tracks the setting, and is pinned by a SET of one it does not.
type paramChange struct {
	name, value string
	all         bool // RESET ALL
}

// stmtEffect is what the proxy must know of one SQL statement a client sends in transaction mode.
type stmtEffect struct {
	pin     string        // a reason to pin the session, or ""
	changes []paramChange // tracked settings it changes
	discard bool          // DISCARD ALL
	dealloc string        // DEALLOCATE's statement name; "*" for ALL
}

// analyze reads the statements of a client's SQL text for what transaction mode must know. It
// recognises the simple forms drivers and people write; anything it does not recognise is left
// alone.
func analyze(sql string) stmtEffect {
	var e stmtEffect
	for _, part := range splitStatements(sql) {
		w := words(part, 5)
		if len(w) == 0 {
			continue
		}
		lower := strings.ToLower(part)
		if strings.Contains(lower, "pg_advisory_lock") || strings.Contains(lower, "pg_try_advisory_lock") {
			e.setPin(pinAdvisoryLock)
		}
		switch w[0] {
		case "listen":
			e.setPin(pinListen)
		case "prepare":
			e.setPin(pinPrepare)
		case "declare":
			if strings.Contains(strings.Join(strings.Fields(lower), " "), "with hold") {
				e.setPin(pinCursorHold)
			}
		case "create":
			for _, x := range w[1:] {
				if x == "temp" || x == "temporary" {
					e.setPin(pinTempTable)
				}
				if x == "table" {
					break
				}
			}
		case "discard":
			if len(w) >= 2 && w[1] == "all" {
				e.discard = true
			} else if len(w) >= 2 && (w[1] == "temp" || w[1] == "temporary") {
				// Harmless: nothing of it moves between connections.
			}
		case "deallocate":
			i := 1
			if len(w) > i && w[i] == "prepare" {
				i++
			}
			if len(w) > i {
				if w[i] == "all" {
					e.dealloc = "*"
				} else {
					e.dealloc = identifier(part, w[i])
				}
			}
		case "reset":
			if len(w) >= 2 {
				if w[1] == "all" {
					e.changes = append(e.changes, paramChange{all: true})
				} else {
					e.changes = append(e.changes, paramChange{name: w[1]})
				}
			}
		case "set":
			e.set(part, w)
		}
	}
	return e
}

func (e *stmtEffect) setPin(reason string) {
	if e.pin == "" {
		e.pin = reason
	}
}

// set reads SET [SESSION] name {TO|=} value.
func (e *stmtEffect) set(part string, w []string) {
	i := 1
	if len(w) > i && w[i] == "session" {
		if len(w) > i+1 && (w[i+1] == "characteristics" || w[i+1] == "authorization") {
			if w[i+1] == "authorization" {
				e.setPin(pinSet)
			}
			return
		}
		i++
	}
	if len(w) <= i {
		return
	}
	switch w[i] {
	case "local", "transaction", "constraints":
		return // ends with the transaction
	}
	name := w[i]
	if name == "time" && len(w) > i+1 && w[i+1] == "zone" {
		name = "timezone"
	}
	value := setValue(part, name)
	if value == "" || strings.EqualFold(value, "default") || strings.EqualFold(value, "local") {
		value = ""
	}
	e.changes = append(e.changes, paramChange{name: name, value: value})
}

// setValue is the raw value text of a SET statement: what follows TO or = (or, for SET TIME
// ZONE, the zone).
func setValue(part, name string) string {
	s := strings.TrimSpace(part)
	lower := strings.ToLower(s)
	if name == "timezone" {
		if i := strings.Index(lower, "zone"); i >= 0 && !strings.Contains(lower[:i], "timezone") {
			return strings.TrimSpace(s[i+4:])
		}
	}
	i := strings.Index(lower, name)
	if i < 0 {
		return ""
	}
	rest := strings.TrimSpace(s[i+len(name):])
	lr := strings.ToLower(rest)
	switch {
	case strings.HasPrefix(rest, "="):
		rest = rest[1:]
	case strings.HasPrefix(lr, "to") && (len(lr) == 2 || lr[2] == ' ' || lr[2] == '\t' || lr[2] == '\n' || lr[2] == '\''):
		rest = rest[2:]
	default:
		return ""
	}
	return strings.TrimSpace(rest)
}

// identifier returns the statement name word as PostgreSQL reads it: a double-quoted name keeps
// its case, an unquoted one is lower-cased.
func identifier(part, lowerWord string) string {
	if i := strings.Index(part, "\""); i >= 0 {
		if j := strings.Index(part[i+1:], "\""); j >= 0 {
			return part[i+1 : i+1+j]
		}
	}
	return lowerWord
}

// splitStatements splits SQL text at semicolons outside quotes and comments, dropping comments.
func splitStatements(sql string) []string {
	var parts []string
	var b strings.Builder
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(sql) && sql[j] != c {
				j++
			}
			b.WriteString(sql[i:min(j+1, len(sql))])
			i = j
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j := strings.Index(sql[i+2:], "*/")
			if j < 0 {
				i = len(sql)
			} else {
				i += j + 3
			}
			b.WriteByte(' ')
		case c == ';':
			parts = append(parts, b.String())
			b.Reset()
		default:
			b.WriteByte(c)
		}
	}
	return append(parts, b.String())
}

// words returns up to n leading words of s, lower-cased; '=' and '(' separate words too.
func words(s string, n int) []string {
	f := strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '=' || r == '(' || r == ','
	})
	return f[:min(len(f), n)]
}
