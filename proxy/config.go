package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/units"

	"github.com/pgsidecar/pgsidecar/internal/regularfile"
	"github.com/pgsidecar/pgsidecar/internal/settings"
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

func (m AuthMethod) known() bool { return m == AuthSCRAM || m == AuthMD5 || m == AuthTrust }

// TLSMode is the proxy's TLS policy for client connections.
type TLSMode string

// TLS policies. The zero value picks TLSAllow when a certificate is configured and TLSDisable
// otherwise, which is how the proxy behaved before the policy existed.
const (
	// TLSDisable answers every SSLRequest with 'N', even with a certificate configured, so TLS
	// can be turned off without removing the certificate from a deployment.
	TLSDisable TLSMode = "disable"
	// TLSAllow offers TLS to clients that ask (SSLRequest) and serves plaintext to the others.
	TLSAllow TLSMode = "allow"
	// TLSRequire refuses plaintext logins over TCP with FATAL 28000, as a PostgreSQL server with
	// only hostssl lines in pg_hba.conf does. Unix socket clients are not refused: PostgreSQL
	// matches them with local lines, never hostssl, and libpq never asks for TLS on a socket.
	TLSRequire TLSMode = "require"
)

func (m TLSMode) known() bool { return m == "" || m == TLSDisable || m == TLSAllow || m == TLSRequire }

// maxStartup resolves MaxStartup's 0 to its rule.
func (c Config) maxStartup() int {
	if c.MaxStartup > 0 {
		return c.MaxStartup
	}
	return max(10, min(100, c.MaxClients/2))
}

// tlsMode resolves the zero TLSMode against the configured certificate.
func (c Config) tlsMode() TLSMode {
	if c.TLSMode != "" {
		return c.TLSMode
	}
	if c.TLSCertFile != "" || c.TLS != nil {
		return TLSAllow
	}
	return TLSDisable
}

// PoolMode is when a client holds a server connection.
type PoolMode string

// Pool modes.
const (
	// PoolSession gives each client one server connection from login to logout: every session
	// feature works as on a direct connection.
	PoolSession PoolMode = "session"
	// PoolTransaction gives a client a server connection only while it is in a transaction or
	// has requests outstanding, so many clients share few server connections. Session state
	// that cannot move between connections pins the client to its connection (see the package
	// documentation).
	PoolTransaction PoolMode = "transaction"
)

func (m PoolMode) known() bool { return m == PoolSession || m == PoolTransaction }

// PinPolicy is what transaction mode does with a statement that would pin its session.
type PinPolicy string

// Pin policies.
const (
	// PinPolicyPin pins the session to its server connection until the client leaves.
	PinPolicyPin PinPolicy = "pin"
	// PinPolicyError answers the statement with an in-band ERROR (SQLSTATE 0A000) instead, for
	// applications that would rather know; a client that asked for a pinned session at login
	// still gets one.
	PinPolicyError PinPolicy = "error"
)

func (p PinPolicy) known() bool { return p == PinPolicyPin || p == PinPolicyError }

// DefaultMaxMessageSize bounds one client protocol message. PostgreSQL itself accepts up to 1 GiB;
// a smaller bound keeps one client from making the proxy buffer that much for a query text.
const DefaultMaxMessageSize = 64 << 20

