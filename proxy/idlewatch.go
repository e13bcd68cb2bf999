package proxy

import "time"

// Idle transaction-mode clients park: a client that has waited parkDelay for its next message,
// holding no server connection and no buffer, gives up its goroutine, and the Server's watcher
// (one goroutine waiting on the sockets of all parked clients) starts a fresh one when the
// client's socket becomes readable, or when something must end or interrupt the client
// (EndSessions, Close). A parked client then costs its heap only, not a goroutine's stack.
//
// At most one goroutine serves a client's requests at any time: a client is resumed only by
// whoever takes it out of the watcher's table (under the watcher's lock), and the goroutine that
// parked it touches it no more once it is in the table.

// parkDelay is how long a client waits for its next message before it parks. Parking costs two
// system calls (registering the socket with the watcher and deregistering it) and a goroutine
// start, which a client between transactions of a busy stream would pay on every transaction.
var parkDelay = time.Second

// serve runs the client's session from where it stands until it ends, or until the client parks
// (the watcher calls serve again in a fresh goroutine when it resumes the client).
func (cl *client) serve() {
	for {
		cl.loop()
		if !cl.parkNow {
			break
		}
		cl.parkNow = false
		if cl.core.watch.park(cl) {
			return // the watcher has the client: this goroutine may not touch it
		}
	}
	cl.end()
}

// mayPark reports whether the client could park at the end of the wait it is about to begin: a
// transaction-mode client with nothing buffered, on a plaintext socket (cl.fr: a TLS connection
// may hold decrypted bytes its socket no longer shows), while the proxy is not ending sessions.
// Whether it holds a server connection is seen at the end (canPark): its last request's answer
// may still be on its way when it begins to wait.
func (cl *client) mayPark() bool {
	return watchSupported && cl.fr != nil && !cl.whole && (cl.cr == nil || cl.cr.Buffered() == 0) &&
		!cl.core.ending()
}

// canPark reports whether the client, waiting, may give up its goroutine now: mayPark, and it
// holds no server connection (so it is not pinned: a pinned client keeps its connection) and no
// buffer, and no server connection's loss is being handled for it (which writes to the client
// and may close its connection).
func (cl *client) canPark() bool {
	if !cl.mayPark() || cl.sw != nil || cl.current() != nil || cl.losing.Load() {
		return false
	}
	cl.wmu.Lock()
	released := cl.cw == nil
	cl.wmu.Unlock()
	return released
}

// armPark sets the read deadline at which the waiting client parks, unless the
// idle-transaction deadline comes first. next calls it before it looks at EndSessions, whose
// deadline then wins.
func (cl *client) armPark() {
	if cl.parkArmed || !cl.mayPark() {
		return
	}
	at := time.Now().Add(parkDelay)
	if !cl.idleDeadline.IsZero() && cl.idleDeadline.Before(at) {
		return
	}
	cl.parkArmed = true
	_ = cl.conn.SetReadDeadline(at)
}

// disarmPark clears the park deadline once the wait is over.
func (cl *client) disarmPark() {
	if cl.parkArmed {
		cl.parkArmed = false
		_ = cl.conn.SetReadDeadline(time.Time{})
	}
}

// parkDue is called when the client's wait timed out with the park deadline armed. It reports
// whether the client parks: its goroutine then returns to serve, which parks it. Otherwise the
// client waits on, with its idle-transaction deadline if it has one (next arms the park
// deadline again).
func (cl *client) parkDue() bool {
	cl.parkArmed = false
	if cl.canPark() {
		// Holding no server connection, it is in no transaction.
		cl.idleDeadline = time.Time{}
		_ = cl.conn.SetReadDeadline(time.Time{})
		cl.parkNow = true
		return true
	}
	_ = cl.conn.SetReadDeadline(cl.idleDeadline)
	return false
}

// resume continues a client the watcher let go of, in a fresh goroutine.
func (cl *client) resume() { go cl.serve() }
