package collector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

func TestParseProbeTarget(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{in: "db1:5433", want: "db1:5433/"},
		{in: "db1", want: "db1:5432/"},
		{in: "db1:5432/app", want: "db1:5432/app"},
		{in: "postgres://db1:6000/app", want: "db1:6000/app"},
		{in: "postgresql://[::1]:6000", want: "[::1]:6000/"},
		{in: "", err: "missing"},
		{in: "postgres://u:secret@db1/app", err: "user or password"},
		{in: "db1/app?sslmode=disable", err: "parameters"},
		{in: "host=db1 port=5432", err: "host:port"},
		{in: "http://db1:5432", err: "host:port"},
		{in: "postgres://db1,db2/app", err: "one host"},
		{in: "db1:0", err: "port"},
		{in: "db1:99999", err: "port"},
		{in: "db1/a/b", err: "database"},
		{in: "db~1:5432", err: "host name"},
		{in: strings.Repeat("a", maxTargetLength+1), err: "longer"},
	} {
		got, err := parseProbeTarget(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%.40q: error %v, want one with %q", c.in, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.err == "" && got.String() != c.want:
			t.Errorf("%q: %s, want %s", c.in, got, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the error quotes the password", c.in)
		}
	}
}

func TestAuthModuleAllowlist(t *testing.T) {
	m := &AuthModule{Type: "userpass", Targets: []string{"db-1.internal:5432", "*.pg.internal", "10.20.0.0/16", "192.0.2.7", "[2001:db8::1]:6432"}}
	m.UserPass.Username = "mon"
	if err := m.check(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		host string
		port uint16
		want bool
	}{
		{"db-1.internal", 5432, true},
		{"DB-1.internal", 5432, true},
		{"db-1.internal", 5433, false},
		{"db-2.internal", 5432, false},
		{"a.pg.internal", 6000, true},
		{"pg.internal", 5432, false},
		{"10.20.3.4", 5432, true},
		{"10.21.3.4", 5432, false},
		{"192.0.2.7", 1, true},
		{"192.0.2.8", 5432, false},
		{"2001:db8::1", 6432, true},
		{"2001:db8::1", 5432, false},
		{"127.0.0.1", 5432, false},
	} {
		if got := m.allows(c.host, c.port); got != c.want {
			t.Errorf("allows(%s, %d) = %t, want %t", c.host, c.port, got, c.want)
		}
	}
	open := &AuthModule{}
	if !open.allows("anything.example", 5432) {
		t.Error("a module without targets refused a target")
	}
}

func TestLoadProbeConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pwFile := write("pw", "from-file-pw\n")
	good := write("good.yml", `auth_modules:
  a:
    type: userpass
    userpass: {username: mon, password_file: `+pwFile+`}
    options: {sslmode: require, dbname: app}
`)
	c, err := LoadProbeConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	m := c.AuthModules["a"]
	if m.password != "from-file-pw" {
		t.Errorf("password_file gave %q", m.password)
	}
	// The connection string carries no password, refuses clear text and md5 by default, and
	// keeps the module's options; the target's database wins over the module's dbname.
	tgt, _ := parseProbeTarget("db1:5433")
	cs := m.connString(tgt)
	pc, err := pgxpool.ParseConfig(cs)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cs, "from-file-pw") || pc.ConnConfig.Database != "app" || pc.ConnConfig.User != "mon" ||
		pc.ConnConfig.Port != 5433 || pc.ConnConfig.RequireAuth != defaultRequireAuth || pc.ConnConfig.TLSConfig == nil {
		t.Errorf("connection string %s", cs)
	}
	tgt, _ = parseProbeTarget("db1/other")
	if pc, _ := pgxpool.ParseConfig(m.connString(tgt)); pc.ConnConfig.Database != "other" {
		t.Errorf("the target's database: %s", pc.ConnConfig.Database)
	}

	for _, c := range []struct{ content, want string }{
		{"auth_modules: {}\n", "no auth_modules"},
		{"auth_modules:\n  a:\n    type: tls\n    userpass: {username: mon}\n", `type "tls"`},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {password: hidden-pw-9}\n", "username is empty"},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {username: mon, password: hidden-pw-9, password_file: " + pwFile + "}\n", "both"},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {username: mon, password: hidden-pw-9}\n    options: {host: evil}\n", "may not set host"},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {username: mon, password: hidden-pw-9}\n    targets: ['db:x']\n", "invalid port"},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {username: mon, password: hidden-pw-9}\n    target: [db]\n", "target"},
		{"auth_modules:\n  a:\n    type: userpass\n    userpass: {username: mon, password: [hidden-pw-9]}\n", "wrong type"},
		{"auth_modules: [\n", "not valid YAML"},
	} {
		_, err := LoadProbeConfig(write("bad.yml", c.content))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one with %q", c.content, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hidden-pw-9") {
			t.Errorf("%q: the error quotes the password: %v", c.content, err)
		}
	}
}
