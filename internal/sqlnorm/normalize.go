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
	toks, err := lex(nil, sql, true)
	if err != nil {
		return "", err
	}
	if err := sameEitherWay(sql, toks, false); err != nil {
		return "", err
	}
	return normalize(sql, Fold(sql, toks)), nil
}

// NormalizePrefix is Normalize for the first bytes of a statement, cut anywhere: what a caller
// that keeps only a prefix of a long statement can show. A token the cut ends inside is not
// shown as it stands: an unterminated string becomes a placeholder, an unterminated comment or
// quoted identifier goes, and so does a character cut in two. What Normalize refuses for a
// backslash, NormalizePrefix refuses too.
func NormalizePrefix(sql string) (string, error) {
	toks, err := lex(nil, sql, true)
	if err := sameEitherWay(sql, toks, true); err != nil {
		return "", err
	}
	if err != nil && len(toks) > 0 && toks[len(toks)-1].Kind != String {
		toks = toks[:len(toks)-1]
	}
	return strings.ToValidUTF8(normalize(sql, Fold(sql, toks)), ""), nil
}

// sameEitherWay refuses text with a backslash that lexes differently under
// standard_conforming_strings off: where its strings end would depend on the session. Text
// that may be cut (a prefix) may end inside a token under one reading only.
func sameEitherWay(sql string, toks []Token, cut bool) error {
	if strings.IndexByte(sql, '\\') < 0 {
		return nil
	}
	if other, err := lex(nil, sql, false); err != nil && !cut || !slices.Equal(toks, other) {
		return fmt.Errorf("%w: a backslash in a string makes its end depend on standard_conforming_strings", ErrLex)
	}
	return nil
}

// normalize writes the normalised text of sql from its tokens.
func normalize(sql string, toks []Token) string {
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
		placeholder := t.Kind == String || t.Kind == Number || t.Kind == Const
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
	return b.String()
}
