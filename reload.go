package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/regularfile"
	"github.com/pgsidecar/pgsidecar/internal/settings"
	"github.com/pgsidecar/pgsidecar/pool"
)

// databaseURLFileSetting is --database-url-file: DATABASE_URL read from a file, as Docker and
// Kubernetes mount secrets (the _FILE convention of the official images).
var databaseURLFileSetting = settings.Setting[app]{Flag: "database-url-file", Env: "DATABASE_URL_FILE", PlaceHolder: "FILE",
	Help: "Read DATABASE_URL from this file (a mounted secret) instead of giving it; read again on SIGHUP and POST /-/reload, when its password may change (nothing else without a restart).",
	Set:  settings.String(func(a *app) *string { return &a.databaseURLFile })}

// useDatabaseURLFile sets the pool's DATABASE_URL from --database-url-file, when given. It
// refuses a second source of the connection string: DATABASE_URL itself, or postgres_exporter's
// DATA_SOURCE_* variables (fromDataSource).
func (a *app) useDatabaseURLFile(fromDataSource bool) error {
	if a.databaseURLFile == "" {
		return nil
	}
	if a.poolCfg.DatabaseURL != "" {
		return errors.New("DATABASE_URL (--database-url) and DATABASE_URL_FILE (--database-url-file) are both set; set one")
	}
	if fromDataSource {
		return errors.New("DATABASE_URL_FILE (--database-url-file) and postgres_exporter's DATA_SOURCE_* variables are both set; set one")
	}
	dsn, err := readDatabaseURLFile(a.databaseURLFile)
	if err != nil {
		return err
	}
	a.poolCfg.DatabaseURL = dsn
	return nil
}

// readDatabaseURLFile reads a connection string from a regular file of bounded size; errors name
// the file, never its content.
func readDatabaseURLFile(path string) (string, error) {
	b, err := regularfile.Read(path, maxSecretFileSize)
	if err != nil {
		return "", fmt.Errorf("DATABASE_URL_FILE: %w", err)
	}
	dsn := strings.TrimSpace(string(b))
	if dsn == "" {
		return "", fmt.Errorf("DATABASE_URL_FILE: %s is empty", path)
	}
	return dsn, nil
}

// databaseURLAgain gives DATABASE_URL as it is now, for a reload: the file read again, the
// DATA_SOURCE_* variables' files read again, or else the string given at start, whose password
// file (passfile, PGPASSFILE) the pool reads again.
func (a *app) databaseURLAgain() (string, error) {
	switch {
	case a.databaseURLFile != "":
		return readDatabaseURLFile(a.databaseURLFile)
	case a.fromDataSource:
		dsn, _, err := dataSource()
		return dsn, err
	}
	return a.poolCfg.DatabaseURL, nil
}

// reloader reloads, on SIGHUP and POST /-/reload, what may rotate under a running sidecar: the
// server password first, then what the features added (the queries file, the proxy's users
// file, certificate and clients' password, in the order the features start). Each part that
// fails keeps its previous configuration and logs why; pgsidecar_config_last_reload_successful
// says whether the last reload applied every part. Nothing a reload does closes a connection.
type reloader struct {
	logger      *slog.Logger
	mgr         *pool.Manager
	databaseURL func() (string, error)
	parts       []reloadPart
	// reconnect, when set, replaces the server connections after their current transaction.
	// A reload that changed the server password calls it, so that connections opened with the
	// previous password do not outlive it; without it they stay until DB_MAX_LIFETIME.
	reconnect func()

	mu sync.Mutex // one reload at a time
	ok prometheus.Gauge
}

// reloadPart is one thing a reload reads again; its errors name their files and hold no secret.
type reloadPart struct {
	name   string
	reload func() error
}

func newReloader(logger *slog.Logger, mgr *pool.Manager, databaseURL func() (string, error)) *reloader {
	r := &reloader{logger: logger, mgr: mgr, databaseURL: databaseURL,
		ok: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgsidecar_config_last_reload_successful",
			Help: "1 if the last reload (SIGHUP or POST /-/reload) applied everything it reads again (server password, queries file, proxy users file and TLS certificate); 0 if a part failed and kept its previous configuration (the log says which and why). 1 from start-up until a reload."})}
	r.ok.Set(1)
	return r
}

// add makes a reload read one more part again, after those added before it.
func (r *reloader) add(name string, reload func() error) {
	r.parts = append(r.parts, reloadPart{name: name, reload: reload})
}

// reload reads every part again. A failed part keeps its previous configuration and does not
// stop the others; the error joins the failures.
func (r *reloader) reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logger.Info("Reloading", "trigger", trigger)
	var errs []error
	fail := func(part string, err error) {
		r.logger.Error("Reload failed, the previous configuration stays", "part", part, "error", err.Error())
		errs = append(errs, fmt.Errorf("%s: %w", part, err))
	}
	changed, err := r.reloadPassword()
	if err != nil {
		fail("server password", err)
	}
	for _, p := range r.parts {
		if err := p.reload(); err != nil {
			fail(p.name, err)
		}
	}
	if changed {
		r.logger.Info("Server password changed: new connections use the new one", "reconnect", r.reconnect != nil)
		if r.reconnect != nil {
			r.reconnect()
		}
	}
	if len(errs) > 0 {
		r.ok.Set(0)
		return errors.Join(errs...)
	}
	r.ok.Set(1)
	r.logger.Info("Reloaded", "trigger", trigger)
	return nil
}

// reloadPassword reads DATABASE_URL again and gives the pool its password.
func (r *reloader) reloadPassword() (changed bool, err error) {
	dsn, err := r.databaseURL()
	if err != nil {
		return false, err
	}
	return r.mgr.ReloadPassword(dsn)
}

// handler reloads on POST (or PUT) /-/reload, as Prometheus does: 200 when every part was
// applied, 500 with what failed (the parts that did not fail are applied).
func (r *reloader) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost && req.Method != http.MethodPut {
			w.Header().Set("Allow", "POST, PUT")
			http.Error(w, "This endpoint requires a POST request.", http.StatusMethodNotAllowed)
			return
		}
		if err := r.reload("POST /-/reload"); err != nil {
			http.Error(w, "reload failed, the previous configuration stays for: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

// start registers the metric, mounts /-/reload and reloads on SIGHUP until the returned stop.
func (r *reloader) start(ctx context.Context, reg prometheus.Registerer, mux *http.ServeMux) (stop func(), err error) {
	if err := reg.Register(r.ok); err != nil {
		return nil, err
	}
	mux.Handle("/-/reload", r.handler())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				_ = r.reload("SIGHUP")
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
		reg.Unregister(r.ok)
	}, nil
}
