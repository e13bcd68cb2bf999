package collector

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/alecthomas/kingpin/v2"
)

// DefaultQueriesFile is the name of the shipped custom queries file.
const DefaultQueriesFile = "queries.yaml"

// AddFlags declares --[no-]collector.NAME for every registered collector and the collection
// flags, each with a PGSIDECAR_* environment variable. The returned Config is filled when k
// parses.
func AddFlags(k *kingpin.Application) *FlagConfig {
	fc := &FlagConfig{enabled: map[string]*bool{}}
	for _, name := range Names() {
		r := registry[name]
		def := "false"
		if r.enabled {
			def = "true"
		}
		state := "disabled"
		if r.enabled {
			state = "enabled"
		}
		fc.enabled[name] = k.Flag("collector."+name, r.help+" (default: "+state+").").
			Envar(envName("collector." + name)).Default(def).Bool()
	}
	k.Flag("collection-timeout", "Collection deadline when the scrape sends no X-Prometheus-Scrape-Timeout-Seconds header; also the statement_timeout of collector queries.").
		Envar(envName("collection-timeout")).Default(DefaultTimeout.String()).DurationVar(&fc.cfg.Timeout)
	k.Flag("collector.max-connections", "Most connections the collectors open to the database.").
		Envar(envName("collector.max-connections")).Default("1").Int32Var(&fc.cfg.MaxConns)
	k.Flag("collector.statements.limit", "Number of statements (top by total time) the statements collector exports.").
		Envar(envName("collector.statements.limit")).Default("25").IntVar(&fc.cfg.StatementsLimit)
	k.Flag("collector.database.size-interval", "Measure database sizes at most this often (pg_database_size reads every file of every database); 0 measures them on every scrape.").
		Envar(envName("collector.database.size-interval")).Default("1m").DurationVar(&fc.cfg.DatabaseSizeInterval)
	k.Flag("queries.file", "YAML file of custom queries (postgres_exporter format, plus timeout and min_version/max_version); empty disables. Default: the first queries.yaml found in the working directory, next to the binary, or in /etc/pgsidecar. Reloaded on SIGHUP and POST /-/reload.").
		Envar(envName("queries.file")).Default(defaultQueriesFile()).StringVar(&fc.cfg.QueriesFile)
	return fc
}

// FlagConfig is the collector configuration as parsed from flags.
type FlagConfig struct {
	cfg     Config
	enabled map[string]*bool
}

// Config returns the parsed configuration.
func (fc *FlagConfig) Config() Config {
	c := fc.cfg
	c.Enabled = map[string]bool{}
	for name, on := range fc.enabled {
		c.Enabled[name] = *on
	}
	return c
}

// Validate rejects flag values that cannot work, naming the flag, rather than letting New
// replace them with defaults.
func (fc *FlagConfig) Validate() error {
	var errs []error
	if fc.cfg.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("--collection-timeout (%s) must be greater than 0", fc.cfg.Timeout))
	}
	if fc.cfg.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("--collector.max-connections (%d) must be at least 1", fc.cfg.MaxConns))
	}
	if fc.cfg.StatementsLimit < 1 {
		errs = append(errs, fmt.Errorf("--collector.statements.limit (%d) must be at least 1", fc.cfg.StatementsLimit))
	}
	if fc.cfg.DatabaseSizeInterval < 0 {
		errs = append(errs, fmt.Errorf("--collector.database.size-interval (%s) must not be negative", fc.cfg.DatabaseSizeInterval))
	}
	return errors.Join(errs...)
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
