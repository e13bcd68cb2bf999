package proxy

import (
	"bufio"
	"container/list"
	"context"
	"sync"
	"time"
)

// serverSet is the proxy's own server connections. Each one is a connection borrowed from
// the pool manager (Manager.Acquire, bounded by DB_CONNECTION_TIMEOUT) and kept for as long as
// the proxy uses it, so:
//   - proxied and library traffic together never exceed DB_MAX_CONNECTIONS;
//   - library traffic never runs on a connection carrying clients' prepared statements or
//     settings, and pgx's statement cache never runs on one the proxy tracks;
//   - a checkout from the set is a list pop with no ping round trip (pgxpool pings a connection
//     idle for over a second when it hands it out; the set goes to the pool only to grow).
//
// A connection idle in the set for DB_IDLE_TIMEOUT, or older than DB_MAX_LIFETIME when it comes
// back, is reset (DISCARD ALL) and given back to the pool.
type serverSet struct {
	core *core

	mu      sync.Mutex
	idle    []*srvConn // most recently used last
	total   int        // connections borrowed, or being borrowed, from the pool
	waiters list.List  // of *setWaiter, oldest first
	closed  bool
	wg      sync.WaitGroup // one per borrowed connection
	// reported: the ParameterStatus values of the last connection opened, before any client
	// changed them, for the logins of clients that find no connection free.
	reported map[string]string
}

type setWaiter struct{ ch chan *srvConn }

// Which server-connections gauge counts a connection (srvConn.counted).
const (
	uncounted = iota
	countedActive
	countedIdle
)

// count moves c to the gauge of state: every path in or out of the set goes through it, so a
// connection is counted once, whichever path (giveBack, forget, retire) lets go of it. ss.mu is held.
func (ss *serverSet) count(c *srvConn, state byte) {
	m := ss.core.m
	switch c.counted {
	case countedActive:
		m.serverActive.Dec()
	case countedIdle:
		m.serverIdle.Dec()
	}
	c.counted = state
	switch state {
	case countedActive:
		m.serverActive.Inc()
	case countedIdle:
		m.serverIdle.Inc()
	}
}

// get checks out a server connection: an idle one, a new one borrowed from the pool (opening
// it is bounded by DB_CONNECTION_TIMEOUT), or the next one a client gives back, waiting at most
// --proxy.query-wait-timeout. Then 53300, which the client gets in-band.
func (ss *serverSet) get() (*srvConn, error) {
	s := ss.core
	start := time.Now()
	defer func() { s.m.wait.Observe(time.Since(start).Seconds()) }()
	wait := s.queryWaitTimeout()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		ss.mu.Lock()
		c, err := ss.takeLocked()
		if c != nil || err != nil {
			return c, err
		}
		w := &setWaiter{ch: make(chan *srvConn, 1)}
		el := ss.waiters.PushBack(w)
		ss.mu.Unlock()
		select {
		case c := <-w.ch:
			if c != nil {
				return c, nil
			}
			continue // a connection went: there is room for a new one
		case <-t.C:
		case <-s.ctx.Done():
		}
		ss.mu.Lock()
		select {
		case c := <-w.ch:
			ss.mu.Unlock()
			if c != nil {
				return c, nil
			}
		default:
			ss.waiters.Remove(el)
			ss.mu.Unlock()
		}
		break
	}
	if s.ctx.Err() != nil {
		return nil, reject("57P01", "the proxy is shutting down")
	}
	s.m.waitTimeouts.Inc()
	setting := "--proxy.query-wait-timeout"
	if s.cfg.QueryWaitTimeout <= 0 {
		setting = "DB_CONNECTION_TIMEOUT (--proxy.query-wait-timeout=auto)"
	}
	timedOut := reject("53300", "no server connection available within %s (%s): all %d pool connections are in use",
		setting, wait, s.mgr.Config().MaxConns)
	timedOut.inBand = true
	return nil, timedOut
}

// take checks out an idle connection, or a new one when the set has room, without waiting for
// one a client gives back: nil when every connection is in use.
func (ss *serverSet) take() (*srvConn, error) {
	ss.mu.Lock()
	c, err := ss.takeLocked()
	if c == nil && err == nil {
		ss.mu.Unlock()
	}
	return c, err
}

// takeLocked is take with ss.mu held, which it unlocks unless it returns nil, nil.
func (ss *serverSet) takeLocked() (*srvConn, error) {
	s := ss.core
	if ss.closed {
		ss.mu.Unlock()
		return nil, reject("57P01", "the proxy is shutting down")
	}
	ss.retireExpired()
	if n := len(ss.idle); n > 0 {
		c := ss.idle[n-1]
		ss.idle = ss.idle[:n-1]
		ss.count(c, countedActive)
		ss.mu.Unlock()
		return c, nil
	}
	if ss.total >= int(s.mgr.Config().MaxConns) {
		return nil, nil
	}
	ss.total++
	ss.mu.Unlock()
	c, err := ss.open()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err != nil {
		ss.total--
		return nil, err
	}
	ss.count(c, countedActive)
	return c, nil
}

// reportedParams returns a copy of the server's ParameterStatus values, nil before the set
// opened its first connection.
func (ss *serverSet) reportedParams() map[string]string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.reported == nil {
		return nil
	}
	return clone(ss.reported)
}