// Config configures a Server. Start from DefaultConfig; Settings fills one from flags and
// environment variables.
type Config struct {
	// Listen lists addresses: host:port for TCP, or an absolute path for a unix socket (for libpq
	// clients name it <dir>/.s.PGSQL.<port>).
	Listen []string
	// Auth is the client authentication method.
	Auth AuthMethod
	// UsersFile is a file of client credentials in PgBouncer's auth_file format (see LoadUsers),
	// read by New and again by Reload. Give it or Users, not both.
	UsersFile string
	// Users maps user names to their secret: a plain password, an md5 hash ("md5" + hex) or a
	// SCRAM-SHA-256 verifier as stored in pg_authid. With neither Users nor UsersFile, the user
	// and password of the pool's DATABASE_URL.
	Users map[string]string
	// PasswordRotationWindow is how long, without Users or UsersFile, the pool user's previous
	// password stays accepted from clients after Reload finds the pool's password changed
	// (Manager.ReloadPassword); 0 accepts only the new one.
	PasswordRotationWindow time.Duration
	// TLSCertFile and TLSKeyFile, given together, are the certificate and key New loads for TLS
	// to clients, and Reload loads again. Give them or TLS, not both.
	TLSCertFile, TLSKeyFile string
	// TLS, when set, lets clients switch to TLS after an SSLRequest (unless TLSMode is
	// TLSDisable).
	TLS *tls.Config
	// TLSMode is the TLS policy; empty means TLSAllow with a certificate, TLSDisable without.
	TLSMode TLSMode
	// MaxMessageSize bounds one client message in bytes.
	MaxMessageSize int
	// MaxClients bounds the authenticated client connections served at once, including those
	// waiting for a server connection; more are refused with 53300 after authentication.
	// Connections still in startup do not count: MaxStartup bounds them.
	MaxClients int
	// MaxStartup bounds the connections still in startup (TLS handshake, startup packet,
	// authentication). When it is reached, a new connection closes the oldest one in startup,
	// so connections that never finish their startup cannot keep real clients out for the
	// startup timeout. 0 means max(10, min(100, MaxClients/2)).
	MaxStartup int
	// StartupTimeout bounds the handshake: TLS, startup packet and authentication.
	StartupTimeout time.Duration
	// ResetTimeout bounds the reset of a server connection when a session ends.
	ResetTimeout time.Duration
	// PoolMode is session or transaction pooling.
	PoolMode PoolMode
	// QueryWaitTimeout bounds a client's wait for a server connection that another client
	// gives back: at login in session mode (then FATAL 53300), at each request in transaction
	// mode (then ERROR 53300 in-band). 0 means the pool's DB_CONNECTION_TIMEOUT.
	QueryWaitTimeout time.Duration
	// IdleTransactionTimeout, when not 0, ends a client that holds a server connection in a
	// transaction with no request outstanding for this long: FATAL 25P03, its transaction
	// rolled back and the connection freed for other clients.
	IdleTransactionTimeout time.Duration
	// MaxPreparedStatements bounds the protocol-level prepared statements the proxy keeps on
	// each server connection in transaction mode; the least recently used is closed to make
	// room.
	MaxPreparedStatements int
	// PinPolicy is what transaction mode does with a statement that would pin its session.
	PinPolicy PinPolicy
	// AuthFailureLogInterval spaces the log lines of repeated client failures ("Proxy
	// authentication failed", and connections closed at --proxy.max-startup-connections): the
	// first is logged in full, the ones after it within the interval in one summary line with
	// their count ("suppressed"). The auth failures metric counts every one.
	AuthFailureLogInterval time.Duration
}

// Setting describes one proxy setting: its flag, its environment variable, its default and its
// meaning.
type Setting = settings.Setting[Config]

