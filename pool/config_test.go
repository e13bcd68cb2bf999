package pool

import (
	"strings"
	"testing"
	"time"
)

func envLookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestFromEnvDefaults(t *testing.T) {
	c, err := FromEnv(envLookup(map[string]string{"DATABASE_URL": "postgres://u@h/db"}))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "default", DatabaseURL: "postgres://u@h/db", MaxConns: 20, MinConns: 5,
		ConnectTimeout: 10 * time.Second, IdleTimeout: 10 * time.Minute, MaxLifetime: time.Hour,
		RetryAttempts: 3, RetryDelay: time.Second, RetryMaxDelay: 30 * time.Second,
		HealthCheckInterval: 30 * time.Second, HealthCheckTimeout: 5 * time.Second,
		SlowQueryThreshold: time.Second, MetricsLogInterval: time.Minute, ApplicationName: "pgsidecar",
		StatementsTop: 50, StatementsWindow: 10 * time.Minute, StatementsTextLength: 200}
	if c != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestFromEnvProductionValues(t *testing.T) {
	c, err := FromEnv(envLookup(map[string]string{
		"DATABASE_URL": "postgres://u@h/db", "DB_MAX_CONNECTIONS": "50", "DB_MIN_CONNECTIONS": "15",
		"DB_CONNECTION_TIMEOUT": "15000", "DB_IDLE_TIMEOUT": "300000", "DB_MAX_LIFETIME": "1800000",
		"DB_RETRY_ATTEMPTS": "5", "DB_RETRY_DELAY": "2000", "DB_HEALTH_CHECK_INTERVAL": "10s",
		"DB_SLOW_QUERY_THRESHOLD": "250ms",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConns != 50 || c.MinConns != 15 || c.ConnectTimeout != 15*time.Second || c.IdleTimeout != 5*time.Minute ||
		c.MaxLifetime != 30*time.Minute || c.RetryAttempts != 5 || c.RetryDelay != 2*time.Second ||
		c.HealthCheckInterval != 10*time.Second || c.SlowQueryThreshold != 250*time.Millisecond {
		t.Fatalf("parsed %+v", c)
	}
}

func TestBadConfigNamesTheSetting(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://u:hunter2secret@h/db"}
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"DB_MIN_CONNECTIONS": "10", "DB_MAX_CONNECTIONS": "5"}, "DB_MIN_CONNECTIONS (10) must not exceed DB_MAX_CONNECTIONS (5)"},
		{map[string]string{"DB_MAX_CONNECTIONS": "0", "DB_MIN_CONNECTIONS": "0"}, "DB_MAX_CONNECTIONS (0) must be at least 1"},
		{map[string]string{"DB_MAX_CONNECTIONS": "-3"}, "DB_MAX_CONNECTIONS (-3) must not be negative"},
		{map[string]string{"DB_MAX_CONNECTIONS": "many"}, `DB_MAX_CONNECTIONS: "many" is not a whole number`},
		{map[string]string{"DB_MAX_CONNECTIONS": "99999999999"}, `DB_MAX_CONNECTIONS: "99999999999" is too large`},
		{map[string]string{"DB_CONNECTION_TIMEOUT": "10 seconds"}, `DB_CONNECTION_TIMEOUT: "10 seconds" is not milliseconds (10000) or a duration (10s)`},
		{map[string]string{"DB_CONNECTION_TIMEOUT": "0"}, "DB_CONNECTION_TIMEOUT (0s) must be greater than 0"},
		{map[string]string{"DB_IDLE_TIMEOUT": "-5"}, `DB_IDLE_TIMEOUT: "-5" is negative`},
		{map[string]string{"DB_MAX_LIFETIME": "-1h"}, `DB_MAX_LIFETIME: "-1h" is negative`},
		{map[string]string{"DB_RETRY_ATTEMPTS": "0"}, "DB_RETRY_ATTEMPTS (0) must be at least 1"},
		{map[string]string{"DB_RETRY_DELAY": "5s", "DB_RETRY_MAX_DELAY": "1s"}, "DB_RETRY_MAX_DELAY (1s) must not be less than DB_RETRY_DELAY (5s)"},
		{map[string]string{"DB_HEALTH_CHECK_INTERVAL": "soon"}, "DB_HEALTH_CHECK_INTERVAL:"},
		{map[string]string{"DB_SLOW_QUERY_THRESHOLD": ""}, "DB_SLOW_QUERY_THRESHOLD: empty value"},
		{map[string]string{"DB_POOL_NAME": " "}, "DB_POOL_NAME must not be empty"},
		{map[string]string{"DB_POOL_NAME": "a\xc0b"}, `DB_POOL_NAME ("a\xc0b") must be valid UTF-8`},
		{map[string]string{"DB_POOL_NAME": strings.Repeat("ü", 65)}, "DB_POOL_NAME (130 bytes) must be at most 128 bytes"},
		{map[string]string{"DB_HEALTH_CHECK_INTERVAL": "1ns"}, "DB_HEALTH_CHECK_INTERVAL (1ns) must be at least 1s"},
		{map[string]string{"DB_HEALTH_CHECK_TIMEOUT": "99"}, "DB_HEALTH_CHECK_TIMEOUT (99ms) must be at least 100ms"},
		{map[string]string{"DB_CONNECTION_TIMEOUT": "1ns"}, "DB_CONNECTION_TIMEOUT (1ns) must be at least 100ms"},
		{map[string]string{"DB_IDLE_TIMEOUT": "999"}, "DB_IDLE_TIMEOUT (999ms) must be at least 1s"},
		{map[string]string{"STATEMENTS_TOP": "-1"}, "STATEMENTS_TOP (-1) must not be negative"},
		{map[string]string{"STATEMENTS_TOP": "5000"}, "STATEMENTS_TOP (5000) must be at most 1000"},
		{map[string]string{"STATEMENTS_WINDOW": "1s"}, "STATEMENTS_WINDOW (1s) must be between 10s and 24h0m0s"},
		{map[string]string{"STATEMENTS_TEXT_LENGTH": "5"}, "STATEMENTS_TEXT_LENGTH (5) must be between 20 and 4096"},
		{map[string]string{"DB_MAX_LIFETIME": "1ns"}, "DB_MAX_LIFETIME (1ns) must be at least 1s"},
		{map[string]string{"DB_RETRY_DELAY": "1ns"}, "DB_RETRY_DELAY (1ns) must be 0 or at least 1ms"},
		{map[string]string{"DB_RETRY_DELAY": "0", "DB_RETRY_MAX_DELAY": "1ms"}, "DB_RETRY_MAX_DELAY (1ms) must be at least 10ms"},
		{map[string]string{"DB_METRICS_LOG_INTERVAL": "1ns"}, "DB_METRICS_LOG_INTERVAL (1ns) must be 0 or at least 1s"},
		{map[string]string{"DATABASE_URL": "postgres://u:hunter2secret@h:notaport/db"}, "DATABASE_URL (postgres://u:xxxxx@h:notaport/db) is invalid"},
		{map[string]string{"DATABASE_URL": "postgres://u:hunter2secret@h/db?sslmode=sometimes"}, "DATABASE_URL (postgres://u:xxxxx@h/db?sslmode=sometimes) is invalid: sslmode is invalid"},
		{map[string]string{"DATABASE_URL": "host=h password=hunter2secret sslmode=bogus"}, "DATABASE_URL (host=h password=xxxxx sslmode=bogus) is invalid"},
		{map[string]string{"DATABASE_URL": "host=h password='hunter2secret"}, "DATABASE_URL (host=h password=xxxxx) is invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := FromEnv(envLookup(env))
			if err == nil {
				t.Fatalf("no error for %v", tc.env)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2secret") {
				t.Fatalf("error leaks the password: %q", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := DefaultConfig()
	c.DatabaseURL = "postgres://h/db"
	c.MaxConns, c.MinConns, c.RetryAttempts = 2, 3, 0
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "DB_MIN_CONNECTIONS (3)") || !strings.Contains(err.Error(), "DB_RETRY_ATTEMPTS (0)") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	cases := map[string]time.Duration{"10000": 10 * time.Second, "0": 0, "1500ms": 1500 * time.Millisecond,
		"2m": 2 * time.Minute, " 30s ": 30 * time.Second}
	for in, want := range cases {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ten", "-1", "-1s", "1d", "99999999999999999"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) accepted", bad)
		}
	}
}

func TestSettingsTableIsComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings() {
		if s.Env == "" || s.Flag == "" || s.Help == "" {
			t.Errorf("incomplete setting %+v", s)
		}
		if seen[s.Env] || seen[s.Flag] {
			t.Errorf("duplicate setting %s/%s", s.Env, s.Flag)
		}
		seen[s.Env], seen[s.Flag] = true, true
	}
	for _, env := range []string{"DATABASE_URL", "DB_MAX_CONNECTIONS", "DB_MIN_CONNECTIONS", "DB_CONNECTION_TIMEOUT",
		"DB_IDLE_TIMEOUT", "DB_MAX_LIFETIME", "DB_RETRY_ATTEMPTS", "DB_RETRY_DELAY", "DB_HEALTH_CHECK_INTERVAL",
		"DB_SLOW_QUERY_THRESHOLD", "DB_RETRY_MAX_DELAY"} {
		if !seen[env] {
			t.Errorf("setting %s missing", env)
		}
	}
}
