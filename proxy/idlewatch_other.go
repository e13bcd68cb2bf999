//go:build !linux

package proxy

// watchSupported: without epoll, idle clients keep their goroutine.
const watchSupported = false

// idleWatcher takes no clients on this platform.
type idleWatcher struct{}

func (w *idleWatcher) park(*client) bool { return false }
func (w *idleWatcher) wakeAll()          {}
func (w *idleWatcher) close() []*client  { return nil }
func (w *idleWatcher) parkedCount() int  { return 0 }