// Settings lists every proxy setting in the order they are documented.
func Settings() []Setting {
	return []Setting{
		{Flag: "proxy.listen-address", Env: "PROXY_LISTEN_ADDRESS", PlaceHolder: "ADDRESS", Repeatable: true,
			Help: "Serve the PostgreSQL protocol on this address (host:port, or an absolute unix socket path such as /run/pgsidecar/.s.PGSQL.6432); repeatable. The proxy is off unless set.",
			Set:  settings.Strings(func(c *Config) *[]string { return &c.Listen })},
		{Flag: "proxy.auth-method", Env: "PROXY_AUTH_METHOD", Default: string(AuthSCRAM),
			Help: "Client authentication: scram-sha-256, md5, or trust (trust only for loopback and unix socket clients).",
			Set: func(c *Config, v string) error {
				// Checked here too, so a wrong method fails even while the proxy is off.
				if !AuthMethod(v).known() {
					return fmt.Errorf("--proxy.auth-method must be one of scram-sha-256, md5, trust, got '%s'", v)
				}
				c.Auth = AuthMethod(v)
				return nil
			}},
		{Flag: "proxy.users-file", Env: "PROXY_USERS_FILE", PlaceHolder: "FILE",
			Help: "Client credentials in PgBouncer auth_file format (\"user\" \"password, md5 hash or SCRAM verifier\"), read again on SIGHUP and POST /-/reload; default: the user and password of DATABASE_URL.",
			Set:  settings.String(func(c *Config) *string { return &c.UsersFile })},
		{Flag: "proxy.password-rotation-window", Env: "PROXY_PASSWORD_ROTATION_WINDOW", Default: "1h",
			Help: "Without --proxy.users-file, clients log in with the password of DATABASE_URL. When a reload (SIGHUP, POST /-/reload) finds that password changed, the previous one is still accepted for this long, and each login with it is logged and counted, so applications can move over without being locked out; 0: only the new one.",
			Set:  settings.Duration("--proxy.password-rotation-window", func(c *Config) *time.Duration { return &c.PasswordRotationWindow })},
		{Flag: "proxy.tls-cert-file", Env: "PROXY_TLS_CERT_FILE", PlaceHolder: "FILE",
			Help: "Certificate for TLS to proxy clients (with --proxy.tls-key-file), read again with the key on SIGHUP and POST /-/reload.",
			Set:  settings.String(func(c *Config) *string { return &c.TLSCertFile })},
		{Flag: "proxy.tls-key-file", Env: "PROXY_TLS_KEY_FILE", PlaceHolder: "FILE",
			Help: "Private key for TLS to proxy clients.",
			Set:  settings.String(func(c *Config) *string { return &c.TLSKeyFile })},
		{Flag: "proxy.tls-mode", Env: "PROXY_TLS_MODE", PlaceHolder: "MODE",
			Help: "TLS policy for proxy clients: disable (answer every SSLRequest with N), allow (TLS for clients that ask) or require (refuse plaintext TCP logins with SQLSTATE 28000; unix socket clients are not refused); default: allow with a certificate, disable without.",
			Set: func(c *Config, v string) error {
				if v == "" || !TLSMode(v).known() {
					return fmt.Errorf("--proxy.tls-mode must be one of disable, allow, require, got '%s'", v)
				}
				c.TLSMode = TLSMode(v)
				return nil
			}},
		{Flag: "proxy.pool-mode", Env: "PROXY_POOL_MODE", Default: string(PoolSession),
			Help: "session: a client keeps one server connection from login to logout. transaction: a client holds one only while in a transaction or with requests outstanding, so many clients share DB_MAX_CONNECTIONS server connections; settings (SET, RESET, set_config) follow each client; sessions that take state that cannot move (SET ROLE, LISTEN, session advisory locks, temporary objects, SQL PREPARE, WITH HOLD cursors) are pinned to their connection until they end.",
			Set: func(c *Config, v string) error {
				if !PoolMode(v).known() {
					return fmt.Errorf("--proxy.pool-mode must be session or transaction, got '%s'", v)
				}
				c.PoolMode = PoolMode(v)
				return nil
			}},
		{Flag: "proxy.pin-policy", Env: "PROXY_PIN_POLICY", Default: string(PinPolicyPin),
			Help: "Transaction mode, a statement that would pin its session to one server connection (SET ROLE, a session advisory lock, a temporary table, LISTEN, ...): pin (keep the connection for the client until it leaves) or error (answer it with an in-band ERROR, SQLSTATE 0A000). A client may ask for a pinned session at login with options='-c pgsidecar.pool_mode=session'.",
			Set: func(c *Config, v string) error {
				if !PinPolicy(v).known() {
					return fmt.Errorf("--proxy.pin-policy must be pin or error, got '%s'", v)
				}
				c.PinPolicy = PinPolicy(v)
				return nil
			}},
		{Flag: "proxy.query-wait-timeout", Env: "PROXY_QUERY_WAIT_TIMEOUT", Default: "auto",
			Help: "How long a client waits for a server connection when all DB_MAX_CONNECTIONS are in use: in transaction mode each request, which then fails with ERROR 53300 while the client stays connected; in session mode the login, which then fails with FATAL 53300. auto: DB_CONNECTION_TIMEOUT, the bound on every other wait for a pool connection, so one setting keeps bounding them all unless this is set (PgBouncer's query_wait_timeout defaults to 120s, longer than most applications wait for a query). Opening a new server connection stays bounded by DB_CONNECTION_TIMEOUT.",
			Set: func(c *Config, v string) error {
				if v == "auto" {
					c.QueryWaitTimeout = 0
					return nil
				}
				var d time.Duration
				if err := settings.Duration("--proxy.query-wait-timeout", func(c *time.Duration) *time.Duration { return c })(&d, v); err != nil {
					return err
				}
				if d <= 0 {
					return fmt.Errorf("--proxy.query-wait-timeout must be auto or a duration greater than 0, got '%s'", v)
				}
				c.QueryWaitTimeout = d
				return nil
			}},
		{Flag: "proxy.idle-transaction-timeout", Env: "PROXY_IDLE_TRANSACTION_TIMEOUT", Default: "0",
			Help: "Disconnect a client idle in a transaction (no request outstanding) for this long, with FATAL 25P03; its transaction is rolled back and its server connection goes to other clients. 0: off, as PostgreSQL's idle_in_transaction_session_timeout and PgBouncer's idle_transaction_timeout are by default, since ending a slow but live transaction loses its work; set it when clients may forget open transactions, each of which holds one of DB_MAX_CONNECTIONS from everyone.",
			Set:  settings.Duration("--proxy.idle-transaction-timeout", func(c *Config) *time.Duration { return &c.IdleTransactionTimeout })},
		{Flag: "proxy.max-prepared-statements", Env: "PROXY_MAX_PREPARED_STATEMENTS", Default: "200",
			Help: "Protocol-level prepared statements kept on each server connection in transaction mode; the least recently used one is closed to make room.",
			Set:  settings.Int("--proxy.max-prepared-statements", func(c *Config) *int { return &c.MaxPreparedStatements })},
		{Flag: "proxy.max-message-size", Env: "PROXY_MAX_MESSAGE_SIZE", Default: units.Base2Bytes(DefaultMaxMessageSize).String(),
			Help: "Largest protocol message a proxy client may send.",
			Set: func(c *Config, v string) error {
				n, err := units.ParseBase2Bytes(v)
				if err != nil {
					return fmt.Errorf("--proxy.max-message-size: %w", err)
				}
				if n > math.MaxInt32 {
					return fmt.Errorf("--proxy.max-message-size (%s) must not exceed 2GiB", n)
				}
				c.MaxMessageSize = int(n)
				return nil
			}},
		{Flag: "proxy.max-client-connections", Env: "PROXY_MAX_CLIENT_CONNECTIONS", Default: "1000",
			Help: "Authenticated client connections served at once, those waiting for a server connection included; more are refused with SQLSTATE 53300. Connections still in startup count against --proxy.max-startup-connections instead.",
			Set:  settings.Int("--proxy.max-client-connections", func(c *Config) *int { return &c.MaxClients })},
		{Flag: "proxy.max-startup-connections", Env: "PROXY_MAX_STARTUP_CONNECTIONS", Default: "auto",
			Help: "Connections still in startup (TLS handshake, startup packet, authentication) at once, not counted in --proxy.max-client-connections; at the bound a new connection closes the oldest one in startup. auto: half of --proxy.max-client-connections, at least 10 and at most 100.",
			Set: func(c *Config, v string) error {
				if v == "auto" {
					c.MaxStartup = 0
					return nil
				}
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 {
					return fmt.Errorf("--proxy.max-startup-connections must be auto or a number of at least 1, got '%s'", v)
				}
				c.MaxStartup = n
				return nil
			}},
	}
}

