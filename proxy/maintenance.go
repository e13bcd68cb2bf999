package proxy

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Pause, resume and reconnect: the maintenance switch for a planned database restart or a
// failover (POST /api/proxy/pause, resume, reconnect).
//
// A paused proxy queues every client about to check out a server connection (client.checkout):
// new transactions wait, where a client already inside one goes on. Pause waits until no
// server connection is out, then closes the idle ones, so that a restart of PostgreSQL finds
// none of the proxy's. Resume lets the queue go. Reconnect replaces every server connection:
// the idle ones at once, the others when their client gives them back after its transaction
// (serverSet.giveBack asks replaced).
//
// In session mode a client holds its server connection from login to logout, so a pause waits
// for every session to end, and a reconnect replaces a session's connection at its logout.

// ErrPauseTimeout: clients stayed inside a transaction for the whole pause timeout; the proxy
// resumed. PauseResult.Holders names them.
var ErrPauseTimeout = errors.New("clients stayed inside a transaction for the whole pause timeout; the proxy resumed")

// ErrPauseUnderWay: another Pause is still waiting for clients.
var ErrPauseUnderWay = errors.New("a pause is already under way")

// ErrResumedWhilePausing: Resume was called while the Pause waited.
var ErrResumedWhilePausing = errors.New("resumed before the pause took effect")

// PauseResult is what Pause did.
type PauseResult struct {
	// Waited is how long the pause waited for clients to leave their transactions.
	Waited time.Duration
	// Queued is the number of clients waiting for the resume when Pause returned.
	Queued int
	// Holders are the clients still holding a server connection when the pause failed.
	Holders []Holder
}

// Holder is a client that held a server connection (inside a transaction, or pinned; in
// session mode, any logged-in client).
type Holder struct {
	User   string
	Client string // its address
	Pin    string // why it keeps its server connection, or ""
}

// ResumeResult is what Resume did.
type ResumeResult struct {
	WasPaused bool
	Paused    time.Duration // how long the pause lasted
	Released  int           // the queued clients let go
}

// ReconnectResult is what Reconnect did.
type ReconnectResult struct {
	Closed    int // idle server connections closed at once
	Replacing int // server connections in use, replaced after their current transaction
}

// maintenance is the proxy's pause state and reconnect generation.
type maintenance struct {
	mu      sync.Mutex
	paused  bool
	pausing bool          // a Pause waits for clients
	since   time.Time     // of the pause
	resumed chan struct{} // closed by Resume
	queued  map[*client]chan struct{}
	total   time.Duration // spent paused before since
	// replaceBefore (Unix nanoseconds): server connections opened before it are replaced once
	// no client holds them.
	replaceBefore atomic.Int64

	descPaused, descQueued, descSeconds *prometheus.Desc
}

func (m *maintenance) init(poolName string) {
	labels := prometheus.Labels{"pool": poolName}
	m.queued = map[*client]chan struct{}{}
	m.descPaused = prometheus.NewDesc("pgsidecar_proxy_paused",
		"1 while the proxy is paused (POST /api/proxy/pause): new transactions wait for the resume.", nil, labels)
	m.descQueued = prometheus.NewDesc("pgsidecar_proxy_paused_clients",
		"Clients waiting for the resume of a paused proxy.", nil, labels)
	m.descSeconds = prometheus.NewDesc("pgsidecar_proxy_paused_seconds_total",
		"Time the proxy spent paused.", nil, labels)
}

// Describe implements prometheus.Collector.
func (m *maintenance) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.descPaused
	ch <- m.descQueued
	ch <- m.descSeconds
}

// Collect implements prometheus.Collector.
func (m *maintenance) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	paused, queued, total := 0.0, len(m.queued), m.total
	if m.paused {
		paused = 1
		total += time.Since(m.since)
	}
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(m.descPaused, prometheus.GaugeValue, paused)
	ch <- prometheus.MustNewConstMetric(m.descQueued, prometheus.GaugeValue, float64(queued))
	ch <- prometheus.MustNewConstMetric(m.descSeconds, prometheus.CounterValue, total.Seconds())
}

