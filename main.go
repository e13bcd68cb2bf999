// Command pgsidecar is a Prometheus-native sidecar for PostgreSQL connection pools: a warm,
// self-healing pool, query and pool metrics, database statistics and health endpoints.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/redact"
	"github.com/pgsidecar/pgsidecar/internal/regularfile"
	"github.com/pgsidecar/pgsidecar/internal/settings"
	"github.com/pgsidecar/pgsidecar/pool"
)

const defaultListenAddress = ":9188"

func main() {
	// A write to a closed pipe on stdout or stderr (pgsidecar 2>&1 | grep …, and grep ends)
	// would end the process with SIGPIPE, taking the pool and every proxied session with it.
	// Ignored, such writes fail with EPIPE instead: only the log lines are lost.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// settingValue adapts a setting of a package's table to kingpin's flag value interface.
type settingValue[C any] struct {
	cfg *C
	s   settings.Setting[C]
	raw string
}

func (v *settingValue[C]) Set(s string) error {
	if err := v.s.Set(v.cfg, s); err != nil {
		return err
	}
	v.raw = s
	return nil
}

func (v *settingValue[C]) String() string {
	if v.s.Env == "DATABASE_URL" {
		return redact.DSN(v.raw)
	}
	return v.raw
}

// IsBoolFlag makes kingpin accept --NAME and --no-NAME for a switch.
func (v *settingValue[C]) IsBoolFlag() bool { return v.s.Bool }

// IsCumulative makes kingpin accept a list setting more than once.
func (v *settingValue[C]) IsCumulative() bool { return v.s.Repeatable }

// bindSettings declares a flag, with its environment variable and default, for every setting
// of a package's table; parsing fills cfg.
func bindSettings[C any](k *kingpin.Application, cfg *C, table []settings.Setting[C]) {
	for _, s := range table {
		f := k.Flag(s.Flag, s.Help)
		if s.Env != "" {
			f = f.Envar(s.Env)
		}
		if s.Default != "" {
			f = f.Default(s.Default)
		}
		if s.PlaceHolder != "" {
			f = f.PlaceHolder(s.PlaceHolder)
		}
		f.SetValue(&settingValue[C]{cfg: cfg, s: s, raw: s.Default})
	}
}

// feature is one optional part of the binary (API, collectors, proxy), wired in its own
// wire_*.go file.
type feature interface {
	// flags declares the feature's flags before parsing.
	flags(k *kingpin.Application)
	// name says what the feature is, in messages about start-up.
	name() string
	// start runs after the pool exists; the returned stop (may be nil) runs at shutdown, in
	// reverse order of start.
	start(ctx context.Context, d *deps) (stop func(), err error)
}

// features builds the optional parts afresh for each run, so no flag value outlives its run.
// Their flags appear in --help, and they start, in this order.
func features() []feature {
	col := &collectorFeature{}
	return []feature{&apiFeature{}, col, &proxyFeature{}, &probeFeature{collectors: col}}
}

// deps is what features get to work with.
type deps struct {
	mgr    *pool.Manager
	life   *lifecycle
	reg    *registry
	mux    *http.ServeMux
	logger *slog.Logger
	links  []web.LandingLinks // landing page links; features append theirs
	// webConfigFile is --web.config.file, whose authentication guards the admin endpoints.
	webConfigFile string
	// metricsMiddleware wraps the telemetry handler, e.g. to pass each scrape's deadline on.
	metricsMiddleware []func(http.Handler) http.Handler
	// reload is SIGHUP's and POST /-/reload's; features add what they read again.
	reload *reloader
}

// registry is the process's Prometheus registry; it remembers what was registered so the
// reference docs can list every metric, including those no event has created yet.
type registry struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

// Register implements prometheus.Registerer.
func (r *registry) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return nil
}

// MustRegister implements prometheus.Registerer.
func (r *registry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Collectors returns what was registered, in order.
func (r *registry) Collectors() []prometheus.Collector {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]prometheus.Collector(nil), r.collectors...)
}

// registryHook lets tests see the registry serve builds (the reference docs test).
var registryHook func(*registry)