// DefaultConfig returns the defaults of Settings (no listen address), with a 15s startup
// timeout, a 5s reset timeout and authentication failures logged at most every 10s.
func DefaultConfig() Config {
	c := Config{StartupTimeout: 15 * time.Second, ResetTimeout: 5 * time.Second, AuthFailureLogInterval: 10 * time.Second}
	if err := settings.Apply(&c, Settings()); err != nil {
		panic("proxy: " + err.Error())
	}
	return c
}

// Validate rejects values that cannot work. Its errors name the flag and the value.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Listen) == 0 {
		add("--proxy.listen-address is not set")
	}
	if !c.Auth.known() {
		add("--proxy.auth-method (%q) must be one of scram-sha-256, md5, trust", c.Auth)
	}
	if c.UsersFile != "" && len(c.Users) > 0 {
		add("--proxy.users-file and Users must not both be given")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		add("--proxy.tls-cert-file and --proxy.tls-key-file must be given together")
	}
	if c.TLSCertFile != "" && c.TLS != nil {
		add("--proxy.tls-cert-file and TLS must not both be given")
	}
	if !c.TLSMode.known() {
		add("--proxy.tls-mode (%q) must be one of disable, allow, require", c.TLSMode)
	}
	if c.TLSMode == TLSRequire && c.TLSCertFile == "" && c.TLS == nil {
		add("--proxy.tls-mode=require needs a certificate: give --proxy.tls-cert-file and --proxy.tls-key-file")
	}
	if c.MaxMessageSize < 1024 {
		add("--proxy.max-message-size (%s) must be at least 1KiB", units.Base2Bytes(c.MaxMessageSize))
	}
	if c.MaxClients < 1 {
		add("--proxy.max-client-connections (%d) must be at least 1", c.MaxClients)
	}
	if c.MaxStartup < 0 {
		add("--proxy.max-startup-connections (%d) must be at least 1", c.MaxStartup)
	}
	if !c.PoolMode.known() {
		add("--proxy.pool-mode (%q) must be session or transaction", c.PoolMode)
	}
	if !c.PinPolicy.known() {
		add("--proxy.pin-policy (%q) must be pin or error", c.PinPolicy)
	}
	if c.IdleTransactionTimeout < 0 {
		add("--proxy.idle-transaction-timeout (%s) must not be negative", c.IdleTransactionTimeout)
	}
	if c.QueryWaitTimeout < 0 {
		add("--proxy.query-wait-timeout (%s) must not be negative", c.QueryWaitTimeout)
	}
	if c.MaxPreparedStatements < 1 {
		add("--proxy.max-prepared-statements (%d) must be at least 1", c.MaxPreparedStatements)
	}
	if c.StartupTimeout <= 0 {
		add("proxy StartupTimeout (%s) must be greater than 0", c.StartupTimeout)
	}
	if c.ResetTimeout <= 0 {
		add("proxy ResetTimeout (%s) must be greater than 0", c.ResetTimeout)
	}
	if c.PasswordRotationWindow < 0 {
		add("--proxy.password-rotation-window (%s) must not be negative", c.PasswordRotationWindow)
	}
	if c.AuthFailureLogInterval <= 0 {
		add("proxy AuthFailureLogInterval (%s) must be greater than 0", c.AuthFailureLogInterval)
	}
	return errors.Join(errs...)
}

