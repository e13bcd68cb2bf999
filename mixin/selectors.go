package mixin

import (
	"fmt"
	"strings"
)

// The selector, the join that keeps other exporters' pg_* series out, and the cluster label are
// applied to every rule here, once, after the rules are written: a rule added to rules.go gets
// them without saying so.

// JoinSeries is a series only pgsidecar exports. Every pg_* series a rule reads is joined with
// it on (job, instance), so a postgres_exporter scraped by the same Prometheus never feeds a
// pgsidecar alert, whatever the jobs are called: a drop-in sidecar may keep the job name it had
// as postgres_exporter.
const JoinSeries = "pgsidecar_build_info"

// joinLabels are the labels a sidecar's pg_* series share with its JoinSeries.
const joinLabels = "on (job, instance)"

// defaultClusterLabel is the label name the rules are written with.
const defaultClusterLabel = "cluster"

// notSeries are the identifiers of PromQL that name no series.
var notSeries = map[string]bool{
	"and": true, "or": true, "unless": true, "offset": true, "bool": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "stddev": true, "stdvar": true,
	"topk": true, "bottomk": true, "quantile": true, "count_values": true, "group": true,
	"limitk": true, "limit_ratio": true,
}

// groupingKeywords are followed by a list of label names.
var groupingKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// scope applies the selector, the join and the cluster label to every rule of f.
func (c Config) scope(f RuleFile) RuleFile {
	for gi := range f.Groups {
		rules := append([]Rule(nil), f.Groups[gi].Rules...)
		for ri := range rules {
			r := &rules[ri]
			e, err := c.scopeExpr(r.Expr)
			if err != nil {
				// The expressions are this package's own: a failure is a bug the tests show.
				panic(fmt.Sprintf("mixin: rule %s%s: %v", r.Alert, r.Record, err))
			}
			r.Expr = e
			if c.ClusterLabel != defaultClusterLabel {
				for k, v := range r.Annotations {
					r.Annotations[k] = strings.ReplaceAll(v, "$labels."+defaultClusterLabel, "$labels."+c.ClusterLabel)
				}
			}
		}
		f.Groups[gi].Rules = rules
	}
	return f
}

// selectorIn adds the configured selector to the matchers between a series' braces (without
// the braces; empty when it has none).
func (c Config) selectorIn(matchers string) string {
	m := strings.TrimSpace(matchers)
	switch {
	case c.Selector == "" && m == "":
		return ""
	case c.Selector == "":
		return "{" + matchers + "}"
	case m == "":
		return "{" + c.Selector + "}"
	}
	return "{" + matchers + ", " + c.Selector + "}"
}

// joined is the right-hand side of the join of a pg_* series.
func (c Config) joined() string {
	return " and " + joinLabels + " " + JoinSeries + c.selectorIn("")
}

// joinedOver is the join of a function of a pg_* range selector: the join series over the same
// range, so that a series a function still reads after its sidecar went away (a leader that was
// killed or rolled out, bridged by last_over_time) is not dropped by the join.
func (c Config) joinedOver(rng string) string {
	return " and " + joinLabels + " last_over_time(" + JoinSeries + c.selectorIn("") + rng + ")"
}

func isIdentStart(b byte) bool {
	return b == '_' || b == ':' || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
}

func isIdent(b byte) bool { return isIdentStart(b) || (b >= '0' && b <= '9') }

// skipString returns the index just past the string literal starting at s[i].
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			if q != '`' {
				j++
			}
		case q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d", i)
}

// closing returns the index of the bracket that closes the one at s[i], skipping strings.
func closing(s string, i int) (int, error) {
	open, shut := s[i], map[byte]byte{'(': ')', '{': '}', '[': ']'}[s[i]]
	depth := 0
	for j := i; j < len(s); j++ {
		switch s[j] {
		case '"', '\'', '`':
			k, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = k - 1
		case open:
			depth++
		case shut:
			depth--
			if depth == 0 {
				return j, nil
			}
		}
	}
	return 0, fmt.Errorf("unbalanced %q at %d", open, i)
}

