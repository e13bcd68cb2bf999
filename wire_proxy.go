package main

import (
	"context"
	"fmt"

	"github.com/alecthomas/kingpin/v2"

	"github.com/pgsidecar/pgsidecar/proxy"
)

// proxyFeature serves the PostgreSQL wire protocol on the pool, off unless
// --proxy.listen-address is given.
type proxyFeature struct {
	cfg proxy.Config
}

func (f *proxyFeature) flags(k *kingpin.Application) {
	f.cfg = proxy.DefaultConfig()
	bindSettings(k, &f.cfg, proxy.Settings())
}

// start runs the proxy; a reload (reload.go) reads its users file and certificate again and
// makes it follow the server password.
func (f *proxyFeature) start(_ context.Context, d *deps) (func(), error) {
	if len(f.cfg.Listen) == 0 {
		return nil, nil
	}
	srv, err := proxy.New(d.mgr, f.cfg, proxy.WithLogger(d.logger), proxy.WithRegisterer(d.reg))
	if err != nil {
		return nil, badConfig(err)
	}
	if err := srv.Start(); err != nil {
		_ = srv.Close()
		err = fmt.Errorf("--proxy.listen-address: %w", err)
		if listenConfigError(err) {
			return nil, badConfig(err)
		}
		return nil, err
	}
	d.life.proxy.Store(srv)
	d.reload.add("proxy", srv.Reload)
	// A changed server password replaces the server connections after their transactions.
	d.reload.reconnect = func() { srv.Reconnect() }
	return func() { _ = srv.Close() }, nil
}

func (f *proxyFeature) name() string {
	return "proxy (reading --proxy.users-file and the TLS files, listening on --proxy.listen-address)"
}
