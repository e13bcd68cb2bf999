package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/pgsidecar/pgsidecar/api"
)

func init() { features = append(features, func() feature { return &apiFeature{} }) }

// apiFeature mounts the seed's /api/database/* endpoints, the /healthz and /readyz probes
// and the /status page on the exporter's server, so TLS and basic auth cover them too.
type apiFeature struct {
	enabled bool
}

func (f *apiFeature) flags(k *kingpin.Application) {
	k.Flag("web.enable-api", "Serve /api/database/*, /healthz, /readyz and the /status page.").
		Default("true").BoolVar(&f.enabled)
}

func (f *apiFeature) start(ctx context.Context, d *deps) (func(), error) {
	if !f.enabled {
		return nil, nil
	}
	h := api.New(api.Options{Manager: d.mgr, Gatherer: d.reg, Logger: d.logger})
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
