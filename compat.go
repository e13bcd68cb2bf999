package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/regularfile"
	"github.com/pgsidecar/pgsidecar/internal/settings"
)

// postgres_exporter compatibility: pgsidecar starts with the flags and environment of
// postgres_exporter's README (0.20) and of Debian's packaged defaults file. Its flags are
// hidden aliases of pgsidecar's own, its PG_EXPORTER_* variables stand for those aliases, and
// its DATA_SOURCE_* variables give the database when DATABASE_URL is not set. Started that way,
// pgsidecar reads the pool's database only, as postgres_exporter does, unless
// --auto-discover-databases is given.

// upstreamFlag is one of postgres_exporter's flags: accepted, hidden from --help, and listed in
// the reference docs.
type upstreamFlag struct {
	// Name is postgres_exporter's flag, without dashes.
	Name string
	// Env is postgres_exporter's variable for it ("" for none).
	Env string
	// Target is the pgsidecar flag it sets, when it is a plain other name for it.
	Target string
	// Bool marks a switch (--NAME and --no-NAME) for a flag with no Target.
	Bool bool
	// Set applies a flag with no Target; nil refuses it with Note.
	Set func(a *app, v string) error
	// Note says how it maps, for the docs; for a refused flag, why.
	Note string
}

// upstreamFlags lists postgres_exporter's flags besides those pgsidecar shares under the same
// name (--web.*, --log.*, --collection-timeout and the collectors whose names agree).
func upstreamFlags() []upstreamFlag {
	out := []upstreamFlag{
		{Name: "collector.stat_activity", Target: "collector.activity"},
		{Name: "collector.stat_archiver", Target: "collector.archiver"},
		{Name: "collector.stat_bgwriter", Target: "collector.bgwriter"},
		{Name: "collector.stat_checkpointer", Target: "collector.checkpointer"},
		{Name: "collector.stat_database", Target: "collector.database",
			Note: "one collector here with postgres_exporter's `database` (sizes and pg_stat_database): either flag switches both"},
		{Name: "collector.stat_statements", Target: "collector.statements"},
		{Name: "collector.stat_statements.include_query", Target: "collector.statements.include-query"},
		{Name: "collector.stat_statements.limit", Target: "collector.statements.limit",
			Note: "postgres_exporter's default is 100, pgsidecar's 25"},
		{Name: "collector.stat_statements.query_length", Target: "collector.statements.query-length"},
		{Name: "extend.query-path", Env: "PG_EXPORTER_EXTEND_QUERY_PATH", Target: "queries.file"},
		{Name: "auto-discover-databases", Env: "PG_EXPORTER_AUTO_DISCOVER_DATABASES", Target: "collector.databases.discover",
			Note: "off by default when started with DATA_SOURCE_* variables, on otherwise"},
		{Name: "include-databases", Env: "PG_EXPORTER_INCLUDE_DATABASES",
			Set:  func(a *app, v string) error { return a.addDatabases(v, "") },
			Note: "adds the names to `--collector.databases`, which also selects the pool's own database"},
		{Name: "exclude-databases", Env: "PG_EXPORTER_EXCLUDE_DATABASES",
			Set:  func(a *app, v string) error { return a.addDatabases(v, "!") },
			Note: "adds the names to `--collector.databases` as exclusions"},
		{Name: "disable-settings-metrics", Env: "PG_EXPORTER_DISABLE_SETTINGS_METRICS", Bool: true,
			Set: func(a *app, v string) error {
				return a.whenTrue("--disable-settings-metrics", v, func() { a.collectorCfg().Enabled["settings"] = false })
			},
			Note: "postgres_exporter 0.11's; `--no-collector.settings`"},
		{Name: "disable-default-metrics", Env: "PG_EXPORTER_DISABLE_DEFAULT_METRICS", Bool: true,
			Set: func(a *app, v string) error {
				return a.whenTrue("--disable-default-metrics", v, func() {
					for _, name := range collector.Names() {
						a.collectorCfg().Enabled[name] = false
					}
				})
			},
			Note: "switches every built-in collector off, leaving the queries file; a --collector.X after it switches one back on"},
		{Name: "metric-prefix", Env: "PG_EXPORTER_METRIC_PREFIX",
			Set: func(_ *app, v string) error {
				if v != "pg" {
					return fmt.Errorf("--metric-prefix (%q): pgsidecar's metric names keep the pg_ prefix", v)
				}
				return nil
			},
			Note: "only `pg`, the default, is accepted"},
		{Name: "config.file", Target: "probe.config-file", Note: "its `auth_modules` serve the multi-target `/probe`; off when not given (postgres_exporter reads `postgres_exporter.yml` when it exists)"},
		{Name: "constantLabels", Env: "PG_EXPORTER_CONSTANT_LABELS", Note: "set target labels in Prometheus' scrape configuration instead"},
		{Name: "dumpmaps", Bool: true, Note: "a debugging aid of postgres_exporter's built-in query maps, which pgsidecar does not have"},
		{Name: "collector.xlog_location", Bool: true, Note: "it exports nothing on PostgreSQL 10 or later"},
		{Name: "collector.stat_statements.exclude_databases", Target: "collector.statements.exclude-databases"},
		{Name: "collector.stat_statements.exclude_users", Target: "collector.statements.exclude-users"},
	}
	return out
}

