package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgauth"
)

// AuthMethod is how the proxy authenticates its clients.
type AuthMethod string

// Client authentication methods. Trust is only honoured on loopback and unix socket connections;
// clients from elsewhere are refused with 28000.
const (
	AuthSCRAM AuthMethod = "scram-sha-256"
	AuthMD5   AuthMethod = "md5"
	AuthTrust AuthMethod = "trust"
)

// DefaultMaxMessageSize bounds one client protocol message. PostgreSQL itself accepts up to 1 GiB;
// a smaller bound keeps one client from making the proxy buffer that much for a query text.
const DefaultMaxMessageSize = 64 << 20

// Config configures a Server.
type Config struct {
	// Listen lists addresses: host:port for TCP, or an absolute path for a unix socket (for libpq
	// clients name it <dir>/.s.PGSQL.<port>).
	Listen []string
	// Auth is the client authentication method (default scram-sha-256).
	Auth AuthMethod
	// Users maps user names to their secret: a plain password, an md5 hash ("md5" + hex) or a
	// SCRAM-SHA-256 verifier as stored in pg_authid. Empty means the user and password of the
	// pool's DATABASE_URL.
	Users map[string]string
	// TLS, when set, lets clients switch to TLS after an SSLRequest.
	TLS *tls.Config
	// MaxMessageSize bounds one client message in bytes (default DefaultMaxMessageSize).
	MaxMessageSize int
	// MaxClients bounds the client connections served at once, including those authenticating
	// or waiting for a server connection (default 1000); more are refused with 53300.
	MaxClients int
	// StartupTimeout bounds the handshake: TLS, startup packet and authentication (default 15s).
	StartupTimeout time.Duration
	// ResetTimeout bounds the reset of a server connection when a session ends (default 5s).
	ResetTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Auth == "" {
		c.Auth = AuthSCRAM
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 1000
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = 15 * time.Second
	}
	if c.ResetTimeout <= 0 {
		c.ResetTimeout = 5 * time.Second
	}
}

func (c *Config) validate() error {
	switch c.Auth {
	case AuthSCRAM, AuthMD5, AuthTrust:
	default:
		return fmt.Errorf("proxy auth method (%q) must be one of scram-sha-256, md5, trust", c.Auth)
	}
	if len(c.Listen) == 0 {
		return errors.New("proxy listen address is not set")
	}
	if c.MaxMessageSize < 1024 {
		return fmt.Errorf("proxy max message size (%d) must be at least 1024 bytes", c.MaxMessageSize)
	}
	return nil
}

// LoadUsers reads a users file in PgBouncer's auth_file format: one `"name" "secret"` per line,
// where the secret is a plain password, an md5 hash or a SCRAM-SHA-256 verifier. Lines starting
// with ; or # are comments. Errors give the line number, never a secret.
func LoadUsers(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	users := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		name, rest, ok := quoted(line)
		if !ok {
			return nil, fmt.Errorf("%s:%d: expected \"name\" \"secret\"", path, n)
		}
		secret, _, ok := quoted(strings.TrimSpace(rest))
		if !ok || name == "" {
			return nil, fmt.Errorf("%s:%d: expected \"name\" \"secret\"", path, n)
		}
		if _, err := parseSecret(name, secret); err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %w", path, n, name, err)
		}
		users[name] = secret
	}
	return users, sc.Err()
}

// quoted reads a double-quoted string ("" escapes a quote) at the start of s.
func quoted(s string) (string, string, bool) {
	if s == "" || s[0] != '"' {
		return "", s, false
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] == '"' {
			if i+1 < len(s) && s[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			return b.String(), s[i+1:], true
		}
		b.WriteByte(s[i])
	}
	return "", s, false
}

// credential is what the proxy knows about a user's password, prepared once.
type credential struct {
	md5   string // "md5" + hex(md5(password + user)); empty if unknown
	scram *scramVerifier
}

func parseSecret(user, secret string) (*credential, error) {
	switch {
	case strings.HasPrefix(secret, "SCRAM-SHA-256$"):
		v, err := parseSCRAMVerifier(secret)
		if err != nil {
			return nil, err
		}
		return &credential{scram: v}, nil
	case len(secret) == 35 && strings.HasPrefix(secret, "md5") && isHex(secret[3:]):
		return &credential{md5: secret}, nil
	default:
		v, err := newSCRAMVerifier(secret)
		if err != nil {
			return nil, err
		}
		return &credential{md5: pgauth.MD5(secret, user), scram: v}, nil
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}
