// Package sqlcomment reads the comment that sqlcommenter libraries and OpenTelemetry
// instrumentations add to SQL statements, /*key='value',traceparent='00-…-…-01'*/, at the end of
// the statement (or at its start, where some prepend it): the text without it, so that each
// request's comment does not make a new text for caches keyed by text, and the W3C trace context
// of its traceparent.
//
// Only a comment in that format is taken (keys and single-quoted values, separated by commas),
// and only within maxComment bytes of the end or start. Any other comment is part of the text.
package sqlcomment

import (
	"strings"
	"unsafe"
)

// maxComment bounds the comment read: a longer one is left alone.
const maxComment = 2048

// Trace is a valid, sampled W3C trace context: the trace and the span (parent-id) that ran the
// statement.
type Trace struct {
	TraceID [16]byte
	SpanID  [8]byte
}

// Valid reports a trace context that was found: a zero trace id is invalid in W3C's rules.
func (t Trace) Valid() bool { return t.TraceID != [16]byte{} }

// Split returns sql without its sqlcommenter comment, and the trace context of the comment's
// traceparent when it is valid and sampled (else the zero Trace). Text without such a comment
// comes back as it is; nothing is allocated.
func Split(sql string) (string, Trace) {
	start, end, tr := bounds(sql)
	return sql[start:end], tr
}

// SplitBytes is Split for a statement's text as it came in a message.
func SplitBytes(sql []byte) ([]byte, Trace) {
	start, end, tr := bounds(unsafe.String(unsafe.SliceData(sql), len(sql)))
	return sql[start:end], tr
}

// bounds returns where the statement without its sqlcommenter comment starts and ends in sql.
func bounds(sql string) (start, end int, tr Trace) {
	end = len(sql)
	// At the end, after which only spaces and semicolons may follow.
	e := len(sql)
	for e > 0 && (isSpace(sql[e-1]) || sql[e-1] == ';') {
		e--
	}
	if e >= 4 && sql[e-1] == '/' && sql[e-2] == '*' {
		lo := max(0, e-maxComment)
		i := e - 3 // the last "/*" before the end: a '*' after a '/'
		for i > lo && (sql[i] != '*' || sql[i-1] != '/') {
			i--
		}
		i--
		// It has no "/*" after it; a "*/" in it would close a nested comment.
		if i >= lo && !strings.Contains(sql[i+2:e-2], "*/") {
			if t, ok := parse(sql[i+2 : e-2]); ok {
				tr = t
				end = i
				for end > 0 && isSpace(sql[end-1]) {
					end--
				}
			}
		}
	}
	// At the start.
	s := 0
	for s < end && isSpace(sql[s]) {
		s++
	}
	if s+4 <= end && sql[s] == '/' && sql[s+1] == '*' {
		if i := strings.Index(sql[s+2:min(end, s+maxComment)], "*/"); i >= 0 {
			i += s + 2
			if t, ok := parse(sql[s+2 : i]); ok && !strings.Contains(sql[s+2:i], "/*") {
				if !tr.Valid() {
					tr = t
				}
				start = i + 2
			}
		}
	}
	return start, end, tr
}

// parse reads the body of a comment as sqlcommenter's key='value' list; ok reports that format.
// The body holds no comment delimiter.
func parse(body string) (tr Trace, ok bool) {
	for {
		body = trimSpace(body)
		eq := strings.IndexByte(body, '=')
		if eq <= 0 || eq+1 >= len(body) || body[eq+1] != '\'' || !isKey(body[:eq]) {
			return Trace{}, false
		}
		key := body[:eq]
		body = body[eq+2:]
		end := 0 // the value's closing quote: sqlcommenter escapes a quote in it with a backslash
		for {
			q := strings.IndexByte(body[end:], '\'')
			if q < 0 {
				return Trace{}, false
			}
			end += q
			if end == 0 || body[end-1] != '\\' {
				break
			}
			end++
		}
		if key == "traceparent" {
			tr = traceparent(body[:end])
		}
		body = trimSpace(body[end+1:])
		if body == "" {
			return tr, true
		}
		if body[0] != ',' {
			return Trace{}, false
		}
		body = body[1:]
	}
}

func trimSpace(s string) string {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	return s
}

// isKey reports a (URL-encoded) sqlcommenter key.
func isKey(k string) bool {
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '%' || c == '~') {
			return false
		}
	}
	return true
}

// traceparent reads a W3C traceparent, version-traceid-parentid-flags: the zero Trace unless it
// is valid (lower case hex, ids not all zero, version 00 exactly so long, a later version at
// least so long) and sampled.
func traceparent(v string) Trace {
	var tr Trace
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return Trace{}
	}
	ver, ok1 := hexByte(v[0], v[1])
	flags, ok2 := hexByte(v[53], v[54])
	if !ok1 || !ok2 || ver == 0xff || ver == 0 && len(v) != 55 || len(v) > 55 && v[55] != '-' {
		return Trace{}
	}
	for j := range tr.TraceID {
		b, ok := hexByte(v[3+2*j], v[4+2*j])
		if !ok {
			return Trace{}
		}
		tr.TraceID[j] = b
	}
	for j := range tr.SpanID {
		b, ok := hexByte(v[36+2*j], v[37+2*j])
		if !ok {
			return Trace{}
		}
		tr.SpanID[j] = b
	}
	if flags&1 == 0 || tr.SpanID == [8]byte{} {
		return Trace{}
	}
	return tr
}

func hexByte(a, b byte) (byte, bool) {
	x, y := hexValue[a], hexValue[b]
	return x<<4 | y&0xf, x|y < 0x10
}

// hexValue is the value of each lower case hex digit (W3C's ids are lower case), 0xff for any
// other byte.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
	}
	return t
}()

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
