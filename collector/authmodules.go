package collector

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/regularfile"
)

// Auth modules: postgres_exporter's --config.file, which names the credentials a /probe
// connects to its target with. pgsidecar adds a target allowlist per module, and refuses to send
// a password in clear text or as md5 unless the module's options set require_auth.

// ProbeConfig is the content of the probe configuration file (postgres_exporter's
// --config.file): its auth_modules.
type ProbeConfig struct {
	AuthModules map[string]*AuthModule `yaml:"auth_modules"`
}

// AuthModule is one entry of auth_modules: how a probe logs in to a target, and (pgsidecar's
// addition) which targets it may be used for.
type AuthModule struct {
	// Type is the kind of credentials; "userpass" is the only one, as in postgres_exporter.
	Type     string `yaml:"type"`
	UserPass struct {
		Username string `yaml:"username"`
		Password string `yaml:"password"`
		// PasswordFile names a file holding the password, instead of Password.
		PasswordFile string `yaml:"password_file"`
	} `yaml:"userpass"`
	// Options are connection parameters added to the target's connection string (sslmode,
	// dbname, require_auth, …).
	Options map[string]string `yaml:"options"`
	// Targets is the allowlist: host or host:port patterns (glob, * for any), IP addresses and
	// CIDR ranges. Empty allows any target.
	Targets []string `yaml:"targets"`

	password string
	allow    []targetPattern
}

// maxProbeConfigSize bounds the probe configuration file and a password file it names.
const maxProbeConfigSize = 1 << 20

// defaultRequireAuth keeps a probe from sending the module's password in clear text or as an
// md5 hash, which a target (or whoever answers in its place) could replay or crack; a module
// that must log in that way says so with its own require_auth option.
const defaultRequireAuth = "!password,!md5"

// optionsRefused are connection parameters a module's options may not set: the target gives
// the server, the userpass section the credentials.
var optionsRefused = []string{"host", "hostaddr", "port", "user", "password", "passfile", "service", "servicefile"}