// open borrows a connection from the pool for the set and starts reading it.
func (ss *serverSet) open() (*srvConn, error) {
	pooled, err := ss.core.acquireLive()
	if err != nil {
		return nil, err
	}
	pc := pooled.Conn().PgConn()
	c := &srvConn{core: ss.core, home: ss, pooled: pooled, pc: pc, net: pc.Conn(), born: time.Now(), status: 'I',
		params: map[string]string{}, reported: map[string]string{}, exited: make(chan struct{})}
	if c.fr = newFDReader(c.net); c.fr != nil {
		c.sr = bufio.NewReaderSize(c.fr, ioBufSize)
	} else {
		c.sr = bufio.NewReaderSize(c.net, ioBufSize)
	}
	for _, name := range reportedParams {
		if v := pc.ParameterStatus(name); v != "" {
			c.reported[name] = v
		}
	}
	ss.mu.Lock()
	ss.reported = clone(c.reported)
	ss.mu.Unlock()
	ss.wg.Add(1)
	go c.readLoop()
	return c, nil
}

// giveBack takes back a connection no client holds and that is clean: to the longest waiting
// client, or to the idle list.
func (ss *serverSet) giveBack(c *srvConn) {
	s := ss.core
	_ = c.net.SetDeadline(time.Time{})
	ss.mu.Lock()
	// In session mode a connection no client waits for goes back to the pool at once, as a
	// session's always did: library traffic on the same pool may need it, and sessions are
	// long, so the set's checkout without a ping saves little.
	if ss.closed || time.Since(c.born) > s.mgr.Config().MaxLifetime || s.maint.replaced(c) || s.cfg.PoolMode == PoolSession && ss.waiters.Len() == 0 {
		ss.shrunk()
		ss.count(c, uncounted)
		c.gone = true
		ss.mu.Unlock()
		go ss.retire(c)
		return
	}
	if e := ss.waiters.Front(); e != nil {
		ss.waiters.Remove(e)
		e.Value.(*setWaiter).ch <- c
		ss.mu.Unlock()
		return
	}
	c.idleSince = time.Now()
	ss.idle = append(ss.idle, c)
	ss.count(c, countedIdle)
	ss.mu.Unlock()
}

// shrunk is called, ss.mu held, when the set holds one connection fewer: the longest waiting
// client is woken (with no connection) to open a new one, rather than wait for a connection
// that no client will give back.
func (ss *serverSet) shrunk() {
	ss.total--
	if e := ss.waiters.Front(); e != nil {
		ss.waiters.Remove(e)
		e.Value.(*setWaiter).ch <- nil
	}
}

// forget forgets a connection that failed, held by a client or not (one whose client left is
// still active until it is clean); it is closed, and the pool discards it. Called by its
// readLoop once that has left its read.
func (ss *serverSet) forget(c *srvConn) {
	ss.mu.Lock()
	if c.gone {
		// Being retired: retire sees the connection broken and closes it.
		ss.mu.Unlock()
		return
	}
	c.gone = true
	for i, x := range ss.idle {
		if x == c {
			ss.idle = append(ss.idle[:i], ss.idle[i+1:]...)
			break
		}
	}
	ss.shrunk()
	ss.count(c, uncounted)
	ss.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = c.pooled.Conn().Close(ctx)
	cancel()
	c.pooled.Release()
	ss.wg.Done()
}

// retireExpired gives back connections idle for longer than DB_IDLE_TIMEOUT. ss.mu is held.
func (ss *serverSet) retireExpired() {
	idleTimeout := ss.core.mgr.Config().IdleTimeout
	for len(ss.idle) > 0 && idleTimeout > 0 && time.Since(ss.idle[0].idleSince) > idleTimeout {
		c := ss.idle[0]
		ss.idle = ss.idle[1:]
		ss.total--
		ss.count(c, uncounted)
		c.gone = true
		go ss.retire(c)
	}
}

// retire stops reading c, resets it and gives it back to the pool (closed if the reset fails).
func (ss *serverSet) retire(c *srvConn) {
	defer ss.wg.Done()
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	_ = c.net.SetReadDeadline(time.Now())
	<-c.exited
	_ = c.net.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), ss.core.cfg.ResetTimeout)
	defer cancel()
	ok := !c.broken && c.sr.Buffered() == 0
	if ok && !c.reset {
		_, err := c.pc.Exec(ctx, "DISCARD ALL").ReadAll()
		ok = err == nil && c.pc.TxStatus() == 'I'
	}
	if !ok {
		_ = c.pooled.Conn().Close(ctx)
	}
	c.pooled.Release()
}

// takeIdle takes the idle connections out of the set, uncounted, for the caller to close or
// give back; ss.mu is held.
func (ss *serverSet) takeIdle() []*srvConn {
	idle := ss.idle
	ss.idle = nil
	ss.total -= len(idle)
	for _, c := range idle {
		ss.count(c, uncounted)
		c.gone = true
	}
	return idle
}

// close gives every connection back to the pool once clients have let go of them.
func (ss *serverSet) close() {
	ss.mu.Lock()
	ss.closed = true
	idle := ss.takeIdle()
	ss.mu.Unlock()
	for _, c := range idle {
		go ss.retire(c)
	}
	ss.wg.Wait()
}
