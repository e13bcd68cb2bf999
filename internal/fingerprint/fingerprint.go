// Package fingerprint names a SQL statement independently of its constants, spacing, comments
// and the case of its keywords, so that every execution of one statement lands in one series.
//
// The fingerprint is FNV-1a (64 bits) of the statement's canonical form, written as 16 lower
// case hex digits. The canonical form is the statement read as tokens by internal/sqlnorm's
// lexer (the one its normaliser uses), with the constants pg_stat_statements sees folded as it
// folds them (sqlnorm.Fold: a sign is part of its number, TRUE, FALSE and NULL are constants but
// in IS [NOT] tests): every constant and every parameter ($1) becomes "?", unquoted words (keywords and
// identifiers, which PostgreSQL folds to lower case) are lower-cased (ASCII letters only, as
// PostgreSQL folds them), quoted identifiers and operators stay as written, comments and
// trailing semicolons go, and the tokens are joined by one space. Nothing in it depends on the process or its version, so the
// same statement has the same fingerprint in every pgsidecar and after upgrades (unless the
// SQL lexer itself is fixed).
package fingerprint

import (
	"fmt"
	"strings"
	"sync"

	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// Version is the version of the canonical form. Version 2 folds signs into numbers and takes
// TRUE, FALSE and NULL as constants, as pg_stat_statements does, so that one fingerprint
// covers the query ids of one statement; version 1 read -5 as "- ?" and kept TRUE, FALSE and
// NULL. Statements with neither have the same fingerprint in both.
const Version = 2

// Fingerprint identifies a normalised statement.
type Fingerprint uint64

// String returns the fingerprint as 16 lower case hex digits, its metric label value.
func (f Fingerprint) String() string { return fmt.Sprintf("%016x", uint64(f)) }

const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

// Of returns the fingerprint of sql and its normalised text (constants as $n, comments gone,
// whitespace folded; see sqlnorm.Normalize). Text that cannot be normalised gives an error and
// no text; callers name such statements by Unnormalisable.
func Of(sql string) (Fingerprint, string, error) {
	text, err := sqlnorm.Normalize(sql)
	if err != nil {
		return 0, "", err
	}
	f, err := Sum(sql)
	return f, text, err
}

// Sum returns the fingerprint Of returns, without building the normalised text: what a caller
// that already has the text pays for a new spelling of it. It fails where Of fails.
func Sum(sql string) (Fingerprint, error) {
	if strings.IndexByte(sql, '\\') >= 0 {
		// Normalize refuses some text with backslashes (see there); refuse the same.
		if _, err := sqlnorm.Normalize(sql); err != nil {
			return 0, err
		}
	}
	buf := tokens.Get().(*[]sqlnorm.Token)
	toks, err := sqlnorm.AppendTokens((*buf)[:0], sql)
	if err != nil {
		tokens.Put(buf)
		return 0, err
	}
	f := sum(sql, sqlnorm.Fold(sql, toks))
	if cap(toks) <= 4096 {
		*buf = toks[:0]
		tokens.Put(buf)
	}
	return f, nil
}

// tokens holds token slices for Sum to reuse.
var tokens = sync.Pool{New: func() any { return new([]sqlnorm.Token) }}

// sum hashes the canonical form of the tokens of sql.
func sum(sql string, toks []sqlnorm.Token) Fingerprint {
	// Comments go; a statement ended by a semicolon is the same statement.
	last := len(toks) - 1
	for last >= 0 && (toks[last].Kind == sqlnorm.Comment || sql[toks[last].Start] == ';') {
		last--
	}
	h := uint64(offset64)
	write := func(b byte) { h = (h ^ uint64(b)) * prime64 }
	first := true
	for _, t := range toks[:last+1] {
		if t.Kind == sqlnorm.Comment {
			continue
		}
		if !first {
			write(' ')
		}
		first = false
		switch {
		case t.Kind == sqlnorm.Param || t.Kind == sqlnorm.String || t.Kind == sqlnorm.Number || t.Kind == sqlnorm.Const:
			write('?')
		case isWordStart(sql[t.Start]):
			quoted := false // U&"Name": the quoted part keeps its case
			for j := t.Start; j < t.End; j++ {
				c := sql[j]
				quoted = quoted || c == '"'
				if !quoted && c >= 'A' && c <= 'Z' {
					c += 'a' - 'A'
				}
				write(c)
			}
		default:
			for j := t.Start; j < t.End; j++ {
				write(sql[j])
			}
		}
	}
	return Fingerprint(h)
}

// Unnormalisable is the fingerprint of every statement of the given operation (a label such as
// "select") whose text cannot be normalised: such text is never shown, so its statements share
// one name per operation.
func Unnormalisable(op string) Fingerprint {
	h := uint64(offset64)
	for _, c := range []byte("(unnormalisable) " + strings.ToLower(op)) {
		h = (h ^ uint64(c)) * prime64
	}
	return Fingerprint(h)
}

// isWordStart reports an unquoted word: a keyword or identifier, which PostgreSQL folds to lower
// case. Quoted identifiers ("Name", U&"x") keep their case.
func isWordStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}