// collectors are the proxy's metrics, the pause's included.
func (s *Server) collectors() []prometheus.Collector {
	return append(s.m.collectors(), &s.maint)
}

// Paused reports whether the proxy is paused (or a Pause is waiting for clients).
func (s *Server) Paused() bool {
	s.maint.mu.Lock()
	defer s.maint.mu.Unlock()
	return s.maint.paused
}

// pausePoll is how often Pause looks at the server connections in use.
const pausePoll = 10 * time.Millisecond

// Pause queues new transactions from now on, waits up to timeout until no client holds a
// server connection, and closes the idle ones. When the timeout (or ctx) ends first, it
// resumes and returns ErrPauseTimeout (or ctx's error) with the clients that held the pause
// up. Pausing a paused proxy does nothing.
func (s *Server) Pause(ctx context.Context, timeout time.Duration) (PauseResult, error) {
	m := &s.maint
	start := time.Now()
	m.mu.Lock()
	switch {
	case m.pausing:
		m.mu.Unlock()
		return PauseResult{}, ErrPauseUnderWay
	case m.paused:
		r := PauseResult{Queued: len(m.queued)}
		m.mu.Unlock()
		return r, nil
	}
	m.paused, m.pausing, m.since = true, true, start
	m.resumed = make(chan struct{})
	resumed := m.resumed
	m.mu.Unlock()
	s.log.Info("Proxy pausing: new transactions wait", "timeout", timeout)

	t := time.NewTimer(timeout)
	defer t.Stop()
	tick := time.NewTicker(pausePoll)
	defer tick.Stop()
	// Two looks in a row with nothing out: a checkout that began just before the pause has
	// had time to show.
	for quiet := 0; quiet < 2; {
		if s.txSet.busy() == 0 {
			quiet++
		} else {
			quiet = 0
		}
		var err error
		select {
		case <-tick.C:
			continue
		case <-resumed:
			return PauseResult{Waited: time.Since(start)}, ErrResumedWhilePausing
		case <-t.C:
			err = ErrPauseTimeout
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.ctx.Done():
			err = errors.New("the proxy is shutting down")
		}
		r := PauseResult{Waited: time.Since(start), Holders: s.holders()}
		s.Resume()
		s.log.Warn("Proxy pause failed: clients stayed inside a transaction; resumed", "waited", r.Waited.Round(time.Millisecond),
			"holders", len(r.Holders), "error", err.Error())
		return r, err
	}
	closed := s.txSet.dropIdle()
	m.mu.Lock()
	m.pausing = false
	r := PauseResult{Waited: time.Since(start), Queued: len(m.queued)}
	m.mu.Unlock()
	s.log.Info("Proxy paused", "waited", r.Waited.Round(time.Millisecond), "queued_clients", r.Queued, "server_connections_closed", closed)
	return r, nil
}

// Resume lets the clients queued by a pause go on, and ends a Pause still waiting.
func (s *Server) Resume() ResumeResult {
	m := &s.maint
	m.mu.Lock()
	if !m.paused {
		m.mu.Unlock()
		return ResumeResult{}
	}
	d := time.Since(m.since)
	m.paused, m.pausing = false, false
	m.total += d
	close(m.resumed)
	r := ResumeResult{WasPaused: true, Paused: d, Released: len(m.queued)}
	m.mu.Unlock()
	s.log.Info("Proxy resumed", "paused_for", d.Round(time.Millisecond), "queued_clients", r.Released)
	return r
}

// Reconnect replaces every server connection of the proxy, and of the pool, with a new one:
// the idle ones at once, those in use once their client gives them back after its current
// transaction (in session mode, at its logout). For a failover behind the same DNS name, or
// a server password that changed.
func (s *Server) Reconnect() ReconnectResult {
	// The pool's own connections first: those the set gives back from now on are closed by
	// the pool, not kept.
	s.mgr.Pool().Reset()
	s.maint.replaceBefore.Store(time.Now().UnixNano())
	r := ReconnectResult{Closed: s.txSet.dropIdle()}
	r.Replacing = s.txSet.busy()
	s.log.Info("Proxy reconnecting: server connections are replaced after their current transaction",
		"idle_closed", r.Closed, "in_use", r.Replacing)
	return r
}

