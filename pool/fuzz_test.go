package pool

import (
	"strconv"
	"strings"
	"testing"
)

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"10000", "10s", "1m30s", "-1", "", "1e9", "9223372036854775807", "0x10", "1.5h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err == nil && d < 0 {
			t.Fatalf("ParseDuration(%q) = %v, negative without error", s, d)
		}
		if err != nil && d != 0 {
			t.Fatalf("ParseDuration(%q) returned %v with error %v", s, d, err)
		}
	})
}

// FuzzFromEnv feeds arbitrary values to the settings, with a password in the URL or key=value
// DSN: no panic, nothing invalid accepted, and errors never echo the password.
func FuzzFromEnv(f *testing.F) {
	f.Add("h", "fuzzpw123", false, "20", "5", "10s")
	f.Add("h:99999", "fuzz pw/@:%", true, "-1", "abc", "1d")
	f.Add("h?sslmode=bogus", "fuzzpw123", false, "0", "0", "0")
	f.Fuzz(func(t *testing.T, host, pw string, kv bool, maxConns, minConns, timeout string) {
		if len(pw) < 6 || strings.Contains(pw, "xxxxx") || strings.ContainsAny(pw, "\x00\n") {
			return
		}
		dsn := "postgres://u:" + pw + "@" + host + "/db"
		if kv {
			dsn = "host=" + host + " password=" + pw + " dbname=db"
		}
		if strings.Contains(strings.Replace(dsn, pw, "", 1), pw) || strings.Contains(maxConns+"\x00"+minConns+"\x00"+timeout, pw) {
			return // the password also appears outside its field; nothing to tell apart
		}
		env := map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONNECTIONS": maxConns, "DB_MIN_CONNECTIONS": minConns,
			"DB_CONNECTION_TIMEOUT": timeout}
		c, err := FromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err == nil {
			if c.MinConns > c.MaxConns || c.MaxConns < 1 || c.ConnectTimeout <= 0 {
				t.Fatalf("accepted invalid config %+v", c)
			}
			return
		}
		// The other settings are echoed (quoted) in their own errors; they are not secrets.
		msg := err.Error()
		for _, v := range []string{maxConns, minConns, timeout} {
			msg = strings.ReplaceAll(msg, strconv.Quote(v), "")
		}
		if strings.Contains(msg, pw) {
			t.Fatalf("error leaks the password %q: %v", pw, err)
		}
	})
}