// app holds the parsed command line.
type app struct {
	poolCfg       pool.Config
	webFlags      *web.FlagConfig
	telemetryPath string
	logCfg        *promslog.Config
	envFile       string
	drainTimeout  time.Duration
	features      []feature
	// databaseURLFile is --database-url-file; fromDataSource: DATABASE_URL came from
	// postgres_exporter's DATA_SOURCE_* variables. A reload reads either again.
	databaseURLFile string
	fromDataSource  bool
}

// envFileVar names the .env file like --env-file; it is read before the command line is parsed,
// as --env-file is.
const envFileVar = "PGSIDECAR_ENV_FILE"

// envFileSetting is --env-file, which envFileArg reads before parsing: it is declared for
// --help and the docs, and parsing it again changes nothing.
var envFileSetting = settings.Setting[app]{Flag: "env-file", Env: envFileVar, PlaceHolder: "FILE",
	Help: "Read settings from this .env file first (KEY=VALUE lines; the environment wins).",
	Set:  settings.String(func(a *app) *string { return &a.envFile })}

// webSettings are the web server's and the log's settings: the flags exporter-toolkit and
// promslog declare (same names, defaults and help), declared here so that they get environment
// variables like every other setting.
func webSettings() []settings.Setting[app] {
	var out []settings.Setting[app]
	if runtime.GOOS == "linux" { // socket activation is systemd's
		out = append(out, settings.Setting[app]{Flag: "web.systemd-socket", Env: "PGSIDECAR_WEB_SYSTEMD_SOCKET", Bool: true,
			Help: "Use systemd socket activation listeners instead of port listeners (Linux only).",
			Set:  settings.Bool("--web.systemd-socket", func(a *app) *bool { return a.webFlags.WebSystemdSocket })})
	}
	return append(out,
		settings.Setting[app]{Flag: "web.listen-address", Env: "PGSIDECAR_WEB_LISTEN_ADDRESS", Default: defaultListenAddress, Repeatable: true,
			Help: "Addresses on which to expose metrics and web interface. Repeatable for multiple addresses (one per line in the variable). Examples: `:9100` or `[::1]:9100` for http, `vsock://:9100` for vsock",
			Set:  settings.Strings(func(a *app) *[]string { return a.webFlags.WebListenAddresses })},
		settings.Setting[app]{Flag: "web.config.file", Env: "PGSIDECAR_WEB_CONFIG_FILE", PlaceHolder: "FILE",
			Help: "Path to configuration file that can enable TLS or authentication. See: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md",
			Set:  settings.String(func(a *app) *string { return a.webFlags.WebConfigFile })},
		settings.Setting[app]{Flag: "web.telemetry-path", Env: "PGSIDECAR_WEB_TELEMETRY_PATH", Default: "/metrics",
			Help: "Path under which to expose metrics.",
			Set:  settings.String(func(a *app) *string { return &a.telemetryPath })},
		settings.Setting[app]{Flag: "log.level", Env: "PGSIDECAR_LOG_LEVEL", Default: "info",
			Help: promslogflag.LevelFlagHelp,
			Set:  func(a *app, v string) error { return a.logCfg.Level.Set(v) }},
		settings.Setting[app]{Flag: "log.format", Env: "PGSIDECAR_LOG_FORMAT", Default: "logfmt",
			Help: promslogflag.FormatFlagHelp,
			Set:  func(a *app, v string) error { return a.logCfg.Format.Set(v) }},
	)
}

// newApp declares every flag. Each comes from a settings table (the pool's, each feature's,
// the web server's), so flags, environment variables and docs share one table per package.
func newApp(stdout, stderr io.Writer) (*kingpin.Application, *app) {
	a := &app{poolCfg: pool.DefaultConfig(),
		webFlags: &web.FlagConfig{WebListenAddresses: new([]string), WebSystemdSocket: new(bool), WebConfigFile: new(string)},
		logCfg:   &promslog.Config{Writer: stderr, Level: promslog.NewLevel(), Format: promslog.NewFormat()}}
	k := kingpin.New("pgsidecar", "Prometheus-native observability sidecar and exporter for PostgreSQL connection pools.")
	k.UsageWriter(stdout)
	k.ErrorWriter(stderr)
	k.Version(version.Print("pgsidecar"))
	k.HelpFlag.Short('h')
	bindSettings(k, a, []settings.Setting[app]{envFileSetting})
	bindSettings(k, &a.poolCfg, pool.Settings())
	bindSettings(k, a, []settings.Setting[app]{databaseURLFileSetting})
	bindSettings(k, a, webSettings())
	bindSettings(k, a, shutdownSettings())
	a.features = features()
	for _, f := range a.features {
		f.flags(k)
	}
	bindUpstreamFlags(k, a)
	return k, a
}