// replaced reports whether c was opened before the last Reconnect, and so must not be reused.
func (m *maintenance) replaced(c *srvConn) bool {
	return c.born.UnixNano() < m.replaceBefore.Load()
}

// errPausedNoWait: the proxy is paused, and the checkout was not to wait.
var errPausedNoWait = errors.New("paused")

// pauseQueue makes a client about to check out a server connection wait while the proxy is
// paused. A checkout that is not to wait gets errPausedNoWait instead. A CancelRequest for
// the client (cancelQueued) ends its wait with 57014 in-band.
func (cl *client) pauseQueue(wait bool) error {
	m := &cl.core.maint
	for {
		m.mu.Lock()
		if !m.paused {
			m.mu.Unlock()
			return nil
		}
		if !wait {
			m.mu.Unlock()
			return errPausedNoWait
		}
		if cl.core.ending() {
			m.mu.Unlock()
			return reject("57P01", "terminating connection due to administrator command: the proxy is shutting down")
		}
		cancel := make(chan struct{})
		m.queued[cl] = cancel
		resumed := m.resumed
		m.mu.Unlock()
		var err *rejectError
		select {
		case <-resumed:
		case <-cancel:
			if cl.core.ending() {
				err = reject("57P01", "terminating connection due to administrator command: the proxy is shutting down")
				break
			}
			err = reject("57014", "canceling statement due to user request")
			err.inBand = true
		case <-cl.core.ctx.Done():
			err = reject("57P01", "the proxy is shutting down")
		}
		m.mu.Lock()
		if m.queued[cl] == cancel {
			delete(m.queued, cl)
		}
		m.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// cancelQueued ends the wait of a client queued by a pause. It reports whether the client was
// queued.
func (cl *client) cancelQueued() bool {
	m := &cl.core.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	cancel := m.queued[cl]
	if cancel == nil {
		return false
	}
	close(cancel)
	delete(m.queued, cl)
	return true
}

// endQueued ends the wait of every client a pause queued: EndSessions was called, and they
// get 57P01.
func (m *maintenance) endQueued() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for cl, cancel := range m.queued {
		close(cancel)
		delete(m.queued, cl)
	}
}

// holders lists the logged-in clients holding a server connection.
func (s *Server) holders() []Holder {
	s.table.mu.Lock()
	clients := make([]*client, 0, len(s.table.byKey))
	for _, cl := range s.table.byKey {
		clients = append(clients, cl)
	}
	s.table.mu.Unlock()
	var out []Holder
	for _, cl := range clients {
		c := cl.current()
		if c == nil {
			continue
		}
		c.mu.Lock()
		if c.holder == &cl.clientEnd {
			out = append(out, Holder{User: cl.user, Client: cl.remote, Pin: cl.pin})
		}
		c.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Client < out[j].Client })
	return out
}

// busy returns the number of server connections out of the idle list: held by clients, being
// opened, or settling after a client left.
func (ss *serverSet) busy() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.total - len(ss.idle)
}

// dropIdle closes the idle server connections (the pool discards them) and returns how many.
func (ss *serverSet) dropIdle() int {
	ss.mu.Lock()
	idle := ss.takeIdle()
	ss.mu.Unlock()
	for _, c := range idle {
		go ss.drop(c)
	}
	return len(idle)
}

// drop stops reading c and closes it.
func (ss *serverSet) drop(c *srvConn) {
	defer ss.wg.Done()
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	_ = c.net.SetReadDeadline(time.Now())
	<-c.exited
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = c.pooled.Conn().Close(ctx)
	cancel()
	c.pooled.Release()
}
