package collector

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	conf "github.com/pgsidecar/pgsidecar/internal/settings"
)

// Scope says which series a sidecar exports: its own only, or the server-wide statistics too.
type Scope string

const (
	// ScopeAuto elects one sidecar per database server to run the server-wide collectors; the
	// others export only what is their own (pg_up and the pool's, proxy's and statements'
	// series, which other packages register).
	ScopeAuto Scope = "auto"
	// ScopeAll runs every enabled collector, whatever other sidecars do: a standalone
	// exporter's behaviour, and postgres_exporter's.
	ScopeAll Scope = "all"
	// ScopeLocal never runs the server-wide collectors.
	ScopeLocal Scope = "local"
)

// DefaultElectionInterval is how often the sidecars of one server poll the collector lock.
const DefaultElectionInterval = 2 * time.Second

// leaseIntervals is the election session's lease in polling intervals: its
// idle_session_timeout, after which the server ends a session that stopped polling (a stopped
// or partitioned leader) and so frees the lock. Polls come every interval, so a live session is
// never idle that long.
const leaseIntervals = 5

// scopeSettings are the settings of the election, appended to Settings.
func scopeSettings() []Setting {
	return []Setting{
		{Flag: "collector.scope", Env: envName("collector.scope"), Default: string(ScopeAuto), PlaceHolder: "auto|all|local",
			Help: "Which sidecar runs the server-wide collectors (every collector and custom query but pg_up): auto elects one among the sidecars of a database server through an advisory lock, all runs them here whatever the others do (a standalone exporter), local never runs them. Default all when started with postgres_exporter's flags or variables.",
			Set: func(c *Config, v string) error {
				switch s := Scope(strings.TrimSpace(v)); s {
				case ScopeAuto, ScopeAll, ScopeLocal:
					c.Scope = s
					return nil
				}
				return fmt.Errorf("--collector.scope (%q) must be auto, all or local", v)
			}},
		{Flag: "collector.election.database", Env: envName("collector.election.database"), Default: "postgres",
			Help: "Database in which --collector.scope=auto takes its advisory lock: the same for every sidecar of a server, whichever database its pool uses, since a lock belongs to one database.",
			Set:  conf.String(func(c *Config) *string { return &c.ElectionDatabase })},
		{Flag: "collector.election.interval", Env: envName("collector.election.interval"), Default: DefaultElectionInterval.String(),
			Help: "How often each sidecar polls the collector lock with --collector.scope=auto: a sidecar takes over at most this long after the leader's session ends, and a leader that stops polling (stopped, partitioned) loses the role after 5 times this.",
			Set:  conf.Duration("--collector.election.interval", func(c *Config) *time.Duration { return &c.ElectionInterval })},
	}
}

// validateScope checks the election settings.
func (c Config) validateScope() []error {
	var errs []error
	if c.Scope == ScopeAuto {
		if c.ElectionDatabase == "" {
			errs = append(errs, fmt.Errorf("--collector.election.database must not be empty with --collector.scope=auto"))
		}
		if c.ElectionInterval < 100*time.Millisecond || c.ElectionInterval > time.Minute {
			errs = append(errs, fmt.Errorf("--collector.election.interval (%s) must be between 100ms and 1m", c.ElectionInterval))
		}
	}
	return errs
}

// configHash is the hash of the server-wide configuration in use (computeConfigHash, as of
// the start or the last successful reload).
func (e *Exporter) configHash() string {
	if h := e.cfgHash.Load(); h != nil {
		return *h
	}
	return ""
}

// noteConfig recomputes the configuration hash; a new one moves the election to a new key.
func (e *Exporter) noteConfig() {
	h := e.computeConfigHash()
	e.cfgHash.Store(&h)
}

// computeConfigHash identifies the server-wide configuration of an exporter: the collectors it
// runs, their settings and the queries file's content. Sidecars whose hashes differ take
// different locks, so each group elects its own leader instead of one group's collectors
// going missing.
func (e *Exporter) computeConfigHash() string {
	h := sha256.New()
	c := e.cfg
	fmt.Fprintf(h, "collectors=%s\n", strings.Join(e.Enabled(), ","))
	fmt.Fprintf(h, "statements=%d,%t,%d,%s,%s\n", c.StatementsLimit, c.StatementsIncludeQuery, c.StatementsQueryLength,
		c.StatementsExcludeDatabases, c.StatementsExcludeUsers)
	fmt.Fprintf(h, "databases=%s,%t\n", c.Databases, c.Discover)
	if e.hasPerDatabase() && e.poolDB != "" && (!c.Discover || !e.databases.match(e.poolDB)) {
		// The per-database collectors always read the pool's own database; when they would not
		// visit it from another sidecar's, its sidecars need a leader of their own.
		fmt.Fprintf(h, "own=%s\n", e.poolDB)
	}
	if c.QueriesFile != "" {
		if f, err := os.Open(c.QueriesFile); err == nil {
			_, _ = io.Copy(h, io.LimitReader(f, maxQueriesFileHash))
			f.Close()
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// maxQueriesFileHash bounds what configHash reads of a queries file.
const maxQueriesFileHash = 16 << 20

// connectionCeiling is the most server connections this exporter may open, by part: the
// collectors' (their pool and their visits to other databases) and the election session's.
//
// With potential, the collectors count as if this sidecar led (the start-up check). Otherwise
// they count only where they run (the leader, ScopeAll; the custom queries marked
// every_sidecar on any sidecar): one sidecar of a server leads at a time, and one that stops
// leading closes their connections. Their visits count one connection per other database the
// last collection found, up to what the side pool may hold (DatabasesMaxIdle kept, and one
// more for the database visited: sidePool.get takes that one out before opening); before any
// collection, and with potential, that whole bound.
func (e *Exporter) connectionCeiling(potential bool) (collectors, election int) {
	if e.cfg.Scope == ScopeAuto {
		election = 1
	}
	runs := e.cfg.Scope == ScopeAll ||
		(e.cfg.Scope == ScopeAuto && (potential || e.el == nil || e.el.leading()))
	switch {
	case runs:
		collectors = int(e.cfg.MaxConns)
		if e.hasPerDatabase() && e.cfg.Discover {
			most := e.cfg.DatabasesMaxIdle + 1
			if n := e.otherDatabasesSeen.Load(); !potential && n >= 0 {
				most = min(int(n), most)
			}
			collectors += most
		}
	case e.custom != nil && e.custom.hasEverySidecar():
		collectors = int(e.cfg.MaxConns)
	}
	return collectors, election
}
