// Package sqlnorm turns SQL text into a form that is safe to show: every constant becomes a
// placeholder and every comment goes, as pg_stat_statements shows statements. It follows the
// lexical rules of PostgreSQL's scanner (src/backend/parser/scan.l): string constants in every
// form (plain quotes, E'\n' escapes, B'1' and X'1F' bit strings, N'x', U&'\0041' Unicode
// escapes, dollar quotes with and without tags, continuation across lines), numbers, and
// comments anywhere, nested block comments included. Text it cannot lex is refused rather than guessed at.
package sqlnorm

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is the class of a token.
type Kind uint8

// Token kinds. Constants and comments are what normalising removes; the rest is kept.
const (
	Other   Kind = iota // identifiers, keywords, operators, punctuation
	String              // a string constant of any form, bit strings and dollar quotes included
	Number              // a numeric constant
	Param               // a parameter placeholder: $1
	Comment             // -- to end of line, or /* ... */
	Const               // TRUE, FALSE or NULL used as a constant (see Fold)
)

// Token is one lexical token of SQL text: text[Start:End].
type Token struct {
	Kind       Kind
	Start, End int
}

// ErrLex is wrapped into the error of text that PostgreSQL's scanner would not accept as it
// stands (an unterminated string, comment or dollar quote), or that reads differently with
// standard_conforming_strings on and off.
var ErrLex = errors.New("cannot lex SQL text")

// Lex splits sql into tokens, whitespace left out, reading plain '...' strings as PostgreSQL does
// with standard_conforming_strings on (its default), where a backslash is an ordinary character.
func Lex(sql string) ([]Token, error) { return whole(lex(nil, sql, true)) }

// AppendTokens is Lex appending to toks, so that a caller lexing often can reuse one slice.
func AppendTokens(toks []Token, sql string) ([]Token, error) { return whole(lex(toks, sql, true)) }

// LexNonStandard is Lex as PostgreSQL reads text with standard_conforming_strings off, where a
// backslash in a plain '...' string escapes the next character. A client may turn that setting
// off, so what must hold under either reading checks both.
func LexNonStandard(sql string) ([]Token, error) { return whole(lex(nil, sql, false)) }

// whole drops the tokens lex read before an error.
func whole(toks []Token, err error) ([]Token, error) {
	if err != nil {
		return nil, err
	}
	return toks, nil
}

// lex appends the tokens of s to toks. On an error (text that ends inside a token), the tokens
// read so far come back too, the unterminated one last and running to the end of s: what
// reading a statement cut short needs.
func lex(toks []Token, s string, standardStrings bool) ([]Token, error) {
	i := 0
	for i < len(s) {
		c := s[i]
		start := i
		switch {
		case isSpace(c):
			i++
			continue
		case c == '-' && at(s, i+1) == '-':
			i = lineEnd(s, i)
			toks = append(toks, Token{Comment, start, i})
			continue
		case c == '/' && at(s, i+1) == '*':
			end, err := blockCommentEnd(s, i)
			if err != nil {
				return append(toks, Token{Comment, start, len(s)}), err
			}
			i = end
			toks = append(toks, Token{Comment, start, i})
			continue
		}
		var (
			kind = Other
			end  int
			err  error
		)
		switch {
		case c == '\'':
			kind = String
			end, err = quoted(s, i+1, !standardStrings, true)
		case (c == 'e' || c == 'E') && at(s, i+1) == '\'':
			kind = String
			end, err = quoted(s, i+2, true, true)
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && at(s, i+1) == '\'':
			kind = String // bit strings: no escapes, and '' ends one string and starts another
			end, err = quoted(s, i+2, false, false)
		case (c == 'u' || c == 'U') && at(s, i+1) == '&' && at(s, i+2) == '\'':
			kind = String
			end, err = quoted(s, i+3, false, true)
		case (c == 'u' || c == 'U') && at(s, i+1) == '&' && at(s, i+2) == '"':
			end, err = quotedIdent(s, i+3)
		case c == '"':
			end, err = quotedIdent(s, i+1)
		case c == '$':
			end, kind, err = dollar(s, i)
		case c == '.' && at(s, i+1) == '.':
			end = i + 2 // the .. of a range: its second dot does not start a number
		case isDigit(c) || c == '.' && isDigit(at(s, i+1)):
			kind = Number
			end = number(s, i)
		case isIdentStart(c):
			end = i + 1
			for end < len(s) && isIdentCont(s[end]) {
				end++
			}
		case isOpChar(c):
			end = operator(s, i)
		default:
			end = i + 1 // ( ) , ; [ ] : . and anything else stand alone
		}
		if err != nil {
			return append(toks, Token{kind, start, len(s)}), err
		}
		i = end
		toks = append(toks, Token{kind, start, end})
	}
	return toks, nil
}

func at(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func isHorizSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\f' || c == '\v' }
func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}
func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// isOpChar reports the characters PostgreSQL's operators are made of.
func isOpChar(c byte) bool {
	switch c {
	case '~', '!', '@', '#', '^', '&', '|', '`', '?', '+', '-', '*', '/', '%', '<', '>', '=':
		return true
	}
	return false
}

func lineEnd(s string, i int) int {
	for i < len(s) && s[i] != '\n' && s[i] != '\r' {
		i++
	}
	return i
}

