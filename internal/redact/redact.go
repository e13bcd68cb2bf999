// Package redact keeps passwords out of what pgsidecar shows: connection strings in logs and
// APIs, error text from parsing or connecting, and SQL in the slow query log.
package redact

import (
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DSN returns the connection string with any password replaced by "xxxxx", for URL and
// key=value forms alike. It is what logs, errors and APIs show in place of the DSN.
func DSN(dsn string) string {
	if isURLForm(strings.Trim(dsn, urlCutset)) {
		// A URL with a stray space or quotes around it (an env file's) is still one.
		dsn = strings.Trim(dsn, urlCutset)
		// Mask the raw user information first: a password with an unescaped / or @ is not
		// where net/url looks for one, but it is still the password.
		if lo, hi, ok := rawURLPassword(dsn); ok {
			dsn = dsn[:lo] + "xxxxx" + dsn[hi:]
		}
		u, err := url.Parse(dsn)
		if err != nil {
			return dsn
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
		}
		q := u.Query()
		for _, key := range []string{"password", "sslpassword"} {
			if q.Has(key) {
				q.Set(key, "xxxxx")
				u.RawQuery = q.Encode()
			}
		}
		return u.String()
	}
	if fields := strings.Fields(dsn); len(fields) > 0 && !strings.Contains(fields[0], "=") {
		// Neither a URL nor key=value pairs: a typo could hold anything, the password included.
		return "(not shown: neither a URL nor key=value pairs)"
	}
	return redactKeyValue(dsn)
}

// urlCutset is what may surround a URL pasted from an env file or a shell.
const urlCutset = " \t\r\n'\""

// isURLForm reports whether dsn starts with a URL scheme ("postgres://", or a misspelt one).
// A "://" further in belongs to a key=value DSN's value, a password perhaps, and pgx reads
// such a DSN as key=value too.
func isURLForm(dsn string) bool {
	scheme, _, found := strings.Cut(dsn, "://")
	if !found || scheme == "" {
		return false
	}
	for i, c := range scheme {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

// rawURLPassword finds what a person typing a URL meant as its password, without parsing:
// from the first ":" after the scheme to the last "@". It masks more than needed rather than
// less when other parts hold those characters.
func rawURLPassword(dsn string) (lo, hi int, ok bool) {
	scheme := strings.Index(dsn, "://")
	if scheme < 0 {
		return 0, 0, false
	}
	start := scheme + 3
	at := strings.LastIndex(dsn, "@")
	if at < start {
		return 0, 0, false
	}
	c := strings.Index(dsn[start:at], ":")
	if c < 0 {
		return 0, 0, false
	}
	return start + c + 1, at, true
}

// redactKeyValue masks password=... in a key=value DSN, with or without single quotes.
func redactKeyValue(dsn string) string {
	var b strings.Builder
	i := 0
	for i < len(dsn) {
		j := strings.Index(dsn[i:], "password")
		if j < 0 {
			b.WriteString(dsn[i:])
			break
		}
		j += i
		k := j + len("password")
		for k < len(dsn) && isSpace(dsn[k]) {
			k++
		}
		// "password" starts the key, or follows "ssl" (sslpassword, the client key's passphrase).
		keyStart := j
		if j >= 3 && dsn[j-3:j] == "ssl" {
			keyStart = j - 3
		}
		atWord := keyStart == 0 || isSpace(dsn[keyStart-1])
		if !atWord || k >= len(dsn) || dsn[k] != '=' {
			b.WriteString(dsn[i:k])
			i = k
			continue
		}
		b.WriteString(dsn[i:j])
		b.WriteString("password=xxxxx")
		k++
		for k < len(dsn) && isSpace(dsn[k]) {
			k++
		}
		if k < len(dsn) && dsn[k] == '\'' {
			k++
			for k < len(dsn) && dsn[k] != '\'' {
				if dsn[k] == '\\' {
					k++
				}
				k++
			}
			k++
		} else {
			for k < len(dsn) && !isSpace(dsn[k]) {
				k++
			}
		}
		i = min(k, len(dsn))
	}
	return b.String()
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Scrub removes from msg every password found in the given DSNs and in PGPASSWORD, in plain and
// URL-escaped form. Errors that come from parsing or connecting pass through it before they are
// logged or returned.
func Scrub(msg string, dsns ...string) string { return NewScrubber(dsns...).Scrub(msg) }

// Scrubber is Scrub with its passwords found once: for a caller that scrubs many messages
// against the same DSN.
// It is safe for concurrent use, AddPassword included.
type Scrubber struct {
	mu    sync.Mutex // serialises AddPassword
	forms atomic.Pointer[[]string]
}

// NewScrubber finds the passwords of dsns and PGPASSWORD, and the forms they may take in text.
func NewScrubber(dsns ...string) *Scrubber {
	s := &Scrubber{}
	s.forms.Store(new([]string))
	s.AddPassword(passwords(dsns...)...)
	return s
}

// AddPassword masks more passwords from now on, keeping the ones already masked: a password
// read again on a reload, say, while errors may still quote the one before it.
func (s *Scrubber) AddPassword(passwords ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	forms := append([]string(nil), *s.forms.Load()...)
	for _, p := range passwords {
		if len(p) < 2 {
			continue
		}
		kvEscaped := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p)
		for _, form := range []string{kvEscaped, p, url.QueryEscape(p), url.PathEscape(p), (&url.URL{User: url.UserPassword("", p)}).User.String()[1:]} {
			if form != "" && !slices.Contains(forms, form) {
				forms = append(forms, form)
			}
		}
	}
	s.forms.Store(&forms)
}

// Scrub replaces every form of the passwords in msg with xxxxx.
func (s *Scrubber) Scrub(msg string) string {
	for _, form := range *s.forms.Load() {
		msg = strings.ReplaceAll(msg, form, "xxxxx")
	}
	return msg
}

// minPiece is the shortest piece of a password split at an @ that is masked on its own: shorter
// ones would mask ordinary words and give little away.
const minPiece = 4

func passwords(dsns ...string) []string {
	var out []string
	if p := os.Getenv("PGPASSWORD"); p != "" {
		out = append(out, p)
	}
	for _, dsn := range dsns {
		if dsn == "" {
			continue
		}
		if trimmed := strings.Trim(dsn, urlCutset); isURLForm(trimmed) {
			dsn = trimmed
			if u, err := url.Parse(dsn); err == nil {
				if p, ok := u.User.Password(); ok {
					out = append(out, p)
				}
				for _, key := range []string{"password", "sslpassword"} {
					if p := u.Query().Get(key); p != "" {
						out = append(out, p)
					}
				}
			}
			if lo, hi, ok := rawURLPassword(dsn); ok {
				raw := dsn[lo:hi]
				out = append(out, raw)
				if p, err := url.PathUnescape(raw); err == nil {
					out = append(out, p)
				}
				// A password with an unescaped @ is split there by a parser that reads the
				// rest as the host, which connection errors then show: mask each piece.
				if pieces := strings.Split(raw, "@"); len(pieces) > 1 {
					for _, piece := range pieces {
						if len(piece) < minPiece {
							continue
						}
						out = append(out, piece)
						if p, err := url.PathUnescape(piece); err == nil {
							out = append(out, p)
						}
					}
				}
			}
			continue
		}
		if pc, err := pgxpool.ParseConfig(dsn); err == nil && pc.ConnConfig.Password != "" {
			out = append(out, pc.ConnConfig.Password)
		}
		// Also the raw value after password=, in case parsing failed.
		red := redactKeyValue(dsn)
		if red != dsn {
			for _, f := range strings.Fields(dsn) {
				for _, key := range []string{"password=", "sslpassword="} {
					if v, ok := strings.CutPrefix(f, key); ok && v != "" {
						out = append(out, strings.Trim(v, "'"))
					}
				}
			}
		}
	}
	return out
}
