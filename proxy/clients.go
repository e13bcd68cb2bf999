package proxy

import (
	"container/list"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"sync"
)

// clientTable is the proxy's client connections: those still in startup, oldest first (bounded
// by --proxy.max-startup-connections), those authenticated (bounded by
// --proxy.max-client-connections), and the logged-in clients by the cancel key they were given.
type clientTable struct {
	cfg *Config

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]*clientState
	starting *list.List         // connections still in startup, oldest first
	authed   int                // authenticated connections, bounded by MaxClients
	byKey    map[uint32]*client // by the cancel key's process ID the client was given
}

func newClientTable(cfg *Config) *clientTable {
	return &clientTable{cfg: cfg, conns: map[net.Conn]*clientState{}, starting: list.New(), byKey: map[uint32]*client{}}
}

// clientState is where a client connection is in its life: in startup (elem set) or
// authenticated (authed).
type clientState struct {
	elem   *list.Element // in clientTable.starting
	authed bool
}

// track records a new connection as in startup. When MaxStartup connections already are, it
// returns the oldest of them for the caller to close: a client that finishes its startup in
// time gets in however many connections sit idle in theirs, and an attacker must open
// connections faster than real clients authenticate to keep them out.
func (s *clientTable) track(c net.Conn) (ok bool, evicted net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, nil
	}
	if s.starting.Len() >= s.cfg.maxStartup() {
		evicted = s.starting.Remove(s.starting.Front()).(net.Conn)
		s.conns[evicted].elem = nil
	}
	s.conns[c] = &clientState{elem: s.starting.PushBack(c)}
	return true, evicted
}

// errEvicted ends the startup of a connection track closed to make room.
var errEvicted = errors.New("closed to make room for a newer connection in startup")

// authenticated moves c from startup to the authenticated clients, or refuses it with 53300
// when MaxClients are.
func (s *clientTable) authenticated(c net.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.conns[c]
	if st == nil || st.elem == nil {
		return errEvicted
	}
	s.starting.Remove(st.elem)
	st.elem = nil
	if s.authed >= s.cfg.MaxClients {
		return reject("53300", "sorry, too many clients already (the proxy serves at most %d)", s.cfg.MaxClients)
	}
	st.authed = true
	s.authed++
	return nil
}

func (s *clientTable) clientCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *clientTable) untrack(c net.Conn) {
	_ = c.Close()
	s.mu.Lock()
	if st := s.conns[c]; st != nil {
		if st.elem != nil {
			s.starting.Remove(st.elem)
		}
		if st.authed {
			s.authed--
		}
	}
	delete(s.conns, c)
	s.mu.Unlock()
}

// register gives a session a cancel key unique among live sessions.
func (s *clientTable) register(sess *client) {
	var b [8]byte
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if pid == 0 || s.byKey[pid] != nil {
			continue
		}
		sess.pid, sess.secret = pid, binary.BigEndian.Uint32(b[4:])
		s.byKey[pid] = sess
		return
	}
}

func (s *clientTable) unregister(sess *client) {
	s.mu.Lock()
	if s.byKey[sess.pid] == sess {
		delete(s.byKey, sess.pid)
	}
	s.mu.Unlock()
}

// lookup returns the logged-in client with the cancel key pid and secret, or nil.
func (s *clientTable) lookup(pid, secret uint32) *client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cl := s.byKey[pid]; cl != nil && cl.secret == secret {
		return cl
	}
	return nil
}

// close refuses new connections from now on, hangs up every one it has and interrupts the
// logged-in clients' server connections: a relay blocked on an unresponsive server would not
// notice its client leaving.
func (s *clientTable) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		hangUp(c) // its session ends, and closes it
	}
	for _, cl := range s.byKey {
		cl.interrupt()
	}
}
