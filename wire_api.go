package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/pgsidecar/pgsidecar/api"
)

// apiFeature mounts the /api/database/* endpoints, the /healthz and /readyz probes
// and the /status page on the exporter's server, so TLS and basic auth cover them too.
type apiFeature struct {
	cfg api.Config
}

func (f *apiFeature) flags(k *kingpin.Application) {
	f.cfg = api.DefaultConfig()
	bindSettings(k, &f.cfg, api.Settings())
}

func (f *apiFeature) start(ctx context.Context, d *deps) (func(), error) {
	if !f.cfg.Enabled {
		return nil, nil
	}
	h, err := api.New(d.mgr, f.cfg, api.WithLogger(d.logger), api.WithGatherer(d.reg))
	if err != nil {
		return nil, badConfig(err)
	}
	h.Register(d.mux)
	d.links = append(d.links, web.LandingLinks{Address: "/status", Text: "Status"},
		web.LandingLinks{Address: "/api/database/metrics", Text: "Pool metrics (JSON)"},
		web.LandingLinks{Address: "/readyz", Text: "Readiness"})
	// Live streams never end by themselves; end them when shutdown begins, so the server's
	// graceful shutdown does not wait for them.
	stopAfter := context.AfterFunc(ctx, h.Close)
	return func() {
		stopAfter()
		h.Close()
	}, nil
}

func (f *apiFeature) name() string { return "API" }
