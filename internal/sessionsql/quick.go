package sessionsql

// certainlyHarmless is a scan for texts that Analyze would find harmless, cheaper than lexing
// them: one statement of a harmless kind whose text holds none of the letters that anything
// Analyze looks for is spelt with (set, temp, advisory, dblink, hold, U&, a backslash). It
// errs only towards false: a text it does not clear is analysed in full. Texts with constants
// inline (pgbench -S, ORMs without parameters) are new every time, so the cache does not help
// them and this does.
func certainlyHarmless(sql []byte) bool {
	i := 0
	for i < len(sql) && isSpaceByte(sql[i]) {
		i++
	}
	start := i
	for i < len(sql) && (sql[i]|0x20 >= 'a' && sql[i]|0x20 <= 'z') {
		i++
	}
	if i == start || i-start > 10 || i < len(sql) && (isWordByte(sql[i])) {
		return false
	}
	var w [10]byte
	for j := start; j < i; j++ {
		w[j-start] = sql[j] | 0x20
	}
	// Every check these kinds get beyond their first word looks for a word the scan below
	// refuses: temp (CREATE TEMP, INTO TEMP, pg_temp), hold (DECLARE ... WITH HOLD), or a
	// denylisted function.
	if !harmlessKinds[string(w[:i-start])] {
		return false
	}
	for j := i; j < len(sql); j++ {
		switch c := sql[j]; {
		case c == ';':
			// Only a final one: another statement may follow.
			for k := j + 1; k < len(sql); k++ {
				if !isSpaceByte(sql[k]) && sql[k] != ';' {
					return false
				}
			}
			return true
		case c == '\\' || c == '&':
			// A backslash reads two ways; U& spells identifiers in escapes.
			return false
		default:
			if needle[c|0x20] != "" && has(sql, j, needle[c|0x20]) {
				return false
			}
		}
	}
	return true
}

// needle is, by its first letter (lower case), a word whose presence sends a text to the full
// analysis: set (SET, set_config, setseed, set_limit, ..._setup), temp (TEMP, pg_temp), advisory
// (session advisory locks), dblink, hold (WITH HOLD).
var needle = [256]string{'s': "set", 't': "temp", 'a': "advisory", 'd': "dblink", 'h': "hold"}

// has reports whether sql holds word at i, ASCII case folded.
func has(sql []byte, i int, word string) bool {
	if len(sql)-i < len(word) {
		return false
	}
	for k := 0; k < len(word); k++ {
		if sql[i+k]|0x20 != word[k] {
			return false
		}
	}
	return true
}

func isSpaceByte(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80
}
