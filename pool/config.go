package pool

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/internal/settings"
)

// Config configures a Manager. Durations are plain time.Durations; the environment and flags
// accept the seed's plain milliseconds ("10000") as well as Go durations ("10s").
type Config struct {
	// Name labels this pool's metrics and log lines (pool="..."), so one process can hold several.
	Name string
	// DatabaseURL is a PostgreSQL URL or key=value DSN (DATABASE_URL). libpq's PG* variables
	// (PGHOST, PGPASSWORD, ...) fill in what it leaves out.
	DatabaseURL string
	// MaxConns is the most connections the pool opens (DB_MAX_CONNECTIONS).
	MaxConns int32
	// MinConns is how many connections are kept open and warmed at start (DB_MIN_CONNECTIONS).
	MinConns int32
	// ConnectTimeout bounds one connection attempt and the wait for a free connection
	// (DB_CONNECTION_TIMEOUT).
	ConnectTimeout time.Duration
	// IdleTimeout closes connections idle for longer, down to MinConns (DB_IDLE_TIMEOUT).
	IdleTimeout time.Duration
	// MaxLifetime closes connections older than this, with a little jitter (DB_MAX_LIFETIME).
	MaxLifetime time.Duration
	// RetryAttempts is the most tries ExecuteWithRetry and Transaction make (DB_RETRY_ATTEMPTS).
	RetryAttempts int
	// RetryDelay is the first backoff delay; it doubles on each retry (DB_RETRY_DELAY).
	RetryDelay time.Duration
	// RetryMaxDelay caps the backoff delay, also for background reconnects (DB_RETRY_MAX_DELAY).
	RetryMaxDelay time.Duration
	// HealthCheckInterval is the time between health checks while healthy
	// (DB_HEALTH_CHECK_INTERVAL). While unhealthy the pool checks much more often.
	HealthCheckInterval time.Duration
	// HealthCheckTimeout bounds one health check ping (DB_HEALTH_CHECK_TIMEOUT).
	HealthCheckTimeout time.Duration
	// SlowQueryThreshold: queries at least this long are logged and counted as slow
	// (DB_SLOW_QUERY_THRESHOLD).
	SlowQueryThreshold time.Duration
	// MetricsLogInterval is the period of the "Database pool metrics" log line; 0 turns it off
	// (DB_METRICS_LOG_INTERVAL).
	MetricsLogInterval time.Duration
	// ApplicationName is sent to the server unless the URL sets application_name.
	ApplicationName string
}

// DefaultConfig returns the seed's defaults.
func DefaultConfig() Config {
	var c Config
	for _, s := range Settings() {
		if err := s.Set(&c, s.Default); err != nil {
			panic("pool: bad default for " + s.Env + ": " + err.Error())
		}
	}
	return c
}

// Setting describes one configuration value: its environment variable, its flag, its default
// and its meaning; its Set parses a value into a Config, with errors that name the setting and
// never echo a connection string. The binary's flags, FromEnv and the reference docs are all
// built from this one table, of the same shape as the other packages' settings.
type Setting = settings.Setting[Config]

