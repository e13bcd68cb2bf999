//go:build linux

package proxy

import (
	"sync"
	"syscall"
)

// watchSupported: the watcher is built on epoll.
const watchSupported = true

// idleWatcher waits, in one goroutine blocked in epoll_wait on its own epoll instance, for the
// sockets of parked clients to become readable (or closed, or reset). Each socket is registered
// one-shot and deregistered before its client resumes, so a socket is never closed while
// registered. It starts with the first client that parks.
type idleWatcher struct {
	mu      sync.Mutex
	started bool
	closed  bool
	epfd    int
	stop    [2]int            // a pipe: a byte on it ends the watcher's goroutine
	parked  map[int32]*client // by socket
	done    chan struct{}     // closed when the goroutine ended
}

// park hands the client over to the watcher. It reports false when the watcher takes no more
// clients (Close, EndSessions) or cannot watch this one: the caller goes on serving it.
func (w *idleWatcher) park(cl *client) bool {
	if cl.fr == nil {
		return false // not a plain socket
	}
	fd := int32(-1)
	if cl.fr.rc.Control(func(s uintptr) { fd = int32(s) }) != nil || fd < 0 {
		return false // closed
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || cl.core.ending() || !w.start() {
		return false
	}
	if old := w.parked[fd]; old != nil {
		// Its socket was closed while parked, and the number reused: not done by the proxy,
		// which resumes a client before closing its connection. Let it find out.
		delete(w.parked, fd)
		old.resume()
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: fd}
	if err := syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		return false
	}
	w.parked[fd] = cl
	return true
}

// start starts the watcher's goroutine, unless it runs. w.mu is held.
func (w *idleWatcher) start() bool {
	if w.started {
		return true
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	if err := syscall.Pipe2(w.stop[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		return false
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(w.stop[0])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, w.stop[0], &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(w.stop[0])
		_ = syscall.Close(w.stop[1])
		return false
	}
	w.epfd, w.started = epfd, true
	w.parked = map[int32]*client{}
	w.done = make(chan struct{})
	go w.run()
	return true
}

// run resumes the clients whose sockets are ready, until the watcher stops.
func (w *idleWatcher) run() {
	defer close(w.done)
	events := make([]syscall.EpollEvent, 64)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			// Not expected (the descriptors are the watcher's own): take no more clients and
			// give back those parked, rather than leave them waiting.
			w.mu.Lock()
			w.closed = true
			cls := w.takeLocked()
			w.mu.Unlock()
			for _, cl := range cls {
				cl.resume()
			}
			return
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == w.stop[0] {
				return
			}
			w.mu.Lock()
			cl := w.parked[ev.Fd]
			if cl != nil {
				delete(w.parked, ev.Fd)
				_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(ev.Fd), nil)
			}
			w.mu.Unlock()
			if cl != nil {
				cl.resume()
			}
		}
	}
}

// takeLocked takes every parked client out of the watcher. w.mu is held.
func (w *idleWatcher) takeLocked() []*client {
	cls := make([]*client, 0, len(w.parked))
	for fd, cl := range w.parked {
		_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		cls = append(cls, cl)
	}
	clear(w.parked)
	return cls
}

// wakeAll resumes every parked client (EndSessions: each then sees that it must end).
func (w *idleWatcher) wakeAll() {
	w.mu.Lock()
	var cls []*client
	if w.started {
		cls = w.takeLocked()
	}
	w.mu.Unlock()
	for _, cl := range cls {
		cl.resume()
	}
}

// close takes no more clients, ends the watcher's goroutine and returns the clients that were
// parked, now deregistered: the caller resumes them once it has closed their connections.
func (w *idleWatcher) close() []*client {
	w.mu.Lock()
	w.closed = true
	if !w.started {
		w.mu.Unlock()
		return nil
	}
	cls := w.takeLocked()
	w.started = false
	w.mu.Unlock()
	_, _ = syscall.Write(w.stop[1], []byte{0})
	<-w.done
	_ = syscall.Close(w.epfd)
	_ = syscall.Close(w.stop[0])
	_ = syscall.Close(w.stop[1])
	return cls
}

// parkedCount is the number of clients parked.
func (w *idleWatcher) parkedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.parked)
}
