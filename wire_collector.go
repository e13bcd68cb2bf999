package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kingpin/v2"

	"github.com/pgsidecar/pgsidecar/collector"
)

// collectorFeature exports the database statistics (pg_* metrics) and custom queries, and
// reloads the queries file on SIGHUP and POST /-/reload.
type collectorFeature struct {
	cfg collector.Config
}

func (f *collectorFeature) flags(k *kingpin.Application) {
	f.cfg = collector.DefaultConfig()
	bindSettings(k, &f.cfg, collector.Settings())
}

func (f *collectorFeature) start(ctx context.Context, d *deps) (func(), error) {
	e, err := collector.New(d.mgr, f.cfg, collector.WithLogger(d.logger))
	if err != nil {
		return nil, badConfig(err)
	}
	if err := d.reg.Register(e); err != nil {
		return nil, err
	}
	d.metricsMiddleware = append(d.metricsMiddleware, e.Middleware)
	d.mux.Handle("/-/reload", e.ReloadHandler())
	d.logger.Info("Collectors enabled", "collectors", e.Enabled(), "queries_file", f.cfg.QueriesFile, "scope", f.cfg.Scope)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.ReloadOn(rctx, hup)
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
		e.Close()
		d.reg.Unregister(e)
	}, nil
}

func (f *collectorFeature) name() string { return "collectors (reading --queries.file)" }