// startupGrace is how long a signal during start-up waits for the current stage to finish
// before the program stops without it: a stage blocked on a file or the network must not keep
// the process from stopping.
const startupGrace = 2 * time.Second

// startStage names what start-up is doing, for the message when a signal stops it there.
type startStage struct {
	mu     sync.Mutex
	what   string
	logger *slog.Logger
}

func (st *startStage) set(what string) {
	st.mu.Lock()
	st.what = what
	st.mu.Unlock()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// Signals are caught before anything that can wait, so SIGTERM and SIGINT stop the program
	// at every stage of start-up as well as while it serves (see watchSignals).
	ctx, stopNow := context.WithCancel(ctx)
	defer stopNow()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var serving atomic.Bool
	drain := make(chan struct{})
	go watchSignals(ctx, sigs, &serving, drain, stopNow)
	type started struct {
		s    *server
		code int
	}
	stage := &startStage{}
	done := make(chan started, 1)
	go func() {
		s, code := start(ctx, args, stdout, stderr, stage)
		done <- started{s, code}
	}()
	var st started
	select {
	case st = <-done:
	case <-ctx.Done():
		select {
		case st = <-done:
		case <-time.After(startupGrace):
			stage.mu.Lock()
			what, logger := stage.what, stage.logger
			stage.mu.Unlock()
			if logger != nil {
				logger.Error("Stopped during start-up without waiting for it", "stage", what)
			} else {
				fmt.Fprintf(stderr, "pgsidecar: stopped during start-up without waiting for it: %s\n", what)
			}
			// In the process, the exit ends the stage; elsewhere (tests), clean up once it ends.
			go func() {
				if st := <-done; st.s != nil {
					st.s.close()
				}
			}()
			return 1
		}
	}
	if st.s == nil {
		return st.code
	}
	serving.Store(true)
	return st.s.serve(ctx, drain)
}

