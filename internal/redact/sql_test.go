package redact

import "testing"

func TestMaskPasswords(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD 'xxxxx'"},
		{"CREATE USER u WITH ENCRYPTED password 'it''s secret' VALID UNTIL 'infinity'",
			"CREATE USER u WITH ENCRYPTED password 'xxxxx' VALID UNTIL 'infinity'"},
		{"ALTER ROLE app PASSWORD 'cut off by truncati…", "ALTER ROLE app PASSWORD 'xxxxx'"},
		{"SELECT * FROM dblink('host=db user=u password=hunter2 dbname=x', 'SELECT 1')",
			"SELECT * FROM dblink('host=db user=u password=xxxxx dbname=x', 'SELECT 1')"},
		{"SELECT dblink_connect('postgres://u:hunter2@db/x')", "SELECT dblink_connect('postgres://u:xxxxx@db/x')"},
		{"SELECT password FROM users WHERE id = $1", "SELECT password FROM users WHERE id = $1"},
		{"UPDATE users SET password = $1 WHERE id = $2", "UPDATE users SET password = $1 WHERE id = $2"},
		{"SELECT 1", "SELECT 1"},
	} {
		if got := SQLPasswords(tc.in); got != tc.want {
			t.Errorf("SQLPasswords(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
