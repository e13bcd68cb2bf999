package pool

import (
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/pgsidecar/internal/redact"
	"github.com/pgsidecar/pgsidecar/internal/settings"
)

// Config configures a Manager. Durations are plain time.Durations; the environment and flags
// accept plain milliseconds ("10000") as well as Go durations ("10s").
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
	// StatementsTop is how many statements, the top ones by total time over StatementsWindow,
	// get their own latency histogram, error counter and info series (STATEMENTS_TOP); 0 turns
	// statement measurement off.
	StatementsTop int
	// StatementsWindow is the sliding window over which statements are ranked
	// (STATEMENTS_WINDOW).
	StatementsWindow time.Duration
	// StatementsTextLength bounds, in bytes, the normalised text of the statement info series
	// (STATEMENTS_TEXT_LENGTH).
	StatementsTextLength int
}

// DefaultConfig returns the defaults of every setting (see Settings).
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
			Set:  intSetter("DB_MAX_CONNECTIONS", func(c *Config) *int32 { return &c.MaxConns })},
		{Env: "DB_MIN_CONNECTIONS", Flag: "db.min-connections", Default: "5",
			Help: "Connections opened and warmed at start and kept open.",
			Set:  intSetter("DB_MIN_CONNECTIONS", func(c *Config) *int32 { return &c.MinConns })},
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
		{Env: "STATEMENTS_TOP", Flag: "statements.top", Default: "50",
			Help: "How many statements, the top ones by total time over the statements window, get their own latency histogram; 0 turns statement measurement off.",
			Set:  intSetter("STATEMENTS_TOP", func(c *Config) *int { return &c.StatementsTop })},
		{Env: "STATEMENTS_WINDOW", Flag: "statements.window", Default: "10m",
			Help: "Sliding window over which statements are ranked by total time (milliseconds or Go duration).",
			Set:  durationSetter("STATEMENTS_WINDOW", func(c *Config) *time.Duration { return &c.StatementsWindow })},
		{Env: "STATEMENTS_TEXT_LENGTH", Flag: "statements.text-length", Default: "200",
			Help: "Most bytes of normalised statement text in the text label of pgsidecar_statement_info.",
			Set:  intSetter("STATEMENTS_TEXT_LENGTH", func(c *Config) *int { return &c.StatementsTextLength })},
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

// maxPoolName bounds DB_POOL_NAME, which is a label value of every pool metric.
const maxPoolName = 128

// minTimeout is the least DB_CONNECTION_TIMEOUT and DB_HEALTH_CHECK_TIMEOUT: a round trip and a
// login must fit in it.
const minTimeout = 100 * time.Millisecond

// Bounds of the statement settings: each top statement is a histogram series per pool, and its
// text a label value on every scrape.
const (
	maxStatementsTop    = 1000
	minStatementsWindow = 10 * time.Second
	maxStatementsWindow = 24 * time.Hour
	minStatementText    = 20
	maxStatementText    = 4096
)

// Validate checks the settings against each other. Its errors name the setting and the value.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case c.Name == "":
		add("DB_POOL_NAME must not be empty")
	case !utf8.ValidString(c.Name):
		// A metric label value must be UTF-8: the registry would refuse every metric of the pool.
		add("DB_POOL_NAME (%q) must be valid UTF-8", c.Name)
	case len(c.Name) > maxPoolName:
		add("DB_POOL_NAME (%d bytes) must be at most %d bytes", len(c.Name), maxPoolName)
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
	// Floors keep a typo (1ns, or milliseconds taken for seconds) from turning a period into a
	// busy loop: a health check, a log line or a reconnect attempt per microsecond.
	floors := []struct {
		name    string
		d, min  time.Duration
		zeroOff bool // 0 is allowed and turns the thing off
	}{
		{"DB_CONNECTION_TIMEOUT", c.ConnectTimeout, minTimeout, false},
		{"DB_MAX_LIFETIME", c.MaxLifetime, time.Second, false},
		{"DB_IDLE_TIMEOUT", c.IdleTimeout, time.Second, false},
		{"DB_HEALTH_CHECK_INTERVAL", c.HealthCheckInterval, time.Second, false},
		{"DB_HEALTH_CHECK_TIMEOUT", c.HealthCheckTimeout, minTimeout, false},
		{"DB_RETRY_DELAY", c.RetryDelay, time.Millisecond, true},
		{"DB_RETRY_MAX_DELAY", c.RetryMaxDelay, 10 * time.Millisecond, false},
		{"DB_METRICS_LOG_INTERVAL", c.MetricsLogInterval, time.Second, true},
	}
	for _, f := range floors {
		switch {
		case f.zeroOff && f.d < 0:
			add("%s (%s) must not be negative", f.name, f.d)
		case f.zeroOff && f.d == 0:
		case f.zeroOff && f.d < f.min:
			add("%s (%s) must be 0 or at least %s", f.name, f.d, f.min)
		case f.d <= 0:
			add("%s (%s) must be greater than 0", f.name, f.d)
		case f.d < f.min:
			add("%s (%s) must be at least %s", f.name, f.d, f.min)
		}
	}
	if c.SlowQueryThreshold <= 0 {
		add("DB_SLOW_QUERY_THRESHOLD (%s) must be greater than 0", c.SlowQueryThreshold)
	}
	if c.StatementsTop > maxStatementsTop {
		add("STATEMENTS_TOP (%d) must be at most %d", c.StatementsTop, maxStatementsTop)
	}
	if c.StatementsTop > 0 {
		if c.StatementsWindow < minStatementsWindow || c.StatementsWindow > maxStatementsWindow {
			add("STATEMENTS_WINDOW (%s) must be between %s and %s", c.StatementsWindow, minStatementsWindow, maxStatementsWindow)
		}
		if c.StatementsTextLength < minStatementText || c.StatementsTextLength > maxStatementText {
			add("STATEMENTS_TEXT_LENGTH (%d) must be between %d and %d", c.StatementsTextLength, minStatementText, maxStatementText)
		}
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
		return nil, fmt.Errorf("DATABASE_URL (%s) is invalid: %s", redact.DSN(c.DatabaseURL), redact.Scrub(cause, c.DatabaseURL))
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

// ParseDuration accepts plain milliseconds ("10000") or a Go duration ("10s", "1m30s").
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

// intSetter parses a whole number of at most 32 bits, for int and int32 fields alike.
func intSetter[T int | int32](name string, field func(*Config) *T) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := parseInt(name, v)
		if err != nil {
			return err
		}
		if n > math.MaxInt32 {
			return fmt.Errorf("%s: %q is too large", name, v)
		}
		*field(c) = T(n)
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
