package sqlcomment

import (
	"encoding/hex"
	"strings"
	"testing"
)

const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		in, stmt string
		trace    string // hex trace id, or "" for none
	}{
		{"SELECT 1", "SELECT 1", ""},
		{"SELECT 1 /*controller='users',traceparent='" + tp + "'*/", "SELECT 1", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"SELECT 1 /*traceparent='" + tp + "',tracestate='congo%3Dt61rcWkgMzE'*/ ;\n", "SELECT 1", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"/*traceparent='" + tp + "'*/ SELECT 1", " SELECT 1", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"SELECT 1 /*action='a\\'b', framework='x'*/", "SELECT 1", ""}, // no traceparent: stripped all the same
		// Not sampled, invalid or upper case: stripped, no trace.
		{"SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='00-00000000000000000000000000000000-00f067aa0ba902b7-01'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x'*/", "SELECT 1", ""},
		{"SELECT 1 /*traceparent='01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x'*/", "SELECT 1", "4bf92f3577b34da6a3ce929d0e0e4736"},
		// Not sqlcommenter's format: left alone.
		{"SELECT 1 /* a note */", "SELECT 1 /* a note */", ""},
		{"SELECT 1 /* x /*traceparent='" + tp + "'*/ */", "SELECT 1 /* x /*traceparent='" + tp + "'*/ */", ""},
		{"SELECT 1 /*traceparent='" + tp + "*/", "SELECT 1 /*traceparent='" + tp + "*/", ""},
		{"SELECT '/*traceparent=''" + tp + "''*/'", "SELECT '/*traceparent=''" + tp + "''*/'", ""},
		{"SELECT 1 /*k='" + strings.Repeat("x", maxComment) + "'*/", "SELECT 1 /*k='" + strings.Repeat("x", maxComment) + "'*/", ""},
	} {
		stmt, tr := Split(tc.in)
		got := ""
		if tr.Valid() {
			got = hex.EncodeToString(tr.TraceID[:])
			if hex.EncodeToString(tr.SpanID[:]) != "00f067aa0ba902b7" {
				t.Errorf("Split(%q): span %x", tc.in, tr.SpanID)
			}
		}
		if stmt != tc.stmt || got != tc.trace {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", tc.in, stmt, got, tc.stmt, tc.trace)
		}
		if b, btr := SplitBytes([]byte(tc.in)); string(b) != stmt || btr != tr {
			t.Errorf("Split([]byte(%q)) differs from Split(string)", tc.in)
		}
	}
}

func FuzzSplit(f *testing.F) {
	f.Add("SELECT 1 /*traceparent='" + tp + "'*/")
	f.Add("/*a='b'*/SELECT 1")
	f.Fuzz(func(t *testing.T, sql string) {
		stmt, _ := Split(sql)
		if !strings.Contains(sql, strings.TrimSpace(stmt)) {
			t.Fatalf("Split(%q) = %q, not a part of it", sql, stmt)
		}
	})
}

// BenchmarkSplit: a statement without a comment costs a look at its ends, and nothing allocates.
func BenchmarkSplit(b *testing.B) {
	for _, sql := range []string{"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1 /*application='bench',traceparent='" + tp + "'*/"} {
		name := "comment"
		if !strings.Contains(sql, "/*") {
			name = "none"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				Split(sql)
			}
		})
	}
}
