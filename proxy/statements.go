package proxy

import (
	"container/list"
	"encoding/binary"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
	"github.com/pgsidecar/pgsidecar/pool"
)

// pstmt is a prepared statement shared by the clients that prepared the same text with the same
// parameter types, under one server-side name. It is one version of its text: when a server
// says its result type changed (DDL), later Parses of the text get a new version, while the
// clients that hold this one keep getting the error, as they would on a direct connection.
type pstmt struct {
	key string // the Parse body after the statement name: query, parameter count and types
	// regKey is key in the registry: key after the scope of a pinned client's own statements.
	regKey string
	name   string // its name on server connections
	refs   int    // client statements mapped to it; guarded by the registry's mu
	op     pool.Operation
	sql    string            // the first sqlKept bytes of its text
	id     pool.StatementID  // names it by its whole text
	eff    sessionsql.Effect // what running it does to the session
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

// registryKey is the registry key of a Parse's body after the statement name (rest), whose
// query is sqlb: a sqlcommenter comment (a trace context that changes per request) is left out,
// so that the texts that differ only there share one server-side statement, which is prepared
// without it.
func registryKey(rest, sqlb []byte) string {
	stmt, _ := sqlcomment.SplitBytes(sqlb)
	if len(stmt) == len(sqlb) {
		return string(rest)
	}
	return string(stmt) + string(rest[len(sqlb):])
}

// stmtRegistry holds the proxy-wide statements, keyed by text and parameter types: the current
// version of each text that a client holds.
type stmtRegistry struct {
	analysis *sessionsql.Cache

	mu    sync.Mutex
	byKey map[string]*pstmt
	next  uint64
	// unused counts stale versions that lost their last client: server connections that see it
	// change close such versions they still have prepared.
	unused atomic.Uint64
}

// get returns the current version of the statement for key, creating it, and counts a client
// reference to it.
//
// scope keeps statements apart that must not be shared: a pinned client's statements are its
// own (scope names the client), since what its text means may depend on its session (a
// temporary table of the same name as another client's), and it keeps its connection anyway.
func (r *stmtRegistry) get(scope, key string, id pool.StatementID) *pstmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	regKey := scope + key
	if st := r.byKey[regKey]; st != nil {
		st.refs++
		return st
	}
	r.next++
	sqlb, _ := cbytes([]byte(key))
	sql := sqlPrefix(sqlb)
	st := &pstmt{key: key, regKey: regKey, name: "pgsidecar_" + strconv.FormatUint(r.next, 10), refs: 1,
		op: pool.ClassifyOperation(sql), sql: sql, id: id, eff: r.analysis.Analyze(sqlb)}
	if r.byKey == nil {
		r.byKey = map[string]*pstmt{}
	}
	r.byKey[regKey] = st
	return st
}

// known is get for a statement a server has prepared: it returns nil, and counts nothing, when
// the current version of key (if any) has not been prepared yet.
func (r *stmtRegistry) known(scope, key string) *pstmt {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.byKey[scope+key]
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
	if r.byKey[st.regKey] == nil && !st.stale.Load() {
		r.byKey[st.regKey] = st
	}
}

// put drops a client reference; the last one forgets the statement. Server connections that
// still have it prepared close it when it falls out of their LRU, or, for a stale version, when
// they next prepare or use a statement.
func (r *stmtRegistry) put(st *pstmt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.refs--
	if st.refs <= 0 && r.byKey[st.regKey] == st {
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
	if r.byKey[st.regKey] == st {
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

// resultVaries reports a statement whose described result type depends on session state at the
// time (FETCH, EXECUTE), not on the statement: a new one where it is prepared again is no change.
func resultVaries(sql string) bool {
	sql = strings.TrimLeft(sql, " \t\r\n(")
	for _, w := range []string{"fetch", "execute", "move"} {
		if len(sql) >= len(w) && strings.EqualFold(sql[:len(w)], w) && (len(sql) == len(w) || !isWordChar(sql[len(w)])) {
			return true
		}
	}
	return false
}

func isWordChar(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80
}
