// Package proxy is pgsidecar's PostgreSQL wire-protocol proxy. Applications in any language point
// their connection string at it; their requests are relayed over the pool manager's warm
// connections, and every query is measured into the same series as library traffic
// (Manager.RecordQuery): latency histograms, errors by SQLSTATE and the slow query log.
//
// Pooling is by transaction (Config.PoolMode PoolTransaction) or by session (PoolSession, the
// default), in one relay: a session-mode client is a client pinned to its server connection from
// login, whose prepared statements and settings are the server connection's own. A
// transaction-mode client holds a server connection only while it is in a transaction or has
// requests outstanding; what PostgreSQL keeps per session is kept per client instead: its named
// prepared statements (mapped onto statements shared by all clients and prepared lazily on each
// connection, with a bounded LRU per connection) and its settings (read back from the server
// after a request that may have changed them, applied on checkout). State that cannot move
// between connections (LISTEN, session advisory locks, temporary tables, SQL PREPARE, WITH HOLD
// cursors, SET ROLE) pins the client to its connection until it leaves.
//
// The files follow the wire, each using only those before it:
//   - frame.go: reading, copying and writing messages; config.go, throttle.go, metrics.go,
//     credential.go: settings, log throttles, metrics and users' credentials.
//   - statements.go: the proxy-wide prepared statements; sessionstate.go: start-up settings,
//     reading settings back and restoring them, pin reasons.
//   - core.go: what every part of the relay shares.
//   - serverconn.go: the server side. Each server connection has one goroutine reading it for as
//     long as the proxy holds it, which forwards answers to the client holding it (its
//     clientEnd) in the order of a queue of entries, one per answer the client expects, so that
//     answers to what the proxy injects are dropped and answers the proxy makes up keep their
//     place, and which gives the connection back when nothing holds it.
//   - serverset.go: the proxy's server connections, borrowed from the pool manager.
//   - client.go, clientstatements.go, clientstate.go, requests.go: the client side. One
//     goroutine per client reads its messages, checks out a server connection when a request
//     needs one, and maps its statements and settings onto the connection; idlewatch.go: an
//     idle transaction-mode client has none, and a watcher starts one when it sends again.
//   - auth.go, clients.go, startup.go, server.go: the front door and the Server, which listens,
//     lets clients in (gate), keeps track of them (clientTable) and closes; reload.go: what
//     Reload reads again (users file, certificate, the pool user's password) for new logins.
//
// The proxy serves the database and user of the pool's DATABASE_URL: clients authenticate
// against the proxy's own credentials, and their queries run as the pool's user. Cancel keys
// are the proxy's, so a client cannot terminate "its" backend by process ID.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/backoff"
	"github.com/pgsidecar/pgsidecar/pool"
)

// Option changes how New builds a Server.
type Option func(*Server)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithRegisterer registers the proxy's metrics on r (default: none). Close unregisters them.
func WithRegisterer(r prometheus.Registerer) Option { return func(s *Server) { s.reg = r } }

// Server accepts PostgreSQL clients and relays their sessions over the pool manager's
// connections. It is safe for concurrent use.
type Server struct {
	core
	reg prometheus.Registerer
	gate
	auth     authenticator
	cert     atomic.Pointer[tls.Certificate] // from --proxy.tls-cert-file; Reload replaces it
	reloadMu sync.Mutex                      // one Reload at a time
	table    *clientTable
	evictLog *logThrottle
	txSet    *serverSet // the server connections

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
}