// scopeExpr rewrites one PromQL expression: every series selector gets the configured selector,
// every pg_* series is joined with JoinSeries, and the cluster label of grouping lists is
// renamed. A pg_* range selector is joined around the function that reads it (a range vector
// cannot be joined). Text the rewrite does not touch keeps its layout, so the default
// configuration changes nothing but the joins.
func (c Config) scopeExpr(s string) (string, error) {
	var out strings.Builder
	// One entry per open parenthesis: where the call it belongs to starts in out (-1 when it is
	// no call), and whether a pg_* range selector inside it needs the call joined.
	type paren struct {
		start int
		join  bool
		rng   string // the range of the pg_* selector inside, as written: [2m]
	}
	var stack []paren
	callStart := -1
	for i := 0; i < len(s); {
		b := s[i]
		switch {
		case b == '"' || b == '\'' || b == '`':
			j, err := skipString(s, i)
			if err != nil {
				return "", err
			}
			out.WriteString(s[i:j])
			i = j
			callStart = -1
		case b == '{' || b == '[':
			// The matchers of a recorded series, a range or a subquery's resolution.
			j, err := closing(s, i)
			if err != nil {
				return "", err
			}
			out.WriteString(s[i : j+1])
			i = j + 1
			callStart = -1
		case b == '(':
			stack = append(stack, paren{start: callStart})
			callStart = -1
			out.WriteByte(b)
			i++
		case b == ')':
			if len(stack) == 0 {
				return "", fmt.Errorf("unbalanced ) at %d", i)
			}
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			out.WriteByte(b)
			i++
			if p.join {
				if p.start < 0 {
					return "", fmt.Errorf("a pg_* range selector outside a function call near %d", i)
				}
				text := out.String()
				out.Reset()
				if alone(text[:p.start], s[i:]) {
					out.WriteString(text + c.joinedOver(p.rng))
				} else {
					out.WriteString(text[:p.start] + "(" + text[p.start:] + c.joinedOver(p.rng) + ")")
				}
			}
			callStart = -1
		case b >= '0' && b <= '9' || b == '.':
			// A number or a duration (offset 1d): digits, letters and dots.
			j := i
			for j < len(s) && (isIdent(s[j]) || s[j] == '.') {
				j++
			}
			out.WriteString(s[i:j])
			i = j
			callStart = -1
		case isIdentStart(b):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			name := s[i:j]
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\n' || s[k] == '\t') {
				k++
			}
			switch {
			case groupingKeywords[name] && k < len(s) && s[k] == '(':
				end, err := closing(s, k)
				if err != nil {
					return "", err
				}
				out.WriteString(s[i:k] + c.labelList(s[k:end+1]))
				i = end + 1
				callStart = -1
			case k < len(s) && s[k] == '(':
				// A function or an aggregation.
				callStart = out.Len()
				out.WriteString(name)
				i = j
			case notSeries[name] || groupingKeywords[name] || strings.Contains(name, ":"):
				out.WriteString(name)
				i = j
				callStart = -1
			default:
				matchers := ""
				if j < len(s) && s[j] == '{' {
					end, err := closing(s, j)
					if err != nil {
						return "", err
					}
					matchers = s[j+1 : end]
					j = end + 1
				}
				sel := name + c.selectorIn(matchers)
				pg := strings.HasPrefix(name, "pg_")
				switch {
				case pg && j < len(s) && s[j] == '[':
					if len(stack) == 0 {
						return "", fmt.Errorf("pg_* range selector %s outside a function call", name)
					}
					end, err := closing(s, j)
					if err != nil {
						return "", err
					}
					top := &stack[len(stack)-1]
					if !top.join {
						top.join, top.rng = true, s[j:end+1]
					}
					out.WriteString(sel)
				case pg && alone(out.String(), s[j:]):
					out.WriteString(sel + c.joined())
				case pg:
					out.WriteString("(" + sel + c.joined() + ")")
				default:
					out.WriteString(sel)
				}
				i = j
				callStart = -1
			}
		default:
			out.WriteByte(b)
			if b != ' ' && b != '\n' && b != '\t' {
				callStart = -1
			}
			i++
		}
	}
	if len(stack) != 0 {
		return "", fmt.Errorf("unbalanced (")
	}
	return out.String(), nil
}

// alone says whether an expression between before and after is already the whole of a
// parenthesised group, so a join needs no parentheses of its own.
func alone(before, after string) bool {
	return strings.HasSuffix(strings.TrimRight(before, " \n\t"), "(") &&
		strings.HasPrefix(strings.TrimLeft(after, " \n\t"), ")")
}

// labelList renames the cluster label in a parenthesised list of label names.
func (c Config) labelList(list string) string {
	if c.ClusterLabel == defaultClusterLabel {
		return list
	}
	names := strings.Split(list[1:len(list)-1], ",")
	for i, n := range names {
		if strings.TrimSpace(n) == defaultClusterLabel {
			names[i] = strings.Replace(n, defaultClusterLabel, c.ClusterLabel, 1)
		}
	}
	return "(" + strings.Join(names, ",") + ")"
}
