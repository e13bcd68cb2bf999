package sqlnorm

// Fold rewrites the tokens of sql where pg_stat_statements sees one constant and the lexer sees
// something else, so that normalised texts and fingerprints agree with its query ids where
// they can:
//
//   - a minus sign before a number, where the minus is not between two operands (-5, x = -5,
//     (-1.5), THEN -1), is part of the constant, as PostgreSQL's parser folds it into the number:
//     one Number token from the sign to the number's end; a number cast with :: is not folded
//     (the cast binds first, so the minus applies to the cast);
//   - TRUE, FALSE and NULL (unquoted, any case) are constants (Const), but after IS or IS NOT,
//     where they are part of the test (x IS NULL, x IS NOT TRUE).
//
// Comments are skipped when looking at neighbours. toks is rewritten in place and returned,
// perhaps shorter.
func Fold(sql string, toks []Token) []Token {
	out := toks[:0]
	prev := -1 // index in out of the last token that is not a comment
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.Kind == Other && t.End-t.Start == 1 && sql[t.Start] == '-' && startsOperand(sql, out, prev):
			j := nextToken(toks, i)
			if j >= 0 && toks[j].Kind == Number && !castFollows(sql, toks, j) {
				// The comments between the sign and the number go with it.
				t = Token{Number, t.Start, toks[j].End}
				i = j
			}
		case t.Kind == Other && isBoolOrNull(sql[t.Start:t.End]) && !afterIs(sql, out, prev):
			t.Kind = Const
		}
		out = append(out, t)
		if t.Kind != Comment {
			prev = len(out) - 1
		}
	}
	return out
}

// startsOperand reports whether a token after out[prev] starts an operand: nothing before it,
// an operator, an opening bracket or comma, or a keyword after which an expression starts.
func startsOperand(sql string, out []Token, prev int) bool {
	if prev < 0 {
		return true
	}
	p := out[prev]
	if p.Kind != Other {
		return false // a constant or parameter: the minus is binary
	}
	w := sql[p.Start:p.End]
	switch c := w[0]; {
	case c == '(' || c == ',' || c == '[':
		return true
	case c == ')' || c == ']':
		return false
	case isOpChar(c):
		return true
	case isIdentStart(c):
		return isExprKeyword(w)
	}
	return false
}

// isExprKeyword reports a reserved word after which an expression starts, so that a minus
// after it is a sign (an identifier there would make it binary).
func isExprKeyword(w string) bool {
	for _, k := range [...]string{"select", "where", "when", "then", "else", "and", "or", "not", "between",
		"limit", "offset", "return", "case", "like", "ilike", "having", "on", "distinct", "all", "any", "some", "array"} {
		if len(w) == len(k) && equalFoldASCII(w, k) {
			return true
		}
	}
	return false
}

func isBoolOrNull(w string) bool {
	return len(w) == 4 && (equalFoldASCII(w, "true") || equalFoldASCII(w, "null")) || len(w) == 5 && equalFoldASCII(w, "false")
}

// afterIs reports whether out[prev] is IS, or NOT after IS.
func afterIs(sql string, out []Token, prev int) bool {
	if prev < 0 {
		return false
	}
	w := sql[out[prev].Start:out[prev].End]
	if len(w) == 2 && equalFoldASCII(w, "is") {
		return true
	}
	if len(w) != 3 || !equalFoldASCII(w, "not") {
		return false
	}
	for k := prev - 1; k >= 0; k-- {
		if out[k].Kind != Comment {
			w := sql[out[k].Start:out[k].End]
			return len(w) == 2 && equalFoldASCII(w, "is")
		}
	}
	return false
}

// nextToken is the index of the first token after i that is not a comment, or -1.
func nextToken(toks []Token, i int) int {
	for j := i + 1; j < len(toks); j++ {
		if toks[j].Kind != Comment {
			return j
		}
	}
	return -1
}

// castFollows reports a :: cast straight after toks[j] (comments aside).
func castFollows(sql string, toks []Token, j int) bool {
	k := nextToken(toks, j)
	if k < 0 || sql[toks[k].Start] != ':' {
		return false
	}
	k2 := nextToken(toks, k)
	return k2 == k+1 && toks[k].End == toks[k2].Start && sql[toks[k2].Start] == ':'
}

// equalFoldASCII compares s with lower-case ASCII k, ignoring the case of s's ASCII letters.
func equalFoldASCII(s, k string) bool {
	for i := 0; i < len(k); i++ {
		if s[i]|0x20 != k[i] {
			return false
		}
	}
	return true
}