// Settings lists every pool setting in the order they are documented.
func Settings() []Setting {
	return []Setting{
		{Env: "DATABASE_URL", Flag: "database-url", Default: "",
			Help: "PostgreSQL URL or key=value DSN; libpq PG* variables fill in the rest.",
			Set:  func(c *Config, v string) error { c.DatabaseURL = strings.TrimSpace(v); return nil }},
		{Env: "DB_POOL_NAME", Flag: "db.pool-name", Default: "default",
			Help: "Name of the pool in metric labels and logs.",
			Set: func(c *Config, v string) error {
				if strings.TrimSpace(v) == "" {
					return errors.New("DB_POOL_NAME must not be empty")
				}
				c.Name = v
				return nil
			}},
		{Env: "DB_MAX_CONNECTIONS", Flag: "db.max-connections", Default: "20",
			Help: "Maximum connections in the pool.",
			Set:  int32Setter("DB_MAX_CONNECTIONS", func(c *Config) *int32 { return &c.MaxConns })},
		{Env: "DB_MIN_CONNECTIONS", Flag: "db.min-connections", Default: "5",
			Help: "Connections opened and warmed at start and kept open.",
			Set:  int32Setter("DB_MIN_CONNECTIONS", func(c *Config) *int32 { return &c.MinConns })},
		{Env: "DB_CONNECTION_TIMEOUT", Flag: "db.connection-timeout", Default: "10000",
			Help: "Timeout to open a connection or wait for a free one (milliseconds or Go duration).",
			Set:  durationSetter("DB_CONNECTION_TIMEOUT", func(c *Config) *time.Duration { return &c.ConnectTimeout })},
		{Env: "DB_IDLE_TIMEOUT", Flag: "db.idle-timeout", Default: "600000",
			Help: "Close connections idle this long, down to the minimum (milliseconds or Go duration).",
			Set:  durationSetter("DB_IDLE_TIMEOUT", func(c *Config) *time.Duration { return &c.IdleTimeout })},
		{Env: "DB_MAX_LIFETIME", Flag: "db.max-lifetime", Default: "3600000",
			Help: "Close connections older than this (milliseconds or Go duration).",
			Set:  durationSetter("DB_MAX_LIFETIME", func(c *Config) *time.Duration { return &c.MaxLifetime })},
		{Env: "DB_RETRY_ATTEMPTS", Flag: "db.retry-attempts", Default: "3",
			Help: "Maximum tries of a retried operation or transaction (1 = no retry).",
			Set: func(c *Config, v string) error {
				n, err := parseInt("DB_RETRY_ATTEMPTS", v)
				c.RetryAttempts = int(n)
				return err
			}},
		{Env: "DB_RETRY_DELAY", Flag: "db.retry-delay", Default: "1000",
			Help: "First retry backoff delay, doubled each retry, with jitter (milliseconds or Go duration).",
			Set:  durationSetter("DB_RETRY_DELAY", func(c *Config) *time.Duration { return &c.RetryDelay })},
		{Env: "DB_RETRY_MAX_DELAY", Flag: "db.retry-max-delay", Default: "30s",
			Help: "Cap of the retry and reconnect backoff delay (milliseconds or Go duration).",
			Set:  durationSetter("DB_RETRY_MAX_DELAY", func(c *Config) *time.Duration { return &c.RetryMaxDelay })},
		{Env: "DB_HEALTH_CHECK_INTERVAL", Flag: "db.health-check-interval", Default: "30s",
			Help: "Time between health checks while healthy (milliseconds or Go duration).",
			Set:  durationSetter("DB_HEALTH_CHECK_INTERVAL", func(c *Config) *time.Duration { return &c.HealthCheckInterval })},
		{Env: "DB_HEALTH_CHECK_TIMEOUT", Flag: "db.health-check-timeout", Default: "5s",
			Help: "Timeout of one health check ping (milliseconds or Go duration).",
			Set:  durationSetter("DB_HEALTH_CHECK_TIMEOUT", func(c *Config) *time.Duration { return &c.HealthCheckTimeout })},
		{Env: "DB_SLOW_QUERY_THRESHOLD", Flag: "db.slow-query-threshold", Default: "1s",
			Help: "Queries at least this long are logged as \"Slow query detected\" (milliseconds or Go duration).",
			Set:  durationSetter("DB_SLOW_QUERY_THRESHOLD", func(c *Config) *time.Duration { return &c.SlowQueryThreshold })},
		{Env: "DB_METRICS_LOG_INTERVAL", Flag: "db.metrics-log-interval", Default: "60s",
			Help: "Period of the \"Database pool metrics\" log line; 0 turns it off (milliseconds or Go duration).",
			Set:  durationSetter("DB_METRICS_LOG_INTERVAL", func(c *Config) *time.Duration { return &c.MetricsLogInterval })},
		{Env: "DB_APPLICATION_NAME", Flag: "db.application-name", Default: "pgsidecar",
			Help: "application_name sent to PostgreSQL unless the URL sets one.",
			Set:  func(c *Config, v string) error { c.ApplicationName = v; return nil }},
	}
}

// FromEnv builds a Config from DefaultConfig and the environment variables of Settings, then
// validates it. lookup is usually os.LookupEnv.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	c := DefaultConfig()
	for _, s := range Settings() {
		if v, ok := lookup(s.Env); ok {
			if err := s.Set(&c, v); err != nil {
				return c, err
			}
		}
	}
	return c, c.Validate()
}

