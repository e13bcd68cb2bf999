package redact

import (
	"regexp"
	"strings"
)

// passwordSetting matches PASSWORD '...' (ALTER ROLE, CREATE USER) and password=... (connection
// strings given to dblink or postgres_fdw), so that a slow statement never shows a password.
var passwordSetting = regexp.MustCompile(`(?i)\bpassword(\s*=\s*|\s+)('(?:[^']|'')*'?|[^\s',;)]+)`)

// urlPassword matches the password of a URL with user information.
var urlPassword = regexp.MustCompile(`(://[^:/@\s']*:)[^@\s']+@`)

// SQLPasswords replaces password values in SQL text (PASSWORD '...', password=..., URL
// passwords) with xxxxx, so a logged or listed slow statement never shows one.
func SQLPasswords(sql string) string {
	sql = passwordSetting.ReplaceAllStringFunc(sql, func(m string) string {
		sub := passwordSetting.FindStringSubmatch(m)
		sep, val := sub[1], sub[2]
		switch {
		case strings.HasPrefix(val, "'"):
			return m[:len(m)-len(val)] + "'xxxxx'"
		case strings.Contains(sep, "=") && !strings.HasPrefix(val, "$"):
			return m[:len(m)-len(val)] + "xxxxx"
		}
		return m // "password FROM users", "password = $1": no secret in the text
	})
	return urlPassword.ReplaceAllString(sql, "${1}xxxxx@")
}