// upstreamSharedEnv are postgres_exporter's variables for flags pgsidecar has under the same
// name (its own variables are PGSIDECAR_*).
var upstreamSharedEnv = map[string]string{
	"PG_EXPORTER_WEB_TELEMETRY_PATH": "web.telemetry-path",
	"PG_EXPORTER_WEB_LISTEN_ADDRESS": "web.listen-address",
	"PG_EXPORTER_COLLECTION_TIMEOUT": "collection-timeout",
}

// collectorCfg is the collector feature's configuration, which some aliases change.
func (a *app) collectorCfg() *collector.Config {
	for _, f := range a.features {
		if f, ok := f.(*collectorFeature); ok {
			if f.cfg.Enabled == nil {
				f.cfg.Enabled = map[string]bool{}
			}
			return &f.cfg
		}
	}
	panic("no collector feature")
}

// whenTrue runs do when v is true.
func (a *app) whenTrue(name, v string, do func()) error {
	on, err := settings.ParseBool(name, v)
	if on {
		do()
	}
	return err
}

// addDatabases adds postgres_exporter's comma-separated database names to
// --collector.databases, each prefixed (with "!" to exclude it). Names are matched literally.
func (a *app) addDatabases(list, prefix string) error {
	escape := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	c := a.collectorCfg()
	for name := range strings.SplitSeq(list, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if c.Databases != "" {
			c.Databases += ","
		}
		c.Databases += prefix + escape.Replace(name)
	}
	return nil
}

// aliasValue is the kingpin value of an alias flag with its own Set.
type aliasValue struct {
	a   *app
	f   upstreamFlag
	raw string
}

func (v *aliasValue) Set(s string) error {
	if v.f.Set == nil {
		return fmt.Errorf("--%s is postgres_exporter's and not supported: %s", v.f.Name, v.f.Note)
	}
	if err := v.f.Set(v.a, s); err != nil {
		return err
	}
	v.raw = s
	return nil
}

func (v *aliasValue) String() string     { return v.raw }
func (v *aliasValue) IsBoolFlag() bool   { return v.f.Bool }
func (v *aliasValue) IsCumulative() bool { return false }

// bindUpstreamFlags declares postgres_exporter's flags, hidden. An alias with a Target shares
// the target's value, so it parses and validates alike and --no-NAME works for a switch.
func bindUpstreamFlags(k *kingpin.Application, a *app) {
	for _, f := range upstreamFlags() {
		fc := k.Flag(f.Name, f.Note).Hidden()
		if f.Target == "" {
			fc.SetValue(&aliasValue{a: a, f: f})
			continue
		}
		target := k.GetFlag(f.Target)
		if target == nil {
			panic("postgres_exporter alias --" + f.Name + " names no flag --" + f.Target)
		}
		fc.SetValue(target.Model().Value)
	}
}

// upstreamEnvArgs turns the PG_EXPORTER_* variables into flags, to go before the command line
// args. A flag on the command line wins over its variable, as in postgres_exporter: a variable
// whose flag args give is left out (a repeatable flag would otherwise add to it). A variable
// outside the known set is an error naming it, and so is one set together with pgsidecar's own
// variable for the same flag.
func upstreamEnvArgs(k *kingpin.Application, args []string) ([]string, error) {
	byEnv := map[string]upstreamFlag{}
	for _, f := range upstreamFlags() {
		if f.Env != "" {
			byEnv[f.Env] = f
		}
	}
	var names []string
	for _, kv := range os.Environ() {
		name, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG_EXPORTER_") && v != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []string
	var errs []error
	for _, name := range names {
		v := os.Getenv(name)
		flag := upstreamSharedEnv[name]
		f, known := byEnv[name]
		switch {
		case flag != "":
		case known && f.Set == nil && f.Target == "":
			errs = append(errs, fmt.Errorf("%s is postgres_exporter's and not supported: %s", name, f.Note))
			continue
		case known:
			flag = f.Name
		default:
			errs = append(errs, fmt.Errorf("%s is not a variable pgsidecar knows (postgres_exporter's it honours: %s)",
				name, strings.Join(knownUpstreamEnv(), ", ")))
			continue
		}
		// The flag the variable stands for, after an alias: its own variable must not be set too.
		own := k.GetFlag(flag)
		if f.Target != "" {
			own = k.GetFlag(f.Target)
		}
		if ownEnv := own.Model().Envar; ownEnv != "" && os.Getenv(ownEnv) != "" {
			errs = append(errs, fmt.Errorf("%s and %s are both set; set one", name, ownEnv))
			continue
		}
		if given(args, flag) || given(args, own.Model().Name) {
			continue
		}
		if own.Model().IsBoolFlag() || f.Bool {
			on, err := settings.ParseBool(name, v)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if on {
				out = append(out, "--"+flag)
			} else {
				out = append(out, "--no-"+flag)
			}
			continue
		}
		out = append(out, "--"+flag+"="+v)
	}
	return out, errors.Join(errs...)
}

// given reports whether args set the flag: --NAME, --NAME=V, or --no-NAME.
func given(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		a, _, _ = strings.Cut(a, "=")
		if a == "--"+name || a == "--no-"+name {
			return true
		}
	}
	return false
}

