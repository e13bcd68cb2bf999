package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"

	"github.com/pgsidecar/pgsidecar/collector"
)

// collectorFeature exports the database statistics (pg_* metrics) and custom queries; a reload
// (reload.go) reads the queries file again.
type collectorFeature struct {
	cfg collector.Config
}

func (f *collectorFeature) flags(k *kingpin.Application) {
	f.cfg = collector.DefaultConfig()
	bindSettings(k, &f.cfg, collector.Settings())
}

func (f *collectorFeature) start(_ context.Context, d *deps) (func(), error) {
	e, err := collector.New(d.mgr, f.cfg, collector.WithLogger(d.logger))
	if err != nil {
		return nil, badConfig(err)
	}
	if err := d.reg.Register(e); err != nil {
		return nil, err
	}
	d.metricsMiddleware = append(d.metricsMiddleware, e.Middleware)
	d.reload.add("queries file", e.Reload)
	d.logger.Info("Collectors enabled", "collectors", e.Enabled(), "queries_file", f.cfg.QueriesFile, "scope", f.cfg.Scope)
	return func() {
		e.Close()
		d.reg.Unregister(e)
	}, nil
}

func (f *collectorFeature) name() string { return "collectors (reading --queries.file)" }