// fileContents is what the files a Config names hold: read by New, and again by Reload.
type fileContents struct {
	users map[string]string // nil without a users file
	cert  *tls.Certificate  // nil without a certificate file
}

// readFiles reads the users file and the TLS certificate and key the config names.
func (c Config) readFiles() (fileContents, error) {
	var f fileContents
	if c.UsersFile != "" {
		users, err := LoadUsers(c.UsersFile)
		if err != nil {
			return f, fmt.Errorf("--proxy.users-file: %w", err)
		}
		f.users = users
	}
	if c.TLSCertFile != "" {
		cert, err := loadKeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return f, err
		}
		f.cert = &cert
	}
	return f, nil
}

// maxConfigFileSize bounds the users file and each TLS file: reading one is never meant to take
// more, and a FIFO or a device given by mistake must fail at once, not hang start-up.
const maxConfigFileSize = 16 << 20

// loadKeyPair is tls.LoadX509KeyPair on regular files of bounded size; errors name the flag.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := regularfile.Read(certFile, maxConfigFileSize)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("--proxy.tls-cert-file: %w", err)
	}
	key, err := regularfile.Read(keyFile, maxConfigFileSize)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("--proxy.tls-key-file: %w", err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("--proxy.tls-cert-file/--proxy.tls-key-file: %w", err)
	}
	return pair, nil
}

// LoadUsers reads a users file in PgBouncer's auth_file format: one `"name" "secret"` per line,
// where the secret is a plain password, an md5 hash or a SCRAM-SHA-256 verifier. Lines starting
// with ; or # are comments. Errors give the line number, never a secret.
func LoadUsers(path string) (map[string]string, error) {
	data, err := regularfile.Read(path, maxConfigFileSize)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
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
