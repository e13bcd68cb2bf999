// Package faultproxy is a small TCP relay for fault tests: it sits between a client and a
// server on loopback and can add latency, black-hole traffic (accept and read, forward nothing),
// reset every connection, or lose the reply to one request (CutReplyAfter), to show how the
// client behaves on a stalled or broken network.
package faultproxy

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does to traffic.
type Mode int32

// Modes.
const (
	Pass      Mode = iota // forward as is
	BlackHole             // swallow bytes in both directions; connections stay open
	Refuse                // reset new connections at once (existing ones are reset too)
)

// Proxy relays TCP connections from a loopback listener to a target address.
type Proxy struct {
	l       net.Listener
	target  string
	mode    atomic.Int32
	latency atomic.Int64 // added before forwarding each chunk, in nanoseconds

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	cutMu     sync.Mutex
	cutMarker []byte        // armed by CutReplyAfter; nil when not armed
	cutDone   chan struct{} // closed once the armed cut has happened
}

// CutReplyAfter arms a one-shot fault: the next chunk a client sends that contains marker is
// forwarded to the server as usual, but the first bytes the server sends back on that connection
// are dropped and the connection is reset on both sides (client and server). The request reached
// the server and was answered; the client never sees the answer. Other connections, and this
// one's traffic before the marker, are not affected; after the cut the proxy passes traffic
// again. The returned channel is closed once the cut has happened. Arming again replaces a cut
// that has not happened yet.
//
// The marker is looked for in each chunk read from the client, so it must arrive in one read:
// fine for a short query text sent at once on loopback.
func (p *Proxy) CutReplyAfter(marker []byte) <-chan struct{} {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	p.cutMarker = bytes.Clone(marker)
	p.cutDone = make(chan struct{})
	return p.cutDone
}

// takeCut disarms and returns the armed cut when chunk contains its marker, else nil.
func (p *Proxy) takeCut(chunk []byte) chan struct{} {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	if p.cutMarker == nil || !bytes.Contains(chunk, p.cutMarker) {
		return nil
	}
	done := p.cutDone
	p.cutMarker, p.cutDone = nil, nil
	return done
}

// link is one relayed connection: both ends, and the cut due on it once its request has gone
// to the server.
type link struct {
	client, server net.Conn
	cut            atomic.Pointer[chan struct{}]
}

// reset closes both ends abruptly (TCP RST where the OS allows).
func (l *link) reset() {
	for _, c := range []net.Conn{l.client, l.server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// Start listens on a free loopback port and relays to target.
func Start(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Port is the proxy's listening port.
func (p *Proxy) Port() int { return p.l.Addr().(*net.TCPAddr).Port }

// SetMode changes the behaviour for all connections, existing and new. Refuse resets the
// existing connections.
func (p *Proxy) SetMode(m Mode) {
	p.mode.Store(int32(m))
	if m == Refuse {
		p.resetAll()
	}
}

// SetLatency delays every forwarded chunk by d.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// resetAll closes every relayed connection abruptly (TCP RST where the OS allows).
func (p *Proxy) resetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// Close stops listening, closes all connections and waits for the relay goroutines.
func (p *Proxy) Close() error {
	err := p.l.Close()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.resetAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if Mode(p.mode.Load()) == Refuse {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.relay(c)
	}
}

// track adds or removes a relayed connection; after Close it closes new ones at once, so a
// connection accepted just before Close cannot keep Close waiting.
func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case add && p.closed:
		_ = c.Close()
	case add:
		p.conns[c] = struct{}{}
	default:
		delete(p.conns, c)
	}
}

func (p *Proxy) relay(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	l := &link{client: client, server: server}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, server, client) }()
	go func() { defer wg.Done(); p.pipe(l, client, server) }()
	wg.Wait()
	p.track(client, false)
	p.track(server, false)
}

// pipe copies src to dst chunk by chunk, applying the current mode and latency and a cut armed
// by CutReplyAfter; it closes both ends when either side ends so the other pipe stops too.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	toServer := src == l.client
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.latency.Load()); d > 0 {
				time.Sleep(d)
			}
			if Mode(p.mode.Load()) != BlackHole {
				if toServer {
					// Armed before the request goes on, so its reply cannot slip through.
					if done := p.takeCut(buf[:n]); done != nil {
						l.cut.Store(&done)
					}
				} else if done := l.cut.Load(); done != nil {
					l.reset() // the reply is dropped with the connection
					close(*done)
					return
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
