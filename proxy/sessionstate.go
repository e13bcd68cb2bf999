package proxy

import (
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsidecar/pgsidecar/internal/sessionsql"
)

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

// restoreQuery is a Query message restoring the start-up values start of the settings in
// resets, or nil.
func restoreQuery(start map[string]string, resets []string) []byte {
	sql := restoreSQL(start, resets)
	if sql == "" {
		return nil
	}
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	return b
}

// unpinnedByDiscard are the pin reasons whose state DISCARD ALL drops, so that the session may
// move again. A loaded library, a dblink connection, a random seed or what an unknown statement
// did stay, and so does the pin.
var unpinnedByDiscard = map[string]bool{
	sessionsql.PinRole: true, sessionsql.PinSetConfig: true, sessionsql.PinAdvisoryLock: true,
	sessionsql.PinListen: true, sessionsql.PinTempTable: true, sessionsql.PinPrepare: true,
	sessionsql.PinCursorHold: true,
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// maxCustomSettings bounds the custom settings one client may name; one more pins it, since
// the proxy could no longer read them all back.
const maxCustomSettings = 100

// pinWhole pins a session-mode client from login. It is no pin of transaction mode's, and is
// not counted as one.
const pinWhole = "session_mode"

// reportedParams are the settings PostgreSQL reports with ParameterStatus; the proxy replays the
// server connection's values to each client at login.
var reportedParams = []string{
	"application_name", "client_encoding", "DateStyle", "default_transaction_read_only", "in_hot_standby",
	"integer_datetimes", "IntervalStyle", "is_superuser", "scram_iterations", "server_encoding",
	"server_version", "session_authorization", "standard_conforming_strings", "TimeZone",
}