// blockCommentEnd returns the end of the /* comment at i; such comments nest.
func blockCommentEnd(s string, i int) (int, error) {
	depth := 0
	for i < len(s) {
		switch {
		case s[i] == '/' && at(s, i+1) == '*':
			depth++
			i += 2
		case s[i] == '*' && at(s, i+1) == '/':
			depth--
			i += 2
			if depth == 0 {
				return i, nil
			}
		default:
			i++
		}
	}
	return 0, fmt.Errorf("%w: unterminated /* comment", ErrLex)
}

// quoted returns the end of a single-quoted string whose body starts at i: with doubling, a
// doubled quote is a quote, and with backslashes a backslash escapes the next byte. A string
// closed and followed by whitespace holding a newline and then another quote goes on (SQL's
// continuation), with comments allowed in that gap as PostgreSQL allows them.
func quoted(s string, i int, backslashes, doubling bool) (int, error) {
	for {
		for {
			if i >= len(s) {
				return 0, fmt.Errorf("%w: unterminated quoted string", ErrLex)
			}
			c := s[i]
			if backslashes && c == '\\' {
				i += 2
				continue
			}
			i++
			if c == '\'' {
				if doubling && at(s, i) == '\'' {
					i++
					continue
				}
				break
			}
		}
		next, ok := continuation(s, i)
		if !ok {
			return i, nil
		}
		i = next
	}
}

// continuation reports whether the string that ended at i goes on: horizontal whitespace, a
// newline, any whitespace, then a quote. It returns the index just past that quote. (A comment
// in that gap ends the string, as PostgreSQL's scanner has it.)
func continuation(s string, i int) (int, bool) {
	for i < len(s) && isHorizSpace(s[i]) {
		i++
	}
	if i >= len(s) || s[i] != '\n' && s[i] != '\r' {
		return 0, false
	}
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i < len(s) && s[i] == '\'' {
		return i + 1, true
	}
	return 0, false
}

// quotedIdent returns the end of a double-quoted identifier whose body starts at i.
func quotedIdent(s string, i int) (int, error) {
	for i < len(s) {
		if s[i] == '"' {
			if at(s, i+1) == '"' {
				i += 2
				continue
			}
			return i + 1, nil
		}
		i++
	}
	return 0, fmt.Errorf("%w: unterminated quoted identifier", ErrLex)
}

// dollar lexes what starts with $ at i: a parameter ($1), a dollar-quoted string ($$...$$ or
// $tag$...$tag$), or a lone $.
func dollar(s string, i int) (int, Kind, error) {
	if isDigit(at(s, i+1)) {
		end := i + 1
		for end < len(s) && isDigit(s[end]) {
			end++
		}
		return end, Param, nil
	}
	j := i + 1
	if j < len(s) && isIdentStart(s[j]) {
		for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j])) {
			j++
		}
	}
	if at(s, j) != '$' {
		return i + 1, Other, nil
	}
	delim := s[i : j+1]
	for k := j + 1; k+len(delim) <= len(s); k++ {
		if s[k:k+len(delim)] == delim {
			return k + len(delim), String, nil
		}
	}
	return 0, String, fmt.Errorf("%w: unterminated dollar-quoted string", ErrLex)
}

// number returns the end of the numeric constant at i: digits with _ separators, a fraction,
// an exponent, or a 0x, 0o or 0b integer. An identifier straight after it belongs to it, as
// PostgreSQL's scanner reads it (and rejects it as trailing junk), so that no part of a
// constant is kept as if it were a word.
func number(s string, i int) int {
	if s[i] == '0' && (at(s, i+1)|0x20 == 'x' || at(s, i+1)|0x20 == 'o' || at(s, i+1)|0x20 == 'b') {
		i += 2
		for i < len(s) && (isHexDigit(s[i]) || s[i] == '_') {
			i++
		}
	} else {
		for i < len(s) && (isDigit(s[i]) || s[i] == '_') {
			i++
		}
		// A fraction, but not the .. of a range.
		if at(s, i) == '.' && at(s, i+1) != '.' {
			i++
			for i < len(s) && (isDigit(s[i]) || s[i] == '_') {
				i++
			}
		}
		if at(s, i)|0x20 == 'e' {
			j := i + 1
			if at(s, j) == '+' || at(s, j) == '-' {
				j++
			}
			if isDigit(at(s, j)) {
				i = j
				for i < len(s) && (isDigit(s[i]) || s[i] == '_') {
					i++
				}
			}
		}
	}
	if i < len(s) && isIdentStart(s[i]) {
		for i < len(s) && isIdentCont(s[i]) {
			i++
		}
	}
	return i
}

func isHexDigit(c byte) bool { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'f' }

// operator returns the end of the operator at i. As in PostgreSQL, an operator ends before a
// -- or /* that starts a comment, and one of several characters does not end in + or - unless
// it has one of ~ ! @ # % ^ & | ` ? (so x=-5 is x, =, -, 5).
func operator(s string, i int) int {
	end := i + 1
	for end < len(s) && isOpChar(s[end]) {
		if s[end] == '-' && at(s, end+1) == '-' || s[end] == '/' && at(s, end+1) == '*' {
			break
		}
		end++
	}
	if end-i > 1 && !strings.ContainsAny(s[i:end], "~!@#%^&|`?") {
		for end-i > 1 && (s[end-1] == '+' || s[end-1] == '-') {
			end--
		}
	}
	return end
}