// startedAsUpstream reports whether pgsidecar was started as postgres_exporter is: with its
// DATA_SOURCE_* or PG_EXPORTER_* variables, or one of its own flags. It then replaces one
// exporter, so every collector runs here (--collector.scope=all) unless told otherwise.
func startedAsUpstream(args, envArgs []string, dsn string) bool {
	if dsn != "" || len(envArgs) > 0 {
		return true
	}
	for _, f := range upstreamFlags() {
		if given(args, f.Name) {
			return true
		}
	}
	return false
}

// knownUpstreamEnv lists the PG_EXPORTER_* variables pgsidecar honours.
func knownUpstreamEnv() []string {
	var out []string
	for name := range upstreamSharedEnv {
		out = append(out, name)
	}
	for _, f := range upstreamFlags() {
		if f.Env != "" && (f.Target != "" || f.Set != nil) {
			out = append(out, f.Env)
		}
	}
	sort.Strings(out)
	return out
}

// maxSecretFileSize bounds a DATA_SOURCE_*_FILE: a user name, a password or a URI.
const maxSecretFileSize = 64 << 10

// dataSource is the database postgres_exporter's DATA_SOURCE_* variables give: "" when none is
// set. Its order is postgres_exporter's: DATA_SOURCE_NAME; else DATA_SOURCE_URI (or the file
// DATA_SOURCE_URI_FILE names) with DATA_SOURCE_USER and DATA_SOURCE_PASS, a *_FILE variable
// winning over its plain one. ignored names the variables that order passes over. Setting them
// together with DATABASE_URL is an error, since either may be the one meant.
func dataSource() (dsn string, ignored []string, err error) {
	set := func(name string) bool { return os.Getenv(name) != "" }
	var given []string
	for _, name := range []string{"DATA_SOURCE_NAME", "DATA_SOURCE_URI", "DATA_SOURCE_URI_FILE", "DATA_SOURCE_USER",
		"DATA_SOURCE_USER_FILE", "DATA_SOURCE_PASS", "DATA_SOURCE_PASS_FILE"} {
		if set(name) {
			given = append(given, name)
		}
	}
	if len(given) == 0 {
		return "", nil, nil
	}
	if set("DATABASE_URL") {
		return "", nil, fmt.Errorf("DATABASE_URL and %s are both set; set one (DATA_SOURCE_* are postgres_exporter's names for it)", given[0])
	}
	if set("DATA_SOURCE_NAME") {
		dsn = os.Getenv("DATA_SOURCE_NAME")
		if strings.Contains(dsn, ",") {
			return "", nil, errors.New("DATA_SOURCE_NAME lists several servers (comma-separated); pgsidecar watches one: run one per server")
		}
		return dsn, given[1:], nil
	}
	read := func(plain, file string) (string, error) {
		if !set(file) {
			return os.Getenv(plain), nil
		}
		if set(plain) {
			ignored = append(ignored, plain)
		}
		f, err := regularfile.Open(os.Getenv(file), maxSecretFileSize)
		if err != nil {
			return "", fmt.Errorf("%s: %w", file, err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxSecretFileSize))
		if err != nil {
			return "", fmt.Errorf("%s: %w", file, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	uri, err := read("DATA_SOURCE_URI", "DATA_SOURCE_URI_FILE")
	if err != nil {
		return "", nil, err
	}
	user, err := read("DATA_SOURCE_USER", "DATA_SOURCE_USER_FILE")
	if err != nil {
		return "", nil, err
	}
	pass, err := read("DATA_SOURCE_PASS", "DATA_SOURCE_PASS_FILE")
	if err != nil {
		return "", nil, err
	}
	if uri == "" {
		return "", nil, fmt.Errorf("%s is set but DATA_SOURCE_URI is not: it names the server (host:port/database?options)", given[0])
	}
	var userinfo *url.Userinfo
	switch {
	case pass != "":
		userinfo = url.UserPassword(user, pass)
	case user != "":
		userinfo = url.User(user)
	}
	dsn = "postgresql://" + uri
	if userinfo != nil {
		dsn = "postgresql://" + userinfo.String() + "@" + uri
	}
	return dsn, ignored, nil
}
