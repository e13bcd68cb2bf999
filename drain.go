package main

import (
	"context"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/api"
	"github.com/pgsidecar/pgsidecar/internal/settings"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// drainGrace is how long, at the drain timeout, a proxy client inside a transaction may go on
// before it is closed. The default drain timeout plus drainGrace stays under Kubernetes' 30 s
// terminationGracePeriodSeconds, so the drain ends before the kubelet's SIGKILL.
const drainGrace = 5 * time.Second

// shutdownSettings are the settings of the drain at SIGTERM.
func shutdownSettings() []settings.Setting[app] {
	return []settings.Setting[app]{
		{Flag: "shutdown.drain-timeout", Env: "PGSIDECAR_SHUTDOWN_DRAIN_TIMEOUT", Default: "20s",
			Help: "On SIGTERM, wait this long for the proxy's clients to leave (the process exits as soon as the last one has) while /readyz answers 503 and everything else keeps serving; then clients outside a transaction get FATAL 57P01, and those inside one are closed 5s later. 0 ends the sessions at once. A second SIGTERM, or SIGINT, stops at once.",
			Set:  settings.Duration("--shutdown.drain-timeout", func(a *app) *time.Duration { return &a.drainTimeout })},
	}
}

// lifecycle is where the process stands, for /readyz and the admin endpoints: draining from
// SIGTERM on, and the proxy once it started.
type lifecycle struct {
	draining atomic.Bool
	proxy    atomic.Pointer[proxy.Server]
}

// readiness is what /readyz asks besides the pool's health.
func (l *lifecycle) readiness() api.Readiness {
	rd := api.Readiness{Draining: l.draining.Load()}
	if p := l.proxy.Load(); p != nil {
		rd.Paused = p.Paused()
	}
	return rd
}

// watchSignals turns SIGTERM and SIGINT into the program's two ways of stopping. Once the
// program serves, the first SIGTERM closes drain (a graceful stop: server.drain); SIGINT, a
// second SIGTERM, or any of them during start-up calls stopNow. It returns when ctx ends.
func watchSignals(ctx context.Context, sigs <-chan os.Signal, serving *atomic.Bool, drain chan<- struct{}, stopNow func()) {
	draining := false
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			if sig == syscall.SIGTERM && serving.Load() && !draining {
				draining = true
				close(drain)
				continue
			}
			stopNow()
			return
		}
	}
}

// drain is the graceful stop at SIGTERM. /readyz answers 503 from now on, and the proxy serves
// its clients, new ones included (a sidecar's clients are its own app, finishing its requests),
// until the last one leaves or --shutdown.drain-timeout passes. Then the proxy ends the sessions
// outside a transaction, and gives those inside one drainGrace. It returns early when ctx ends
// (a second signal).
func (s *server) drain(ctx context.Context) {
	s.life.draining.Store(true)
	p := s.life.proxy.Load()
	if p == nil {
		s.logger.Info("Shutting down")
		return
	}
	start := time.Now()
	s.logger.Info("Shutting down: draining the proxy's clients", "clients", p.ClientCount(), "timeout", s.a.drainTimeout)
	wctx, cancel := context.WithTimeout(ctx, s.a.drainTimeout)
	left := p.WaitNoClients(wctx)
	cancel()
	switch {
	case left:
		s.logger.Info("Drained: the proxy's last client left", "took", time.Since(start).Round(time.Millisecond))
		return
	case ctx.Err() != nil:
		s.logger.Warn("Stopping at once, without waiting for the proxy's clients", "clients", p.ClientCount())
		return
	}
	s.logger.Warn("Drain timeout: ending the proxy's sessions", "clients", p.ClientCount(), "grace_for_transactions", drainGrace)
	p.EndSessions(drainGrace)
	gctx, cancel := context.WithTimeout(ctx, drainGrace)
	p.WaitNoClients(gctx)
	cancel()
}
