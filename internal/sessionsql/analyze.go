// Package sessionsql reads SQL text for what it does to a PostgreSQL session beyond its
// transaction: the state a connection pooler must carry from server connection to server
// connection, or that ties a client to one server connection for good.
//
// It reads every statement of a text with internal/sqlnorm's lexer, and it works by allowlist:
// a statement kind is harmless only when it is listed, so a statement it does not know pins. A
// function call is harmless unless the function is on a denylist of those that change session
// state (set_config, session advisory locks, dblink_connect, ...), matched however its name is
// spelled (quoted, schema-qualified). Settings are not parsed out of the text: the text only says
// that settings may have changed (and which custom, dotted ones it names), and the pooler reads
// the session's settings back from the server, which is exact whatever the statement's form,
// its transaction's outcome or its savepoints.
//
// What no reading of the text can see, such as a user function that calls set_config inside, is
// out of its reach by design; callers document it.
package sessionsql

import (
	"slices"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// Reasons a statement pins a client to its server connection. They are metric label values:
// the list is fixed.
const (
	PinRole            = "role"              // SET ROLE, SET SESSION AUTHORIZATION, or set_config of them
	PinSetConfig       = "set_config"        // set_config whose setting name is not a constant
	PinAdvisoryLock    = "advisory_lock"     // a session-level advisory lock
	PinListen          = "listen"            // LISTEN
	PinTempTable       = "temp_table"        // a temporary object, by any route
	PinPrepare         = "prepare"           // SQL PREPARE
	PinCursorHold      = "cursor_with_hold"  // DECLARE ... WITH HOLD
	PinLoad            = "load"              // LOAD of a library
	PinSessionFunction = "session_function"  // dblink_connect, setseed and the like
	PinBlock           = "do_block"          // DO or CALL whose body or arguments hold a denylisted token
	PinUnknown         = "unknown_statement" // a statement kind not on the allowlist
	PinUnlexable       = "unlexable"         // text that cannot be read with certainty
	PinRequested       = "requested"         // the client asked for a pinned session
)

// Reasons lists every pin reason.
var Reasons = []string{PinRole, PinSetConfig, PinAdvisoryLock, PinListen, PinTempTable, PinPrepare,
	PinCursorHold, PinLoad, PinSessionFunction, PinBlock, PinUnknown, PinUnlexable, PinRequested}

// Effect is what a text does to the session, as far as its words show.
type Effect struct {
	// Pin is the reason the text ties the client to its server connection, or "". With
	// several, it is the first statement's.
	Pin string
	// PinStatement is the index of the statement that pins (0 for the first).
	PinStatement int
	// Settings reports that the text may change settings that outlive the transaction (SET,
	// RESET, set_config, SET SESSION CHARACTERISTICS): the pooler reads them back.
	Settings bool
	// Custom names the custom (dotted) settings the text sets or resets, lower-cased: the
	// server's pg_settings does not list them, so they are read back by name.
	Custom []string
	// Resets names the settings the text returns to their defaults, lower-cased ("*" for
	// all): a client's own start-up values must then be restored.
	Resets []string
	// Discard reports DISCARD ALL.
	Discard bool
	// Statements counts the text's statements (empty ones left out).
	Statements int
	// Dealloc names the SQL-level prepared statements DEALLOCATE drops, as the server reads
	// the names ("*" for ALL).
	Dealloc []string
}

// Harmless reports whether the text leaves nothing behind but its transaction's work.
func (e Effect) Harmless() bool {
	return e.Pin == "" && !e.Settings && len(e.Resets) == 0 && !e.Discard && len(e.Dealloc) == 0
}

func (e *Effect) pin(reason string, stmt int) {
	if e.Pin == "" {
		e.Pin, e.PinStatement = reason, stmt
	}
}

func (e *Effect) custom(name string) {
	if !slices.Contains(e.Custom, name) {
		e.Custom = append(e.Custom, name)
	}
}

func (e *Effect) reset(name string) {
	e.Settings = true
	if !slices.Contains(e.Resets, name) {
		e.Resets = append(e.Resets, name)
	}
	if strings.Contains(name, ".") {
		e.custom(name)
	}
}

// merge adds o's findings to e (the same text read another way).
func (e *Effect) merge(o Effect) {
	if o.Pin != "" {
		e.pin(o.Pin, o.PinStatement)
	}
	e.Settings = e.Settings || o.Settings
	e.Discard = e.Discard || o.Discard
	for _, n := range o.Custom {
		e.custom(n)
	}
	for _, n := range o.Resets {
		e.reset(n)
	}
	for _, n := range o.Dealloc {
		if !slices.Contains(e.Dealloc, n) {
			e.Dealloc = append(e.Dealloc, n)
		}
	}
}

// Analyze reads every statement of sql. Text that the lexer refuses pins (PinUnlexable), since
// what it would do cannot be told. Where the text reads differently with
// standard_conforming_strings off (a backslash in a plain string), both readings count.
func Analyze(sql string) Effect {
	toks, err := sqlnorm.Lex(sql)
	if err != nil {
		return Effect{Pin: PinUnlexable}
	}
	e := analyzeTokens(sql, toks, 0)
	if strings.IndexByte(sql, '\\') >= 0 {
		other, err := sqlnorm.LexNonStandard(sql)
		if err != nil {
			e.pin(PinUnlexable, 0)
		} else if !slices.Equal(toks, other) {
			e.merge(analyzeTokens(sql, other, 0))
		}
	}
	return e
}

// maxDepth bounds how deep DO bodies nested in DO bodies are read; deeper ones pin.
const maxDepth = 4

// analyzeTokens reads the statements of sql's tokens, split at semicolons.
func analyzeTokens(sql string, toks []sqlnorm.Token, depth int) Effect {
	var e Effect
	stmt := make([]sqlnorm.Token, 0, len(toks))
	n := 0
	flush := func() {
		if len(stmt) > 0 {
			statement(&e, sql, stmt, n, depth)
			n++
		}
		stmt = stmt[:0]
	}
	for _, t := range toks {
		switch {
		case t.Kind == sqlnorm.Comment:
		case t.Kind == sqlnorm.Other && sql[t.Start:t.End] == ";":
			flush()
		default:
			stmt = append(stmt, t)
		}
	}
	flush()
	e.Statements = n
	return e
}

// harmlessKinds are the statement kinds, by first word, that change nothing beyond their
// transaction (given the checks for temporary objects and denylisted functions that every
// statement gets).
var harmlessKinds = map[string]bool{
	"select": true, "insert": true, "update": true, "delete": true, "merge": true, "with": true,
	"values": true, "table": true, "copy": true, "explain": true, "show": true,
	"begin": true, "start": true, "commit": true, "end": true, "rollback": true, "abort": true,
	"savepoint": true, "release": true, "lock": true, "fetch": true, "move": true, "close": true,
	"notify": true, "unlisten": true, "execute": true,
	"alter": true, "drop": true, "comment": true, "grant": true, "revoke": true, "truncate": true,
	"reindex": true, "cluster": true, "refresh": true, "vacuum": true, "analyze": true,
	"analyse": true, "checkpoint": true, "security": true, "reassign": true, "import": true,
	"create": true, "declare": true, "(": true,
}

// statement reads one statement (no comments, no semicolons); n is its index in the text.
func statement(e *Effect, sql string, toks []sqlnorm.Token, n, depth int) {
	r := reader{sql: sql, toks: toks}
	first := r.word(0)
	switch first {
	case "set":
		set(e, &r, n)
	case "reset":
		reset(e, &r, n)
	case "discard":
		if r.word(1) == "all" {
			e.Discard = true
			e.reset("*")
		}
		// DISCARD PLANS, SEQUENCES and TEMP leave nothing for another client.
	case "deallocate":
		i := 1
		if r.word(i) == "prepare" {
			i++
		}
		if r.word(i) == "all" {
			e.Dealloc = append(e.Dealloc, "*")
		} else if name, ok := r.ident(i); ok {
			e.Dealloc = append(e.Dealloc, name)
		} else {
			e.pin(PinUnknown, n)
		}
	case "prepare":
		if r.word(1) != "transaction" {
			e.pin(PinPrepare, n)
		}
	case "listen":
		e.pin(PinListen, n)
	case "load":
		e.pin(PinLoad, n)
	case "do":
		doBlock(e, &r, n, depth)
	case "call":
		// The procedure itself is out of sight, as any user function is; its arguments are not.
	case "declare":
		for i := 1; i+1 < len(toks); i++ {
			if r.word(i) == "with" && r.word(i+1) == "hold" {
				e.pin(PinCursorHold, n)
			}
			if r.word(i) == "for" {
				break
			}
		}
	default:
		if !harmlessKinds[first] {
			e.pin(PinUnknown, n)
		}
	}
	scan(e, &r, n)
}

// set reads SET statements.
func set(e *Effect, r *reader, n int) {
	i := 1
	switch r.word(i) {
	case "local", "transaction", "constraints":
		return // ends with the transaction
	case "session":
		i++
		switch r.word(i) {
		case "authorization":
			e.pin(PinRole, n)
			return
		case "characteristics":
			e.Settings = true
			return
		}
	}
	name, next, ok := r.settingName(i)
	if !ok {
		e.pin(PinUnknown, n)
		return
	}
	switch name {
	case "role", "session_authorization":
		v := next
		if w := r.word(v); w == "to" || w == "=" {
			v++
		}
		if w := r.word(v); len(r.toks) == v+1 && (w == "none" || w == "default") {
			e.Settings = true
			return
		}
		e.pin(PinRole, n)
		return
	case "time":
		if r.word(next) == "zone" {
			name, next = "timezone", next+1
		}
	case "names":
		name = "client_encoding"
	case "schema":
		name = "search_path"
	case "xml":
		if r.word(next) == "option" {
			name, next = "xmloption", next+1
		}
	}
	e.Settings = true
	if strings.Contains(name, ".") {
		e.custom(name)
	}
	// SET x TO DEFAULT (or = DEFAULT, or SET TIME ZONE LOCAL) is RESET x.
	if w := r.word(next); w == "to" || w == "=" {
		next++
	}
	if v := r.word(next); len(r.toks) == next+1 && (v == "default" || v == "local" && name == "timezone") {
		e.reset(name)
	}
}

// reset reads RESET statements.
func reset(e *Effect, r *reader, n int) {
	switch r.word(1) {
	case "all":
		e.reset("*")
		return
	case "session":
		if r.word(2) == "authorization" {
			e.reset("session_authorization")
			return
		}
	case "time":
		if r.word(2) == "zone" {
			e.reset("timezone")
			return
		}
	}
	name, _, ok := r.settingName(1)
	if !ok {
		e.pin(PinUnknown, n)
		return
	}
	e.reset(name)
}

// doBlock reads a DO statement's body (a string constant) as SQL: a denylisted function or a
// statement that would change the session anywhere in it pins, and so does a body that cannot
// be read, dynamic SQL (EXECUTE), or any SET or RESET statement.
func doBlock(e *Effect, r *reader, n, depth int) {
	for i := 1; i < len(r.toks); i++ {
		t := r.toks[i]
		if t.Kind != sqlnorm.String {
			continue
		}
		body, ok := stringValue(r.sql[t.Start:t.End])
		if !ok || depth >= maxDepth {
			e.pin(PinBlock, n)
			return
		}
		toks, err := sqlnorm.Lex(body)
		if err != nil {
			e.pin(PinBlock, n)
			return
		}
		inner := reader{sql: body, toks: toks}
		for j := range toks {
			w := inner.word(j)
			switch w {
			case "execute", "set", "reset", "listen", "prepare", "load", "temp", "temporary", "pg_temp", "discard", "deallocate", "do", "call", "hold":
				// Word by word: "set" also stands in UPDATE ... SET, which pins too, as the
				// safe side.
				e.pin(PinBlock, n)
				return
			}
			if isDenied(w) && inner.word(j+1) == "(" {
				e.pin(PinBlock, n)
				return
			}
		}
		var sub Effect
		scan(&sub, &inner, n)
		if sub.Pin != "" || sub.Settings {
			e.pin(PinBlock, n)
			return
		}
	}
}

// deniedFunctions change session state that a pooler cannot carry. set_config is read apart.
var deniedFunctions = map[string]string{
	"pg_advisory_lock": PinAdvisoryLock, "pg_advisory_lock_shared": PinAdvisoryLock,
	"pg_try_advisory_lock": PinAdvisoryLock, "pg_try_advisory_lock_shared": PinAdvisoryLock,
	"dblink_connect": PinSessionFunction, "dblink_connect_u": PinSessionFunction,
	"setseed": PinSessionFunction, "set_limit": PinSessionFunction,
	"pg_replication_origin_session_setup": PinSessionFunction,
}

func isDenied(name string) bool {
	_, ok := deniedFunctions[name]
	return ok || name == "set_config"
}

// scan looks through every token of a statement for temporary objects and denylisted functions,
// wherever they stand: in a CTE, a subquery, EXPLAIN ANALYZE, COPY (...), a CALL's arguments.
func scan(e *Effect, r *reader, n int) {
	for i, t := range r.toks {
		if t.Kind != sqlnorm.Other {
			continue
		}
		text := r.sql[t.Start:t.End]
		if strings.HasPrefix(text, "U&") || strings.HasPrefix(text, "u&") {
			e.pin(PinUnlexable, n) // an identifier in Unicode escapes could spell anything
			continue
		}
		name, ok := r.ident(i)
		if !ok {
			continue
		}
		switch {
		case name == "pg_temp" || strings.HasPrefix(name, "pg_temp_"):
			e.pin(PinTempTable, n)
		case name == "temp" || name == "temporary":
			if t.Kind == sqlnorm.Other && text[0] != '"' && tempPrefix(r, i) {
				e.pin(PinTempTable, n)
			}
		}
		if r.word(i+1) != "(" {
			continue
		}
		if name == "set_config" {
			setConfig(e, r, i, n)
		} else if reason, ok := deniedFunctions[name]; ok {
			e.pin(reason, n)
		}
	}
}

// tempPrefix reports whether the TEMP word at i makes a temporary object: CREATE [OR REPLACE]
// [GLOBAL|LOCAL] TEMP, or SELECT ... INTO TEMP.
func tempPrefix(r *reader, i int) bool {
	j := i - 1
	for j >= 0 {
		switch r.word(j) {
		case "global", "local", "or", "replace":
			j--
			continue
		case "create":
			return true
		case "into":
			// INSERT INTO temp and MERGE INTO temp name a table called temp.
			first := r.word(0)
			return j != 1 || first != "insert" && first != "merge"
		}
		return false
	}
	return false
}

// setConfig reads set_config(name, value, is_local) at i: a constant name is a setting the
// pooler can read back; any other name pins.
func setConfig(e *Effect, r *reader, i, n int) {
	j := i + 2 // past the name and "("
	if j >= len(r.toks) || r.toks[j].Kind != sqlnorm.String {
		e.pin(PinSetConfig, n)
		return
	}
	name, ok := stringValue(r.sql[r.toks[j].Start:r.toks[j].End])
	if !ok {
		e.pin(PinSetConfig, n)
		return
	}
	// The constant may be cast, but nothing may be added to it.
	k := j + 1
	for w := r.word(k); w == ":" || w == "text" || w == "varchar" || w == "pg_catalog" || w == "."; w = r.word(k) {
		k++
	}
	if r.word(k) != "," {
		e.pin(PinSetConfig, n)
		return
	}
	name = strings.ToLower(name)
	switch name {
	case "role", "session_authorization":
		e.pin(PinRole, n)
		return
	}
	e.Settings = true
	if strings.Contains(name, ".") {
		e.custom(name)
	}
}

// reader reads a statement's tokens.
type reader struct {
	sql  string
	toks []sqlnorm.Token
}

// word returns token i lower-cased when it is an unquoted word or punctuation, "" otherwise.
func (r *reader) word(i int) string {
	if i < 0 || i >= len(r.toks) {
		return ""
	}
	t := r.toks[i]
	if t.Kind != sqlnorm.Other {
		return ""
	}
	text := r.sql[t.Start:t.End]
	if text[0] == '"' {
		return ""
	}
	return asciiLower(text)
}

// ident returns token i as the name PostgreSQL reads: an unquoted word lower-cased, a quoted
// identifier as written inside its quotes.
func (r *reader) ident(i int) (string, bool) {
	if i < 0 || i >= len(r.toks) {
		return "", false
	}
	t := r.toks[i]
	if t.Kind != sqlnorm.Other {
		return "", false
	}
	text := r.sql[t.Start:t.End]
	switch c := text[0]; {
	case c == '"':
		return strings.ReplaceAll(text[1:len(text)-1], `""`, `"`), true
	case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		return asciiLower(text), true
	}
	return "", false
}

// settingName reads the setting name of SET or RESET at i: one identifier or several joined by
// dots. It returns the name and the index after it.
func (r *reader) settingName(i int) (string, int, bool) {
	var b strings.Builder
	for {
		part, ok := r.ident(i)
		if !ok {
			return "", i, false
		}
		b.WriteString(strings.ToLower(part))
		i++
		if r.word(i) != "." {
			return b.String(), i, true
		}
		b.WriteByte('.')
		i++
	}
}

// stringValue decodes a string constant: '...', E'...' (backslash escapes refused), or a
// dollar quote. Other forms are refused.
func stringValue(s string) (string, bool) {
	switch {
	case strings.HasPrefix(s, "'"):
		if strings.IndexByte(s, '\\') >= 0 || strings.IndexByte(s, '\n') >= 0 {
			return "", false // a backslash reads two ways; a newline may be a continuation
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), true
	case strings.HasPrefix(s, "E'") || strings.HasPrefix(s, "e'"):
		if strings.IndexByte(s, '\\') >= 0 || strings.IndexByte(s, '\n') >= 0 {
			return "", false
		}
		return strings.ReplaceAll(s[2:len(s)-1], "''", "'"), true
	case strings.HasPrefix(s, "$"):
		j := strings.IndexByte(s[1:], '$') + 1
		if j <= 0 || len(s) < 2*(j+1) {
			return "", false
		}
		return s[j+1 : len(s)-j-1], true
	}
	return "", false
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