// start reads the configuration and starts everything up to listening. It returns the server
// ready to serve, or nil and the exit code.
func start(ctx context.Context, args []string, stdout, stderr io.Writer, stage *startStage) (*server, int) {
	if f := envFileArg(args); f != "" {
		stage.set("reading --env-file " + f)
		if err := loadEnvFile(f); err != nil {
			fmt.Fprintf(stderr, "pgsidecar: --env-file: %s\n", redact.Scrub(err.Error()))
			return nil, 2
		}
	}
	stage.set("reading postgres_exporter's DATA_SOURCE_* variables")
	dsn, ignored, err := dataSource()
	if err != nil {
		fmt.Fprintf(stderr, "pgsidecar: %s\n", redact.Scrub(err.Error(), os.Getenv("DATA_SOURCE_NAME")))
		return nil, 2
	}
	stage.set("parsing the command line")
	k, a := newApp(stdout, stderr)
	envArgs, err := upstreamEnvArgs(k, args)
	if err != nil {
		fmt.Fprintf(stderr, "pgsidecar: %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return nil, 2
	}
	if startedAsUpstream(args, envArgs, dsn) {
		k.GetFlag("collector.scope").Default(string(collector.ScopeAll))
		// postgres_exporter exports every table of the databases it reads; the series budget
		// (--collector.max-series) still bounds the scrape.
		k.GetFlag("collector.tables.limit").Default("0")
	}
	args = append(envArgs, args...)
	if dsn != "" {
		// Started as postgres_exporter, pgsidecar reads the connected database only, as it does.
		k.GetFlag("collector.databases.discover").Default("false")
	}
	// --help and --version end the program through kingpin's terminate hook; keep the exit code
	// instead of exiting so run stays testable.
	exitCode := -1
	k.Terminate(func(code int) {
		if exitCode < 0 {
			exitCode = code
		}
	})
	_, err = k.Parse(args)
	if exitCode >= 0 {
		return nil, exitCode
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgsidecar: %s\n", redact.Scrub(err.Error(), os.Getenv("DATABASE_URL"), dsn))
		return nil, 2
	}
	if err := a.useDatabaseURLFile(dsn != ""); err != nil {
		fmt.Fprintf(stderr, "pgsidecar: %s\n", err)
		return nil, 2
	}
	if dsn != "" {
		a.fromDataSource = true
		if a.poolCfg.DatabaseURL != "" {
			fmt.Fprintln(stderr, "pgsidecar: --database-url and postgres_exporter's DATA_SOURCE_* variables are both set; set one")
			return nil, 2
		}
		a.poolCfg.DatabaseURL = dsn
	}
	logger := promslog.New(a.logCfg)
	for _, name := range ignored {
		logger.Warn("Ignoring a DATA_SOURCE_* variable, as postgres_exporter does: another one takes precedence", "variable", name)
	}
	if !strings.HasPrefix(a.telemetryPath, "/") || strings.ContainsAny(a.telemetryPath, " {}") {
		fmt.Fprintf(stderr, "pgsidecar: --web.telemetry-path (%q) must be a path starting with /\n", a.telemetryPath)
		return nil, 2
	}
	if a.drainTimeout < 0 {
		fmt.Fprintf(stderr, "pgsidecar: --shutdown.drain-timeout (%s) must not be negative\n", a.drainTimeout)
		return nil, 2
	}
	// Checking DATABASE_URL reads the files it names (sslrootcert, a passfile).
	stage.set("checking the pool configuration and the files DATABASE_URL names")
	if err := a.poolCfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "pgsidecar: invalid configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return nil, 2
	}
	if f := *a.webFlags.WebConfigFile; f != "" {
		stage.set("reading --web.config.file " + f + " and the files it names")
		if err := checkRegularFile(f); err != nil {
			fmt.Fprintf(stderr, "pgsidecar: --web.config.file: %s\n", err)
			return nil, 2
		}
		if err := web.Validate(f); err != nil {
			fmt.Fprintf(stderr, "pgsidecar: --web.config.file: %s\n", err)
			return nil, 2
		}
	}
	stage.mu.Lock()
	stage.logger = logger
	stage.mu.Unlock()
	return startServer(ctx, a, logger, stage)
}

// maxWebConfigSize bounds --web.config.file, a short YAML file.
const maxWebConfigSize = 1 << 20

// checkRegularFile refuses a path that is not a regular file of reasonable size, before a
// library that reads it without such checks would block on a FIFO or read a device forever.
func checkRegularFile(path string) error {
	f, err := regularfile.Open(path, maxWebConfigSize)
	if err != nil {
		return err
	}
	return f.Close()
}

// server is the started program: everything built and listening, not yet serving.
type server struct {
	a         *app
	logger    *slog.Logger
	srv       *http.Server
	life      *lifecycle
	listeners []net.Listener
	cleanup   []func() // run in reverse order by close
}

// close stops what start-up started, for a server that will not serve.
func (s *server) close() {
	closeAll(s.listeners)
	s.stop()
}

// stop stops the features and the pool, in reverse order of start.
func (s *server) stop() {
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
}

