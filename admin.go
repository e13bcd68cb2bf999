package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/api"
	"github.com/pgsidecar/pgsidecar/internal/regularfile"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// proxySwitch adapts the running proxy to the admin endpoints' api.Maintenance.
type proxySwitch struct{ s *proxy.Server }

// runningProxy returns the switch of the proxy life holds, or nil before it started.
func runningProxy(life *lifecycle) func() api.Maintenance {
	return func() api.Maintenance {
		if s := life.proxy.Load(); s != nil {
			return proxySwitch{s}
		}
		return nil
	}
}

func (p proxySwitch) Pause(ctx context.Context, timeout time.Duration) (api.PauseResponse, error) {
	res, err := p.s.Pause(ctx, timeout)
	resp := api.PauseResponse{WaitedSeconds: res.Waited.Seconds(), QueuedClients: res.Queued}
	for _, x := range res.Holders {
		resp.Holders = append(resp.Holders, api.Holder{User: x.User, Client: x.Client, Pin: x.Pin})
	}
	if errors.Is(err, proxy.ErrPauseUnderWay) {
		err = api.ErrPauseUnderWay
	}
	return resp, err
}

func (p proxySwitch) Resume() (api.ResumeResponse, bool) {
	res := p.s.Resume()
	return api.ResumeResponse{PausedSeconds: res.Paused.Seconds(), ReleasedClients: res.Released}, res.WasPaused
}

func (p proxySwitch) Reconnect() api.ReconnectResponse {
	res := p.s.Reconnect()
	return api.ReconnectResponse{Closed: res.Closed, Replacing: res.Replacing}
}

// errAdminNotLoopback refuses an admin request that no authentication guards and that came to
// an address other hosts can reach.
var errAdminNotLoopback = errors.New("the admin endpoints answer only on a loopback address unless --web.config.file sets basic_auth_users or requires client certificates")

// adminAllowed guards the admin endpoints as Prometheus guards its admin API: they sit behind
// the web configuration's authentication, which the web server checks before any handler; a
// configuration without authentication (or none) lets only requests to a loopback address in.
// The file is read on each request, as the web server reads it, so an edit applies at once.
func adminAllowed(webConfigFile string) func(*http.Request) error {
	return func(r *http.Request) error {
		if webConfigFile != "" {
			auth, err := webConfigAuthenticates(webConfigFile)
			if err != nil {
				return fmt.Errorf("--web.config.file: %w", err)
			}
			if auth {
				return nil
			}
		}
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok && a.IP.IsLoopback() {
			return nil
		}
		return errAdminNotLoopback
	}
}

// webConfigAuthenticates reports whether the web configuration file makes clients authenticate:
// basic_auth_users, or a client certificate the server requires and verifies.
func webConfigAuthenticates(path string) (bool, error) {
	f, err := regularfile.Open(path, maxWebConfigSize)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxWebConfigSize))
	if err != nil {
		return false, err
	}
	var cfg struct {
		BasicAuthUsers map[string]string `yaml:"basic_auth_users"`
		TLS            struct {
			ClientAuth string `yaml:"client_auth_type"`
		} `yaml:"tls_server_config"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return false, errors.New("not valid YAML")
	}
	return len(cfg.BasicAuthUsers) > 0 || cfg.TLS.ClientAuth == "RequireAndVerifyClientCert", nil
}
