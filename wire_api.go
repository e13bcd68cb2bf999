package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/pgsidecar/pgsidecar/api"
)

// apiFeature mounts the /api/database/* endpoints, the /healthz and /readyz probes
// and the /status page on the exporter's server, so TLS and basic auth cover them too; with
// --web.probe-listen-address the probes are also served, alone, on a listener without them.
type apiFeature struct {
	cfg api.Config
}

func (f *apiFeature) flags(k *kingpin.Application) {
	f.cfg = api.DefaultConfig()
	bindSettings(k, &f.cfg, api.Settings())
}

func (f *apiFeature) start(ctx context.Context, d *deps) (func(), error) {
	if !f.cfg.Enabled {
		if f.cfg.EnableAdmin {
			return nil, badConfig(errors.New("--web.enable-admin needs --web.enable-api"))
		}
		return nil, nil
	}
	h, err := api.New(d.mgr, f.cfg, api.WithLogger(d.logger), api.WithGatherer(d.reg), api.WithReadiness(d.life.readiness))
	if err != nil {
		return nil, badConfig(err)
	}
	h.Register(d.mux)
	if f.cfg.EnableAdmin {
		h.RegisterAdmin(d.mux, api.Admin{Proxy: runningProxy(d.life), Allow: adminAllowed(d.webConfigFile)})
	}
	d.links = append(d.links, web.LandingLinks{Address: "/status", Text: "Status"},
		web.LandingLinks{Address: "/api/database/metrics", Text: "Pool metrics (JSON)"},
		web.LandingLinks{Address: "/readyz", Text: "Readiness"})
	stopProbes, err := f.serveProbes(h, d)
	if err != nil {
		h.Close()
		return nil, err
	}
	// Live streams never end by themselves; end them when shutdown begins, so the server's
	// graceful shutdown does not wait for them.
	stopAfter := context.AfterFunc(ctx, h.Close)
	return func() {
		stopAfter()
		stopProbes()
		h.Close()
	}, nil
}

// serveProbes serves /healthz and /readyz on --web.probe-listen-address, when set, outside the
// web configuration's TLS and basic auth.
func (f *apiFeature) serveProbes(h *api.Handler, d *deps) (stop func(), err error) {
	if f.cfg.ProbeListenAddress == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", f.cfg.ProbeListenAddress)
	if err != nil {
		err = fmt.Errorf("--web.probe-listen-address: %w", err)
		if listenConfigError(err) {
			return nil, badConfig(err)
		}
		return nil, err
	}
	mux := http.NewServeMux()
	h.RegisterProbes(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 2 * time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logger.Error("Probe listener failed", "address", f.cfg.ProbeListenAddress, "error", err.Error())
		}
	}()
	d.logger.Info("Serving probes without authentication", "address", l.Addr().String(), "paths", "/healthz, /readyz")
	return func() {
		_ = srv.Close()
		<-done
	}, nil
}

func (f *apiFeature) name() string { return "API" }