// startServer creates the pool, starts the features and listens. On failure it stops what it
// started and returns nil and the exit code.
func startServer(ctx context.Context, a *app, logger *slog.Logger, stage *startStage) (_ *server, code int) {
	logger.Info("Starting pgsidecar", "version", version.Info(), "build_context", version.BuildContext())
	s := &server{a: a, logger: logger, life: &lifecycle{}}
	defer func() {
		if code != 0 {
			s.close()
		}
	}()
	reg := &registry{Registry: prometheus.NewRegistry()}
	if registryHook != nil {
		registryHook(reg)
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("pgsidecar"),
	)
	stage.set("creating the pool")
	mgr, err := pool.New(a.poolCfg, pool.WithLogger(logger), pool.WithRegisterer(reg))
	if err != nil {
		logger.Error("Cannot create the pool", "error", err.Error())
		return nil, 1
	}
	s.cleanup = append(s.cleanup, mgr.Close)

	mux := http.NewServeMux()
	var metricsHandler http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
		Registry:          reg,
		EnableOpenMetrics: true,
		// Concurrent scrapes share one collection, so many at once cost little; the cap only
		// bounds memory against a runaway client.
		MaxRequestsInFlight: 128,
	})
	d := &deps{mgr: mgr, life: s.life, reg: reg, mux: mux, logger: logger,
		links:         []web.LandingLinks{{Address: a.telemetryPath, Text: "Metrics"}},
		webConfigFile: *a.webFlags.WebConfigFile,
		reload:        newReloader(logger, mgr, a.databaseURLAgain)}
	for _, f := range a.features {
		stage.set("starting the " + f.name())
		stopFeature, err := f.start(ctx, d)
		if err != nil {
			if errors.As(err, new(configError)) {
				logger.Error("Invalid configuration", "error", redact.Scrub(err.Error(), a.poolCfg.DatabaseURL))
				return nil, 2
			}
			logger.Error("Cannot start", "error", redact.Scrub(err.Error(), a.poolCfg.DatabaseURL))
			return nil, 1
		}
		if stopFeature != nil {
			s.cleanup = append(s.cleanup, stopFeature)
		}
	}
	stopReload, err := d.reload.start(ctx, reg, mux)
	if err != nil {
		logger.Error("Cannot start", "error", err.Error())
		return nil, 1
	}
	s.cleanup = append(s.cleanup, stopReload)
	for _, wrap := range d.metricsMiddleware {
		metricsHandler = wrap(metricsHandler)
	}
	if err := handle(mux, a.telemetryPath, readOnly(metricsHandler)); err != nil {
		logger.Error("Cannot serve metrics", "path", a.telemetryPath, "error", err.Error())
		return nil, 2
	}
	if a.telemetryPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "pgsidecar",
			Description: "Prometheus-native sidecar for PostgreSQL connection pools",
			Version:     version.Info(),
			Links:       d.links,
		})
		if err != nil {
			logger.Error("Cannot build the landing page", "error", err.Error())
			return nil, 1
		}
		mux.Handle("/", readOnly(landing))
	}

	stage.set("listening on --web.listen-address")
	s.listeners, err = listenWeb(*a.webFlags.WebListenAddresses, *a.webFlags.WebSystemdSocket)
	if err != nil {
		logger.Error("Cannot listen", "error", err.Error())
		if listenConfigError(err) || errors.As(err, new(addressError)) {
			return nil, 2
		}
		return nil, 1
	}
	// Slow or stalled clients are cut off rather than holding a connection and goroutine each;
	// no WriteTimeout, so the live-metrics stream can run for as long as its client stays.
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 15 * time.Second,
		IdleTimeout: 2 * time.Minute}
	return s, 0
}

// serve serves until ctx ends, the web server fails, or drain is closed and the drain is over
// (see server.drain), then shuts down: the features and the pool first, the web server last,
// so that /metrics and the probes answer until the end.
func (s *server) serve(ctx context.Context, drain <-chan struct{}) int {
	errc := make(chan error, 1)
	go func() { errc <- web.ServeMultiple(s.listeners, s.srv, s.a.webFlags, s.logger) }()

	code := 0
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("Web server failed", "error", err.Error())
			code = 1
		}
	case <-ctx.Done():
		s.logger.Info("Shutting down")
	case <-drain:
		s.drain(ctx)
	}
	s.stop()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.logger.Warn("Web server did not stop cleanly", "error", err.Error())
	}
	return code
}

