package main

import (
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/api"
	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// envValues is a valid value, other than the default, for every flag that is not an on/off
// switch (switches are tried with the opposite of their default). A new flag needs a row.
var envValues = map[string]string{
	"env-file":                               "/etc/pgsidecar/app.env",
	"database-url":                           "postgres://app@db.example/pos",
	"database-url-file":                      "/run/secrets/database-url",
	"db.pool-name":                           "orders",
	"db.max-connections":                     "7",
	"db.min-connections":                     "2",
	"db.connection-timeout":                  "3s",
	"db.idle-timeout":                        "4s",
	"db.max-lifetime":                        "5s",
	"db.retry-attempts":                      "5",
	"db.retry-delay":                         "2s",
	"db.retry-max-delay":                     "9s",
	"db.health-check-interval":               "11s",
	"db.health-check-timeout":                "2s",
	"db.slow-query-threshold":                "3s",
	"db.metrics-log-interval":                "0",
	"db.application-name":                    "orders-sidecar",
	"web.listen-address":                     "127.0.0.1:9999",
	"web.config.file":                        "/etc/pgsidecar/web.yml",
	"web.telemetry-path":                     "/stats",
	"web.probe-listen-address":               ":9189",
	"shutdown.drain-timeout":                 "10s",
	"log.level":                              "debug",
	"log.format":                             "json",
	"collection-timeout":                     "9s",
	"collector.max-connections":              "3",
	"collector.statements.limit":             "9",
	"collector.statements.query-length":      "50",
	"collector.database.size-interval":       "5m",
	"collector.databases":                    "app_*,!app_test",
	"collector.databases.max-idle":           "5",
	"collector.databases.idle-timeout":       "30s",
	"queries.file":                           "/etc/pgsidecar/queries.yaml",
	"probe.config-file":                      "/etc/pgsidecar/auth_modules.yml",
	"probe.max-targets":                      "5",
	"probe.idle-timeout":                     "10m",
	"collector.scope":                        "local",
	"collector.election.database":            "monitoring",
	"collector.election.interval":            "5s",
	"collector.tables.limit":                 "200",
	"collector.max-series":                   "50000",
	"proxy.listen-address":                   "127.0.0.1:6432",
	"proxy.auth-method":                      "md5",
	"proxy.users-file":                       "/etc/pgsidecar/users.txt",
	"proxy.tls-cert-file":                    "/etc/pgsidecar/cert.pem",
	"proxy.tls-key-file":                     "/etc/pgsidecar/key.pem",
	"proxy.tls-mode":                         "require",
	"proxy.max-message-size":                 "1MiB",
	"proxy.max-client-connections":           "50",
	"proxy.max-startup-connections":          "20",
	"proxy.pool-mode":                        "transaction",
	"proxy.max-prepared-statements":          "100",
	"proxy.pin-policy":                       "error",
	"proxy.query-wait-timeout":               "3s",
	"proxy.idle-transaction-timeout":         "1m",
	"proxy.password-rotation-window":         "10m",
	"statements.top":                         "10",
	"statements.window":                      "5m",
	"statements.text-length":                 "80",
	"collector.statements.exclude-databases": "a,b",
	"collector.statements.exclude-users":     "u",
}

// envName is the naming rule of the environment variables: DATABASE_URL, its _FILE form and DB_*
// (the names of the pool service this project started from), PROXY_* and STATEMENTS_* for those features,
// and PGSIDECAR_ followed by the flag for everything else; dots and dashes become underscores.
func envName(flag string) string {
	name := strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flag))
	switch {
	case flag == "database-url", flag == "database-url-file", strings.HasPrefix(flag, "db."), strings.HasPrefix(flag, "proxy."),
		strings.HasPrefix(flag, "statements."):
		return name
	}
	return "PGSIDECAR_" + name
}

// parsedSettings is everything the command line sets, comparable with reflect.DeepEqual.
type parsedSettings struct {
	Pool                         pool.Config
	API                          api.Config
	Collector                    collector.Config
	Proxy                        proxy.Config
	Probe                        probeOptions
	Listen                       []string
	SystemdSocket                bool
	WebConfig, Telemetry         string
	LogLevel, LogFormat, EnvFile string
	DrainTimeout                 time.Duration
	DatabaseURLFile              string
}