// New checks cfg, reads the files it names and prepares a Server on mgr's pool. Clients may
// only use the database of the pool's DATABASE_URL. Call Start to listen.
func New(mgr *pool.Manager, cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	files, err := cfg.readFiles()
	if err != nil {
		return nil, err
	}
	if files.users != nil {
		cfg.Users = files.users
	}
	s := &Server{
		core: core{mgr: mgr, cfg: cfg, log: slog.Default(), m: newMetrics(mgr.Name())},
	}
	if files.cert != nil {
		s.cert.Store(files.cert)
		// The certificate is looked up at each handshake, so Reload can replace it.
		s.core.cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cert.Load(), nil }}
	}
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("pool", mgr.Name())
	s.maint.init(mgr.Name())
	s.stmts.analysis = &s.analysis
	s.pinLog = &logThrottle{log: s.log, msg: "Proxy session pinned to its server connection", interval: cfg.AuthFailureLogInterval}
	s.auth = authenticator{core: &s.core,
		log: &logThrottle{log: s.log, msg: "Proxy authentication failed", interval: cfg.AuthFailureLogInterval}}
	s.evictLog = &logThrottle{log: s.log, msg: "Proxy closed the oldest connection still in startup: --proxy.max-startup-connections reached",
		interval: cfg.AuthFailureLogInterval}
	s.oversizeLog = &logThrottle{log: s.log, msg: "Proxy closed a client that sent a message over --proxy.max-message-size",
		interval: cfg.AuthFailureLogInterval}
	s.idleTxLog = &logThrottle{log: s.log, msg: "Proxy closed a client idle in a transaction for --proxy.idle-transaction-timeout",
		interval: cfg.AuthFailureLogInterval}
	creds, err := s.credentials(cfg.Users, nil)
	if err != nil {
		return nil, err
	}
	s.auth.creds.Store(creds)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.txSet = &serverSet{core: &s.core}
	s.table = newClientTable(&s.core.cfg)
	s.gate = gate{core: &s.core, set: s.txSet, auth: &s.auth, table: s.table, tlsMode: cfg.tlsMode(), database: mgr.Database()}
	if s.reg != nil {
		for i, c := range s.collectors() {
			if err := s.reg.Register(c); err != nil {
				for _, done := range s.collectors()[:i] {
					s.reg.Unregister(done)
				}
				return nil, fmt.Errorf("proxy: registering metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Start listens on every configured address and serves clients in the background. On error no
// listener is left open.
func (s *Server) Start() error {
	var ls []net.Listener
	for _, addr := range s.cfg.Listen {
		l, err := listenOn(addr)
		if err != nil {
			for _, l := range ls {
				_ = l.Close()
			}
			return fmt.Errorf("proxy: listen on %s: %w", addr, err)
		}
		ls = append(ls, l)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, ls...)
	s.mu.Unlock()
	for i, l := range ls {
		s.log.Info("Proxy listening", "address", l.Addr().String(), "pool_mode", string(s.cfg.PoolMode), "auth", string(s.cfg.Auth), "tls", s.cfg.TLS != nil && s.tlsMode != TLSDisable, "tls_mode", string(s.tlsMode))
		if a, ok := l.Addr().(*net.TCPAddr); ok && s.cfg.Auth == AuthTrust && !a.IP.IsLoopback() {
			// Clients from elsewhere are refused, but the address says the operator expects them.
			s.log.Warn("Proxy trust authentication on a non-loopback address", "address", s.cfg.Listen[i],
				"flag", "--proxy.auth-method=trust", "effect", "only loopback and unix socket clients can log in; others get 28000")
		}
		s.wg.Add(1)
		go s.serve(l)
	}
	return nil
}

// listenOn opens a TCP listener, or a unix socket for an absolute path (replacing a stale socket
// file left by a crashed process).
func listenOn(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, "/") {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", addr); err == nil {
			_ = c.Close()
			return nil, errors.New("another process is listening on this socket")
		}
		_ = os.Remove(addr)
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		return nil, err
	}
	// Like PostgreSQL's default unix_socket_permissions: authentication guards access.
	_ = os.Chmod(addr, 0o777)
	return l, nil
}

// Addrs returns the addresses the server listens on (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

func (s *Server) serve(l net.Listener) {
	defer s.wg.Done()
	var failures int
	for {
		c, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and go on accepting, as net/http does;
			// giving up would leave clients hanging in the listen backlog.
			failures++
			delay := backoff.Delay(failures, 5*time.Millisecond, time.Second)
			if failures == 1 || failures%100 == 0 {
				s.log.Error("Proxy accept failed", "address", l.Addr().String(), "error", err.Error(), "retry_in", delay)
			}
			t := time.NewTimer(delay)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		failures = 0
		ok, evicted := s.table.track(c)
		if !ok {
			_ = c.Close()
			return
		}
		if evicted != nil {
			// Its handler reads the end of the connection and ends; untrack closes and forgets it.
			hangUp(evicted)
			s.evictLog.event("max", s.cfg.maxStartup())
		}
		s.wg.Add(1)
		go func() {
			session := s.handle(c)
			if session == nil {
				s.table.untrack(c)
				s.wg.Done()
				return
			}
			// The session goes on in a fresh goroutine: this one's stack grew in the login
			// (SCRAM, TLS), and an idle client would keep it.
			go session(func() {
				s.table.untrack(c)
				s.wg.Done()
			})
		}()
	}
}

// Close stops listening, disconnects every client (their server connections are reset or
// discarded) and waits for the sessions to end. It unregisters the metrics.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	for _, l := range s.listeners {
		_ = l.Close()
	}
	parked := s.watch.close() // deregistered before their connections close
	s.table.close()
	for _, cl := range parked {
		cl.resume()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.txSet.close()
	s.auth.log.stop()
	s.evictLog.stop()
	s.pinLog.stop()
	s.oversizeLog.stop()
	s.idleTxLog.stop()
	if s.reg != nil {
		for _, c := range s.collectors() {
			s.reg.Unregister(c)
		}
	}
	return nil
}