// LoadProbeConfig reads and checks a probe configuration file. Its errors name the module and
// never quote a password.
func LoadProbeConfig(file string) (*ProbeConfig, error) {
	b, err := regularfile.Read(file, maxProbeConfigSize)
	if err != nil {
		return nil, err
	}
	var c ProbeConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		// yaml's messages quote the offending text, which may be a password: say where only.
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %s", file, strings.Join(scrubYAMLErrors(te.Errors), "; "))
		}
		return nil, fmt.Errorf("%s: not valid YAML", file)
	}
	if len(c.AuthModules) == 0 {
		return nil, fmt.Errorf("%s: no auth_modules", file)
	}
	var errs []error
	for _, name := range c.moduleNames() {
		m := c.AuthModules[name]
		if m == nil {
			errs = append(errs, fmt.Errorf("auth module %q is empty", name))
			continue
		}
		if err := m.check(); err != nil {
			errs = append(errs, fmt.Errorf("auth module %q: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &c, nil
}

// scrubYAMLErrors keeps the line numbers of yaml's type errors and drops the values they quote.
func scrubYAMLErrors(msgs []string) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		if before, _, ok := strings.Cut(m, ": "); ok && strings.HasPrefix(before, "line ") {
			_, after, _ := strings.Cut(m, ": ")
			if strings.Contains(after, "not found in type") {
				out[i] = m // an unknown field: its name, not a value
				continue
			}
			out[i] = before + ": a value of the wrong type"
			continue
		}
		out[i] = "a value of the wrong type"
	}
	return out
}

// moduleNames lists the modules in order, for stable messages.
func (c *ProbeConfig) moduleNames() []string {
	names := make([]string, 0, len(c.AuthModules))
	for name := range c.AuthModules {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func (m *AuthModule) check() error {
	var errs []error
	if m.Type != "userpass" {
		errs = append(errs, fmt.Errorf("type %q is not supported (userpass is)", m.Type))
	}
	if m.UserPass.Username == "" {
		errs = append(errs, errors.New("userpass.username is empty"))
	}
	m.password = m.UserPass.Password
	if f := m.UserPass.PasswordFile; f != "" {
		if m.UserPass.Password != "" {
			errs = append(errs, errors.New("userpass sets both password and password_file; set one"))
		}
		b, err := regularfile.Read(f, maxProbeConfigSize)
		if err != nil {
			errs = append(errs, fmt.Errorf("userpass.password_file: %w", err))
		}
		m.password = strings.TrimRight(string(b), "\r\n")
	}
	for _, k := range optionsRefused {
		if _, ok := m.Options[k]; ok {
			errs = append(errs, fmt.Errorf("options may not set %s: the target and userpass give it", k))
		}
	}
	for _, t := range m.Targets {
		p, err := parseTargetPattern(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.allow = append(m.allow, p)
	}
	return errors.Join(errs...)
}

// targetPattern is one entry of a module's allowlist.
type targetPattern struct {
	prefix netip.Prefix // an IP address or range; else host
	host   string       // a host name glob, lower case
	port   uint16       // 0: any port
}

func parseTargetPattern(s string) (targetPattern, error) {
	var p targetPattern
	if pf, err := netip.ParsePrefix(s); err == nil {
		p.prefix = pf.Masked()
		return p, nil
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return p, fmt.Errorf("targets: %q has an invalid port", s)
		}
		host, p.port = h, uint16(n)
	}
	if host == "" {
		return p, fmt.Errorf("targets: %q names no host", s)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		p.prefix = netip.PrefixFrom(a, a.BitLen())
		return p, nil
	}
	p.host = strings.ToLower(host)
	if _, err := path.Match(p.host, ""); err != nil {
		return p, fmt.Errorf("targets: %q is not a valid pattern", s)
	}
	return p, nil
}

// allows reports whether the module may be used to log in to host:port. A host name is matched
// as written in the target, not as resolved.
func (m *AuthModule) allows(host string, port uint16) bool {
	if len(m.allow) == 0 {
		return true
	}
	addr, err := netip.ParseAddr(host)
	isIP := err == nil
	for _, p := range m.allow {
		if p.port != 0 && p.port != port {
			continue
		}
		if p.prefix.IsValid() {
			if isIP && p.prefix.Contains(addr.Unmap()) {
				return true
			}
			continue
		}
		if ok, _ := path.Match(p.host, strings.ToLower(host)); ok {
			return true
		}
	}
	return false
}

// probeTarget is a parsed ?target=: a server and, optionally, a database.
type probeTarget struct {
	host     string
	port     uint16
	database string
}

// hostChars are the characters of a host name.
const hostChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"

// maxTargetLength bounds ?target=.
const maxTargetLength = 1024

// parseProbeTarget reads postgres_exporter's target forms: host, host:port, host:port/database,
// or the same as a postgres:// or postgresql:// URL. A target carries no credentials and no
// parameters: those come from the auth module, so a probe URL cannot lower its TLS settings
// or swap its password.
func parseProbeTarget(s string) (probeTarget, error) {
	var t probeTarget
	if s == "" {
		return t, errors.New("the target parameter is missing")
	}
	if len(s) > maxTargetLength {
		return t, fmt.Errorf("the target is longer than %d bytes", maxTargetLength)
	}
	raw := s
	if !strings.HasPrefix(raw, "postgres://") && !strings.HasPrefix(raw, "postgresql://") {
		if strings.Contains(raw, "://") || (strings.Contains(raw, "=") && !strings.Contains(raw, "?")) {
			return t, errors.New("the target must be host:port[/database] or a postgres:// URL")
		}
		raw = "postgresql://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return t, errors.New("the target is not a valid host:port[/database] or URL")
	}
	if u.User != nil {
		return t, errors.New("the target may not carry a user or password: the auth module gives them")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return t, errors.New("the target may not carry parameters: set them in the auth module's options")
	}
	t.host = u.Hostname()
	if t.host == "" || strings.Contains(u.Host, ",") {
		return t, errors.New("the target must name one host")
	}
	if _, err := netip.ParseAddr(t.host); err != nil && strings.Trim(t.host, hostChars) != "" {
		// Only a TCP host: a path would be a Unix socket of this machine.
		return t, errors.New("the target's host must be a host name or an IP address")
	}
	t.port = 5432
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return t, errors.New("the target's port is invalid")
		}
		t.port = uint16(n)
	}
	t.database = strings.TrimPrefix(u.Path, "/")
	if strings.Contains(t.database, "/") {
		return t, errors.New("the target's database name may not contain /")
	}
	return t, nil
}

// String is the target as a key and in logs: host:port/database.
func (t probeTarget) String() string {
	return net.JoinHostPort(t.host, strconv.Itoa(int(t.port))) + "/" + t.database
}

// connString is the connection string of a probe of t with module m, without the password
// (set on the parsed configuration, so it is in no string that an error could quote).
func (m *AuthModule) connString(t probeTarget) string {
	q := url.Values{}
	for k, v := range m.Options {
		q.Set(k, v)
	}
	if _, ok := m.Options["require_auth"]; !ok {
		q.Set("require_auth", defaultRequireAuth)
	}
	db := t.database
	if db == "" {
		db = q.Get("dbname")
	}
	q.Del("dbname")
	if db == "" {
		db = "postgres"
	}
	u := url.URL{Scheme: "postgres", User: url.User(m.UserPass.Username),
		Host: net.JoinHostPort(t.host, strconv.Itoa(int(t.port))), Path: "/" + db, RawQuery: q.Encode()}
	return u.String()
}
