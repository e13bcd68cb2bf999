package sqlnorm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Normalize returns sql with every constant replaced by a placeholder ($n, numbered after the
// highest parameter the text already has, as pg_stat_statements numbers them), every comment
// removed and runs of whitespace folded into one space. Text that cannot be lexed, or that
// would lex differently under standard_conforming_strings off (a backslash in a plain string),
// gives an error wrapping ErrLex and no text: showing it could show a secret.
func Normalize(sql string) (string, error) {
	toks, err := Lex(sql)
	if err != nil {
		return "", err
	}
	if strings.IndexByte(sql, '\\') >= 0 {
		other, err := lex(nil, sql, false)
		if err != nil || !slices.Equal(toks, other) {
			return "", fmt.Errorf("%w: a backslash in a string makes its end depend on standard_conforming_strings", ErrLex)
		}
	}
	next := 1
	for _, t := range toks {
		if t.Kind == Param {
			if n, err := strconv.Atoi(sql[t.Start+1 : t.End]); err == nil && n >= next {
				next = n + 1
			}
		}
	}
	var b strings.Builder
	b.Grow(len(sql))
	prevEnd := -1
	for _, t := range toks {
		if t.Kind == Comment {
			continue
		}
		placeholder := t.Kind == String || t.Kind == Number
		if prevEnd >= 0 && (t.Start > prevEnd || placeholder && isIdentCont(sql[prevEnd-1])) {
			// Keep the space that was there; and a placeholder after a word (N'x') gets one, or
			// the two would read as one identifier.
			b.WriteByte(' ')
		}
		prevEnd = t.End
		if placeholder {
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(next))
			next++
		} else {
			b.WriteString(sql[t.Start:t.End])
		}
	}
	return b.String(), nil
}
