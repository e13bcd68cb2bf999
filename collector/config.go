package collector

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	// Imported as conf: settings is the pg_settings collector here.
	conf "github.com/pgsidecar/pgsidecar/internal/settings"
)

// DefaultQueriesFile is the name of the shipped custom queries file.
const DefaultQueriesFile = "queries.yaml"

// Setting describes one collector setting: its flag, its PGSIDECAR_* environment variable, its
// default and its meaning.
type Setting = conf.Setting[Config]

// Settings lists every collector setting in the order they are documented:
// --[no-]collector.NAME for every registered collector, then the collection settings.
func Settings() []Setting {
	var out []Setting
	for _, name := range Names() {
		r := registry[name]
		def, state := "false", "disabled"
		if r.enabled {
			def, state = "true", "enabled"
		}
		out = append(out, Setting{Flag: "collector." + name, Env: envName("collector." + name), Default: def,
			Help: r.help + " (default: " + state + ").", Bool: true,
			Set: func(c *Config, v string) error {
				on, err := conf.ParseBool("--collector."+name, v)
				if err != nil {
					return err
				}
				if c.Enabled == nil {
					c.Enabled = map[string]bool{}
				}
				c.Enabled[name] = on
				return nil
			}})
	}
	return append(append(out,
		Setting{Flag: "collection-timeout", Env: envName("collection-timeout"), Default: DefaultTimeout.String(),
			Help: "A collection's deadline, whichever scrape started it; a scrape's X-Prometheus-Scrape-Timeout-Seconds (clamped to 0.1 s–1 h) bounds only its own wait, after which it answers with what has finished. Also the statement_timeout of collector queries.",
			Set:  conf.Duration("--collection-timeout", func(c *Config) *time.Duration { return &c.Timeout })},
		Setting{Flag: "collector.max-connections", Env: envName("collector.max-connections"), Default: "1",
			Help: "Most connections the collectors open to the database.",
			Set:  conf.Int32("--collector.max-connections", func(c *Config) *int32 { return &c.MaxConns })},
		Setting{Flag: "collector.statements.limit", Env: envName("collector.statements.limit"), Default: "25",
			Help: "Number of statements (top by total time) the statements collector exports.",
			Set:  conf.Int("--collector.statements.limit", func(c *Config) *int { return &c.StatementsLimit })},
		Setting{Flag: "collector.statements.include-query", Env: envName("collector.statements.include-query"), Default: "false", Bool: true,
			Help: "Export each statement's text as pg_stat_statements_query_id{queryid, query} (postgres_exporter's include_query), normalised as the slow query log shows it (every constant, a utility statement's too, a placeholder; comments dropped; bytes that are not UTF-8 replaced) and cut to --collector.statements.query-length characters. The server then reads its query text file on every collection.",
			Set:  conf.Bool("--collector.statements.include-query", func(c *Config) *bool { return &c.StatementsIncludeQuery })},
		Setting{Flag: "collector.statements.query-length", Env: envName("collector.statements.query-length"), Default: "120",
			Help: "Characters of statement text kept with --collector.statements.include-query.",
			Set:  conf.Int("--collector.statements.query-length", func(c *Config) *int { return &c.StatementsQueryLength })},
		Setting{Flag: "collector.statements.exclude-databases", Env: envName("collector.statements.exclude-databases"), PlaceHolder: "LIST",
			Help: "Comma-separated databases whose statements the statements collector leaves out.",
			Set:  conf.String(func(c *Config) *string { return &c.StatementsExcludeDatabases })},
		Setting{Flag: "collector.statements.exclude-users", Env: envName("collector.statements.exclude-users"), PlaceHolder: "LIST",
			Help: "Comma-separated users whose statements the statements collector leaves out.",
			Set:  conf.String(func(c *Config) *string { return &c.StatementsExcludeUsers })},
		Setting{Flag: "collector.database.size-interval", Env: envName("collector.database.size-interval"), Default: "1m",
			Help: "Measure database sizes at most this often (pg_database_size reads every file of every database); 0 measures them on every scrape.",
			Set:  conf.Duration("--collector.database.size-interval", func(c *Config) *time.Duration { return &c.DatabaseSizeInterval })},
		Setting{Flag: "collector.databases", Env: envName("collector.databases"), Default: "", PlaceHolder: "LIST",
			Help: "Databases the per-database collectors (stat_user_tables, statio_user_tables, statio_user_indexes) read besides the pool's own, which they always read: comma-separated names or glob patterns (app_*), !pattern excludes; empty selects every database the role may connect to. A pattern that matches no database is logged.",
			Set:  conf.String(func(c *Config) *string { return &c.Databases })},
		Setting{Flag: "collector.databases.discover", Env: envName("collector.databases.discover"), Default: "true", Bool: true,
			Help: "Run the per-database collectors in the other databases too (those --collector.databases selects); off, they read the pool's database only, as postgres_exporter does without --auto-discover-databases. Off by default when the database comes from postgres_exporter's DATA_SOURCE_* variables.",
			Set:  conf.Bool("--collector.databases.discover", func(c *Config) *bool { return &c.Discover })},
		Setting{Flag: "collector.databases.max-idle", Env: envName("collector.databases.max-idle"), Default: "20",
			Help: "Most connections to other databases kept open between scrapes, one per database; the databases beyond are connected to anew on every scrape. 0 closes each after use.",
			Set:  conf.Int("--collector.databases.max-idle", func(c *Config) *int { return &c.DatabasesMaxIdle })},
		Setting{Flag: "collector.databases.idle-timeout", Env: envName("collector.databases.idle-timeout"), Default: "1m",
			Help: "Close a connection to another database unused for this long; keep it above the scrape interval so that scrapes reuse it.",
			Set:  conf.Duration("--collector.databases.idle-timeout", func(c *Config) *time.Duration { return &c.DatabasesIdleTimeout })},
		Setting{Flag: "queries.file", Env: envName("queries.file"), Default: defaultQueriesFile(),
			Help: "YAML file of custom queries (postgres_exporter format, plus timeout and min_version/max_version); empty disables. Default: the first queries.yaml found in the working directory, next to the binary, or in /etc/pgsidecar. Reloaded on SIGHUP and POST /-/reload.",
			Set:  conf.String(func(c *Config) *string { return &c.QueriesFile })},
	), append(scopeSettings(), tableSettings()...)...)
}