// Validate checks the settings against each other. Its errors name the setting and the value.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Name == "" {
		add("DB_POOL_NAME must not be empty")
	}
	if c.MaxConns < 1 {
		add("DB_MAX_CONNECTIONS (%d) must be at least 1", c.MaxConns)
	}
	if c.MinConns < 0 {
		add("DB_MIN_CONNECTIONS (%d) must not be negative", c.MinConns)
	}
	if c.MaxConns >= 1 && c.MinConns > c.MaxConns {
		add("DB_MIN_CONNECTIONS (%d) must not exceed DB_MAX_CONNECTIONS (%d)", c.MinConns, c.MaxConns)
	}
	if c.RetryAttempts < 1 {
		add("DB_RETRY_ATTEMPTS (%d) must be at least 1", c.RetryAttempts)
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"DB_CONNECTION_TIMEOUT", c.ConnectTimeout},
		{"DB_MAX_LIFETIME", c.MaxLifetime},
		{"DB_IDLE_TIMEOUT", c.IdleTimeout},
		{"DB_HEALTH_CHECK_INTERVAL", c.HealthCheckInterval},
		{"DB_HEALTH_CHECK_TIMEOUT", c.HealthCheckTimeout},
		{"DB_SLOW_QUERY_THRESHOLD", c.SlowQueryThreshold},
	}
	for _, p := range positive {
		if p.d <= 0 {
			add("%s (%s) must be greater than 0", p.name, p.d)
		}
	}
	if c.RetryDelay < 0 {
		add("DB_RETRY_DELAY (%s) must not be negative", c.RetryDelay)
	}
	if c.MetricsLogInterval < 0 {
		add("DB_METRICS_LOG_INTERVAL (%s) must not be negative", c.MetricsLogInterval)
	}
	if c.RetryMaxDelay < c.RetryDelay {
		add("DB_RETRY_MAX_DELAY (%s) must not be less than DB_RETRY_DELAY (%s)", c.RetryMaxDelay, c.RetryDelay)
	}
	if _, err := c.pgxConfig(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// pgxConfig parses the DSN into a pgxpool config with the pool settings applied.
func (c Config) pgxConfig() (*pgxpool.Config, error) {
	if c.DatabaseURL == "" && os.Getenv("PGHOST") == "" && os.Getenv("PGDATABASE") == "" {
		return nil, errors.New("DATABASE_URL is not set (set it, or libpq's PGHOST/PGDATABASE variables)")
	}
	pc, err := pgxpool.ParseConfig(c.DatabaseURL)
	if err != nil {
		// Quoted parts of a parse error echo the input, which may hold (a piece of) the password.
		cause := quotedInput.ReplaceAllString(rootCause(err).Error(), "(input not shown)")
		return nil, fmt.Errorf("DATABASE_URL (%s) is invalid: %s", RedactDSN(c.DatabaseURL), Scrub(cause, c.DatabaseURL))
	}
	pc.MaxConns = c.MaxConns
	pc.MinConns = c.MinConns
	pc.MaxConnLifetime = c.MaxLifetime
	pc.MaxConnLifetimeJitter = c.MaxLifetime / 10
	pc.MaxConnIdleTime = c.IdleTimeout
	pc.HealthCheckPeriod = min(c.HealthCheckInterval, time.Minute)
	pc.PingTimeout = c.HealthCheckTimeout
	pc.ConnConfig.ConnectTimeout = c.ConnectTimeout
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok && c.ApplicationName != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = c.ApplicationName
	}
	return pc, nil
}

var quotedInput = regexp.MustCompile("\"[^\"]*\"|`[^`]*`")

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// ParseDuration accepts the seed's plain milliseconds ("10000") or a Go duration ("10s", "1m30s").
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, errors.New("empty value")
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		if ms < 0 {
			return 0, fmt.Errorf("%q is negative", v)
		}
		if ms > math.MaxInt64/int64(time.Millisecond) {
			return 0, fmt.Errorf("%q is too large", v)
		}
		return time.Duration(ms) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not milliseconds (10000) or a duration (10s)", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", v)
	}
	return d, nil
}

func durationSetter(name string, field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*field(c) = d
		return nil
	}
}

func int32Setter(name string, field func(*Config) *int32) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := parseInt(name, v)
		if err != nil {
			return err
		}
		if n > math.MaxInt32 {
			return fmt.Errorf("%s: %q is too large", name, v)
		}
		*field(c) = int32(n)
		return nil
	}
}

func parseInt(name, v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a whole number", name, v)
	}
	if n < 0 {
		return 0, fmt.Errorf("%s (%d) must not be negative", name, n)
	}
	return n, nil
}

// RedactDSN returns the connection string with any password replaced by "xxxxx", for URL and
// key=value forms alike. It is what logs, errors and APIs show in place of the DSN.
func RedactDSN(dsn string) string {
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
func Scrub(msg string, dsns ...string) string {
	for _, p := range passwords(dsns...) {
		if len(p) < 2 {
			continue
		}
		kvEscaped := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p)
		for _, form := range []string{kvEscaped, p, url.QueryEscape(p), url.PathEscape(p), (&url.URL{User: url.UserPassword("", p)}).User.String()[1:]} {
			if form != "" {
				msg = strings.ReplaceAll(msg, form, "xxxxx")
			}
		}
	}
	return msg
}

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
				out = append(out, dsn[lo:hi])
				if p, err := url.PathUnescape(dsn[lo:hi]); err == nil {
					out = append(out, p)
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