func parseSettings(t *testing.T, args ...string) parsedSettings {
	t.Helper()
	k, a := newApp(io.Discard, io.Discard)
	if _, err := k.Parse(args); err != nil {
		t.Fatalf("parsing %v: %v", args, err)
	}
	p := parsedSettings{Pool: a.poolCfg, Listen: *a.webFlags.WebListenAddresses, SystemdSocket: *a.webFlags.WebSystemdSocket,
		WebConfig: *a.webFlags.WebConfigFile, Telemetry: a.telemetryPath, LogLevel: a.logCfg.Level.String(),
		LogFormat: a.logCfg.Format.String(), EnvFile: a.envFile, DrainTimeout: a.drainTimeout,
		DatabaseURLFile: a.databaseURLFile}
	for _, f := range a.features {
		switch f := f.(type) {
		case *apiFeature:
			p.API = f.cfg
		case *collectorFeature:
			p.Collector = f.cfg
		case *proxyFeature:
			p.Proxy = f.cfg
		case *probeFeature:
			p.Probe = f.opts
		}
	}
	return p
}

// TestEveryFlagHasAnEnvironmentVariable: every flag in --help has an environment variable named
// by the rule, and setting the variable gives the same configuration as the flag, different
// from the default.
func TestEveryFlagHasAnEnvironmentVariable(t *testing.T) {
	k, _ := newApp(io.Discard, io.Discard)
	flags := k.Model().Flags
	// The defaults, with none of the variables set.
	for _, f := range flags {
		if f.Envar != "" {
			t.Setenv(f.Envar, "")
			os.Unsetenv(f.Envar)
		}
	}
	defaults := parseSettings(t)
	if got := defaults.Listen; len(got) != 1 || got[0] != defaultListenAddress {
		t.Fatalf("default --web.listen-address %v, want [%s]", got, defaultListenAddress)
	}
	tested := 0
	for _, f := range flags {
		if f.Hidden || f.Name == "help" || f.Name == "version" {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			if f.Envar == "" {
				t.Fatalf("--%s has no environment variable", f.Name)
			}
			if want := envName(f.Name); f.Envar != want {
				t.Errorf("--%s has the variable %s, want %s by the naming rule", f.Name, f.Envar, want)
			}
			v, ok := envValues[f.Name]
			if f.IsBoolFlag() {
				v, ok = "true", true
				if len(f.Default) > 0 && f.Default[0] == "true" {
					v = "false"
				}
			}
			if !ok {
				t.Fatalf("no test value for --%s: add one to envValues", f.Name)
			}
			arg := "--" + f.Name + "=" + v
			if f.IsBoolFlag() {
				arg = map[string]string{"true": "--" + f.Name, "false": "--no-" + f.Name}[v]
			}
			viaFlag := parseSettings(t, arg)
			t.Setenv(f.Envar, v)
			viaEnv := parseSettings(t)
			if reflect.DeepEqual(viaFlag, defaults) {
				t.Fatalf("%s changes nothing", arg)
			}
			if !reflect.DeepEqual(viaEnv, viaFlag) {
				t.Errorf("%s=%s gives\n%+v\nwhile %s gives\n%+v", f.Envar, v, viaEnv, arg, viaFlag)
			}
			os.Unsetenv(f.Envar)
		})
		tested++
	}
	if tested < 40 {
		t.Errorf("%d flags tested, want every flag (40 or more)", tested)
	}
}

// TestRepeatableFlagsInTheEnvironment: a list takes one value per line of its variable, and
// the flag replaces the default instead of adding to it.
func TestRepeatableFlagsInTheEnvironment(t *testing.T) {
	t.Setenv("PGSIDECAR_WEB_LISTEN_ADDRESS", "")
	os.Unsetenv("PGSIDECAR_WEB_LISTEN_ADDRESS")
	if got := parseSettings(t, "--web.listen-address=:1", "--web.listen-address=:2").Listen; !reflect.DeepEqual(got, []string{":1", ":2"}) {
		t.Errorf("two flags: %v, want [:1 :2]", got)
	}
	t.Setenv("PGSIDECAR_WEB_LISTEN_ADDRESS", ":3\n:4")
	if got := parseSettings(t).Listen; !reflect.DeepEqual(got, []string{":3", ":4"}) {
		t.Errorf("two lines in the variable: %v, want [:3 :4]", got)
	}
}

// TestEnvFileVariable: PGSIDECAR_ENV_FILE names the .env file as --env-file does.
func TestEnvFileVariable(t *testing.T) {
	clearPoolEnv(t)
	for _, k := range []string{"DATABASE_URL", "DB_MIN_CONNECTIONS", "DB_MAX_CONNECTIONS"} {
		os.Unsetenv(k) // the environment wins over the file, even when empty
	}
	f := t.TempDir() + "/app.env"
	if err := os.WriteFile(f, []byte("DATABASE_URL=postgres://h/db\nDB_MIN_CONNECTIONS=40\nDB_MAX_CONNECTIONS=30\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGSIDECAR_ENV_FILE", f)
	var out, errOut strings.Builder
	code := run(t.Context(), nil, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "DB_MIN_CONNECTIONS (40) must not exceed DB_MAX_CONNECTIONS (30)") {
		t.Fatalf("PGSIDECAR_ENV_FILE not read: exit %d, %s", code, errOut.String())
	}
}