// DefaultConfig returns the defaults of Settings: the collectors' default states, and the
// shipped queries.yaml when one is found (see --queries.file).
func DefaultConfig() Config {
	var c Config
	if err := conf.Apply(&c, Settings()); err != nil {
		panic("collector: " + err.Error())
	}
	return c
}

// Validate rejects values that cannot work. Its errors name the flag and the value.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for name := range c.Enabled {
		if _, ok := registry[name]; !ok {
			add("unknown collector %q (known: %v)", name, Names())
		}
	}
	if c.Timeout <= 0 {
		add("--collection-timeout (%s) must be greater than 0", c.Timeout)
	}
	if c.MaxConns < 1 {
		add("--collector.max-connections (%d) must be at least 1", c.MaxConns)
	}
	if c.StatementsIncludeQuery && c.StatementsQueryLength < 1 {
		add("--collector.statements.query-length (%d) must be at least 1", c.StatementsQueryLength)
	}
	if c.StatementsLimit < 1 {
		add("--collector.statements.limit (%d) must be at least 1", c.StatementsLimit)
	}
	if c.DatabasesMaxIdle < 0 {
		add("--collector.databases.max-idle (%d) must not be negative", c.DatabasesMaxIdle)
	}
	if c.DatabasesIdleTimeout < 0 {
		add("--collector.databases.idle-timeout (%s) must not be negative", c.DatabasesIdleTimeout)
	}
	if _, err := parseDatabaseFilter(c.Databases); err != nil {
		errs = append(errs, err)
	}
	if c.DatabaseSizeInterval < 0 {
		add("--collector.database.size-interval (%s) must not be negative", c.DatabaseSizeInterval)
	}
	errs = append(errs, c.validateScope()...)
	errs = append(errs, c.validateTables()...)
	return errors.Join(errs...)
}

// splitNames splits a comma-separated list of names, leaving out blanks.
func splitNames(list string) []string {
	var out []string
	for name := range strings.SplitSeq(list, ",") {
		if name = strings.TrimSpace(name); name != "" {
			out = append(out, name)
		}
	}
	return out
}

// envName turns a flag name into its environment variable: collector.max-connections →
// PGSIDECAR_COLLECTOR_MAX_CONNECTIONS.
func envName(flag string) string {
	return "PGSIDECAR_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flag))
}

// defaultQueriesFile is the shipped queries.yaml in the working directory, next to the binary
// or in /etc/pgsidecar (where the container image and packages put it), or "" when there is none.
func defaultQueriesFile() string {
	candidates := []string{DefaultQueriesFile}
	if exe, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), DefaultQueriesFile))
	}
	for _, p := range append(candidates, filepath.Join("/etc/pgsidecar", DefaultQueriesFile)) {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