// configError marks a feature's start error as bad configuration, which exits 2 (and so does
// not restart-loop under systemd's RestartPreventExitStatus) where a failure to run exits 1.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// badConfig marks err, when not nil, as a configuration error.
func badConfig(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// handle mounts h and turns ServeMux's panic on a conflicting pattern (a telemetry path equal to
// /status, say) into an error.
func handle(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("--web.telemetry-path %q: %v", pattern, r)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// readOnly answers 405, naming GET and HEAD in the Allow header, to any other method, as the
// API paths do: a PUT or POST that "succeeds" would tell a client its request did something.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method "+r.Method+" not allowed; use GET or HEAD", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// listenConfigError reports whether a listen failure lies in the address itself, which exits 2
// like any bad setting: a malformed address or unknown port, a host name that does not resolve,
// a socket directory that does not exist, no permission. Other failures (the address in use,
// or not on this host yet) exit 1: they can pass on a restart, for instance once the previous
// instance has let go of the port.
func listenConfigError(err error) bool {
	var addrErr *net.AddrError
	if errors.As(err, &addrErr) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.IsNotFound
	}
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) ||
		errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}

// envFileArg finds --env-file (or else PGSIDECAR_ENV_FILE) before kingpin parses, since the file
// feeds kingpin's Envar.
func envFileArg(args []string) string {
	for i, arg := range args {
		if v, ok := strings.CutPrefix(arg, "--env-file="); ok {
			return v
		}
		if arg == "--env-file" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return os.Getenv(envFileVar)
}

const (
	// maxEnvFileSize bounds the --env-file read, so that a runaway file cannot exhaust memory.
	maxEnvFileSize = 16 << 20
	// maxEnvLine bounds one line of it: generous for a certificate or a long DSN in a value.
	maxEnvLine = 1 << 20
)

// loadEnvFile sets KEY=VALUE lines of a .env file as environment variables, without replacing
// variables already set. Blank lines and # comments are skipped; values may be quoted, and a
// " #" after an unquoted value starts a comment (as .env files commonly do). Only a regular
// file is read, so a FIFO or a device cannot hang start-up.
func loadEnvFile(path string) error {
	f, err := regularfile.Open(path, maxEnvFileSize)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(io.LimitReader(f, maxEnvFileSize+1))
	read := 0
	for n := 1; ; n++ {
		raw, tooLong, err := readLine(br, maxEnvLine)
		read += len(raw) + 1
		if err != nil && (err != io.EOF || len(raw) == 0) {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if read > maxEnvFileSize {
			return fmt.Errorf("%s: larger than %d bytes", path, maxEnvFileSize)
		}
		if tooLong {
			return fmt.Errorf("%s:%d: %s is longer than %d MiB", path, n, lineSubject(raw), maxEnvLine>>20)
		}
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" || strings.ContainsAny(key, " \t") {
			return fmt.Errorf("%s:%d: expected KEY=VALUE", path, n)
		}
		val = strings.TrimSpace(val)
		if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
			val = val[1 : len(val)-1]
		} else if i := strings.Index(val, " #"); i >= 0 {
			val = strings.TrimSpace(val[:i])
		}
		if _, set := os.LookupEnv(key); !set {
			if err := os.Setenv(key, val); err != nil {
				return fmt.Errorf("%s:%d: %w", path, n, err)
			}
		}
	}
}

// readLine reads one line without its line end. A line longer than limit is read to its end
// but only its first limit bytes are returned, with tooLong set. The error is io.EOF after the
// last line.
func readLine(br *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, isPrefix, err := br.ReadLine()
		if len(line)+len(chunk) > limit {
			tooLong = true
			chunk = chunk[:max(0, limit-len(line))]
		}
		line = append(line, chunk...)
		if err != nil || !isPrefix {
			return line, tooLong, err
		}
	}
}

// lineSubject names an over-long line by its key when it starts like KEY=…, without showing
// any of the value, which may be a secret.
func lineSubject(line []byte) string {
	s := strings.TrimPrefix(strings.TrimLeft(string(line[:min(len(line), 256)]), " \t"), "export ")
	if key, _, ok := strings.Cut(s, "="); ok {
		key = strings.TrimSpace(key)
		if key != "" && len(key) <= 128 && strings.Trim(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == "" {
			return "the line of " + key
		}
	}
	return "the line"
}
