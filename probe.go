package main

import (
	"context"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/settings"
)

// probeFeature serves postgres_exporter's multi-target /probe when --probe.config-file (its
// --config.file) names auth modules. It runs the collectors as --collector.* configures them,
// against each probe's target; the web configuration's authentication guards it as it guards
// every path.
type probeFeature struct {
	opts       probeOptions
	collectors *collectorFeature
}

// probeOptions are the probe's settings.
type probeOptions struct {
	configFile string
	collector.ProbeOptions
}

func probeSettings() []settings.Setting[probeOptions] {
	return []settings.Setting[probeOptions]{
		{Flag: "probe.config-file", Env: "PGSIDECAR_PROBE_CONFIG_FILE", PlaceHolder: "FILE",
			Help: "postgres_exporter's configuration file (its --config.file) of auth_modules: serves /probe?target=HOST:PORT[/DATABASE]&auth_module=NAME, which runs the enabled collectors against that server (its database only). A module may list the targets it allows (targets: host patterns, host:port, CIDR); a password goes in clear text or md5 only where the module's options set require_auth. Empty: no /probe. Reloaded on SIGHUP and POST /-/reload.",
			Set:  settings.String(func(o *probeOptions) *string { return &o.configFile })},
		{Flag: "probe.max-targets", Env: "PGSIDECAR_PROBE_MAX_TARGETS", Default: "20",
			Help: "Most probe targets kept at once, each with up to --collector.max-connections connections; a probe of a new target past it closes the least recently probed idle one, or is answered 503 when all are being probed.",
			Set:  settings.Int("--probe.max-targets", func(o *probeOptions) *int { return &o.MaxTargets })},
		{Flag: "probe.idle-timeout", Env: "PGSIDECAR_PROBE_IDLE_TIMEOUT", Default: "5m",
			Help: "Close a probe target's connections when it was not probed for this long; keep it above the scrape interval.",
			Set:  settings.Duration("--probe.idle-timeout", func(o *probeOptions) *time.Duration { return &o.IdleTimeout })},
	}
}

func (f *probeFeature) flags(k *kingpin.Application) {
	bindSettings(k, &f.opts, probeSettings())
}

func (f *probeFeature) name() string { return "multi-target probe (reading --probe.config-file)" }

func (f *probeFeature) start(_ context.Context, d *deps) (func(), error) {
	if f.opts.configFile == "" {
		return nil, nil
	}
	p, err := collector.NewProber(f.opts.configFile, f.collectors.cfg, f.opts.ProbeOptions, d.logger)
	if err != nil {
		return nil, badConfig(err)
	}
	d.mux.Handle("/probe", readOnly(p))
	d.links = append(d.links, web.LandingLinks{Address: "/probe", Text: "Probe (multi-target; ?target=&auth_module=)"})
	d.reload.add("probe configuration file", p.Reload)
	d.logger.Info("Serving /probe", "config_file", f.opts.configFile, "max_targets", f.opts.MaxTargets,
		"idle_timeout", f.opts.IdleTimeout)
	return p.Close, nil
}
