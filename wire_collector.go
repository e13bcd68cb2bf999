package main

import (
	"context"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kingpin/v2"

	"github.com/pgsidecar/pgsidecar/collector"
)

func init() { features = append(features, func() feature { return &collectorFeature{} }) }

// collectorFeature exports the database statistics (pg_* metrics) and custom queries, and
// reloads the queries file on SIGHUP and POST /-/reload.
type collectorFeature struct {
	flagCfg *collector.FlagConfig
}

func (f *collectorFeature) flags(k *kingpin.Application) { f.flagCfg = collector.AddFlags(k) }

func (f *collectorFeature) start(ctx context.Context, d *deps) (func(), error) {
	cfg := f.flagCfg.Config()
	cfg.Logger = d.logger
	e, err := collector.New(d.mgr, cfg)
	if err != nil {
		return nil, err
	}
	if err := d.reg.Register(e); err != nil {
		return nil, err
	}
	d.metricsMiddleware = append(d.metricsMiddleware, e.Middleware)
	d.logger.Info("Collectors enabled", "collectors", e.Enabled(), "queries_file", cfg.QueriesFile)

	d.mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			w.Header().Set("Allow", "POST, PUT")
			http.Error(w, "This endpoint requires a POST request.", http.StatusMethodNotAllowed)
			return
		}
		if err := e.Reload(); err != nil {
			http.Error(w, "failed to reload queries: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stopped, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-stopped:
				return
			case <-hup:
				d.logger.Info("Reloading custom queries", "signal", "SIGHUP")
				_ = e.Reload() // failures are logged and exported; the old queries stay
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(stopped)
		<-done
		e.Close()
		d.reg.Unregister(e)
	}, nil
}
