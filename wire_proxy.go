package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"

	"github.com/pgsidecar/pgsidecar/proxy"
)

func init() { features = append(features, func() feature { return &proxyFeature{} }) }

// proxyFeature serves the PostgreSQL wire protocol on the pool, off unless
// --proxy.listen-address is given.
type proxyFeature struct {
	listen     []string
	auth       string
	usersFile  string
	tlsCert    string
	tlsKey     string
	maxMessage units.Base2Bytes
	maxClients int
}

func (f *proxyFeature) flags(k *kingpin.Application) {
	k.Flag("proxy.listen-address", "Serve the PostgreSQL protocol on this address (host:port, or an absolute unix socket path such as /run/pgsidecar/.s.PGSQL.6432); repeatable. The proxy is off unless set.").
		PlaceHolder("ADDRESS").Envar("PROXY_LISTEN_ADDRESS").StringsVar(&f.listen)
	k.Flag("proxy.auth-method", "Client authentication: scram-sha-256, md5, or trust (trust only for loopback and unix socket clients).").
		Default(string(proxy.AuthSCRAM)).EnumVar(&f.auth, string(proxy.AuthSCRAM), string(proxy.AuthMD5), string(proxy.AuthTrust))
	k.Flag("proxy.users-file", "Client credentials in PgBouncer auth_file format (\"user\" \"password, md5 hash or SCRAM verifier\"); default: the user and password of DATABASE_URL.").
		PlaceHolder("FILE").StringVar(&f.usersFile)
	k.Flag("proxy.tls-cert-file", "Certificate for TLS to proxy clients (with --proxy.tls-key-file).").PlaceHolder("FILE").StringVar(&f.tlsCert)
	k.Flag("proxy.tls-key-file", "Private key for TLS to proxy clients.").PlaceHolder("FILE").StringVar(&f.tlsKey)
	k.Flag("proxy.max-message-size", "Largest protocol message a proxy client may send.").Default("64MiB").BytesVar(&f.maxMessage)
	k.Flag("proxy.max-client-connections", "Client connections served at once, waiting ones included; more are refused with SQLSTATE 53300.").
		Default("1000").IntVar(&f.maxClients)
}

func (f *proxyFeature) start(_ context.Context, d *deps) (func(), error) {
	if len(f.listen) == 0 {
		return nil, nil
	}
	if f.maxMessage < 1024 {
		return nil, badConfig(fmt.Errorf("--proxy.max-message-size (%s) must be at least 1KiB", f.maxMessage))
	}
	if f.maxClients < 1 {
		return nil, badConfig(fmt.Errorf("--proxy.max-client-connections (%d) must be at least 1", f.maxClients))
	}
	cfg := proxy.Config{Listen: f.listen, Auth: proxy.AuthMethod(f.auth), MaxMessageSize: int(f.maxMessage),
		MaxClients: f.maxClients}
	if f.usersFile != "" {
		users, err := proxy.LoadUsers(f.usersFile)
		if err != nil {
			return nil, badConfig(fmt.Errorf("--proxy.users-file: %w", err))
		}
		cfg.Users = users
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, badConfig(errors.New("--proxy.tls-cert-file and --proxy.tls-key-file must be given together"))
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, badConfig(fmt.Errorf("--proxy.tls-cert-file/--proxy.tls-key-file: %w", err))
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	srv, err := proxy.New(d.mgr, cfg, proxy.WithLogger(d.logger), proxy.WithRegisterer(d.reg))
	if err != nil {
		return nil, badConfig(err)
	}
	if err := srv.Start(); err != nil {
		_ = srv.Close()
		return nil, err
	}
	return func() { _ = srv.Close() }, nil
}
