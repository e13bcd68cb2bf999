package collector

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The election of --collector.scope=auto: every sidecar keeps one session of its own in a
// fixed database and polls pg_try_advisory_lock on it; the sidecar whose session holds the lock
// runs the server-wide collectors. Try-lock polling leaves no blocked waiter in pg_locks, and a
// lock dies with its session, so a killed leader's lock is free as soon as the server notices
// the closed socket, and the next poll of another sidecar takes it.
//
// A leader that stops polling (SIGSTOP, a partition) is bounded three ways: its session's
// idle_session_timeout (the lease, leaseIntervals polls) makes the server end it and free the
// lock; server- and client-side TCP keepalives and tcp_user_timeout end a session whose peer is
// gone; and the leader itself counts as leader only until a lease less one interval after its
// last successful poll began, so it stops exporting before the server can hand the lock on.

// electionApplicationName names the election sessions in pg_stat_activity.
const electionApplicationName = "pgsidecar-election"

// election is one sidecar's side of the collector election.
type election struct {
	connCfg  *pgx.ConnConfig // the collectors' connection settings, in the election database
	interval time.Duration
	hash     func() string // the server-wide configuration's hash, part of the lock key
	log      *slog.Logger
	scrub    func(error) error
	// onConnect runs on the first session that reaches the server (the start-up budget check).
	onConnect func(ctx context.Context, c *pgx.Conn)
	// onResign runs when this sidecar stops leading.
	onResign func()

	mu          sync.Mutex
	leaderUntil time.Time // this sidecar leads until then, unless a poll renews it
	holding     bool      // the session took the lock (its lease may have run out since)
	fallback    string    // why the election was given up for scope all; "" while it runs
	lastErr     string    // the last connection error logged

	first     chan struct{} // closed once the first poll (or connection attempt) has an outcome
	firstOnce sync.Once
	connected sync.Once
	changes   atomic.Int64 // times this sidecar became leader
}

func newElection(connCfg *pgx.ConnConfig, db string, interval time.Duration, hash func() string, log *slog.Logger,
	scrub func(error) error) *election {
	cfg := connCfg.Copy()
	cfg.Database = db
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = electionApplicationName
	cfg.ConnectTimeout = max(2*interval, 5*time.Second)
	// Client-side keepalives end a session whose server went away unseen (a partition) within
	// a few intervals, instead of the system default of two hours.
	dialer := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: interval, Interval: interval, Count: 3}}
	cfg.DialFunc = dialer.DialContext
	return &election{connCfg: cfg, interval: interval, hash: hash, log: log, scrub: scrub, first: make(chan struct{})}
}

// lease is how long a session may stay idle before the server ends it (idle_session_timeout).
func (el *election) lease() time.Duration { return leaseIntervals * el.interval }

// leading reports whether this sidecar runs the server-wide collectors: it holds the lock and
// has renewed it recently, or the election was given up.
func (el *election) leading() bool {
	el.mu.Lock()
	defer el.mu.Unlock()
	return el.fallback != "" || time.Now().Before(el.leaderUntil)
}

// fellBack reports why the election was given up ("" while it runs).
func (el *election) fellBack() string {
	el.mu.Lock()
	defer el.mu.Unlock()
	return el.fallback
}

// awaitFirst waits, at most until ctx ends or for one polling interval, for the first poll's
// outcome, so that the first scrapes after start-up already come from the leader.
func (el *election) awaitFirst(ctx context.Context) {
	t := time.NewTimer(el.interval)
	defer t.Stop()
	select {
	case <-el.first:
	case <-ctx.Done():
	case <-t.C:
	}
}

func (el *election) markFirst() { el.firstOnce.Do(func() { close(el.first) }) }

// run takes part in the election until ctx ends.
func (el *election) run(ctx context.Context) {
	defer el.markFirst()
	for ctx.Err() == nil {
		conn, err := el.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if unusableDatabase(err) {
				el.giveUp(fmt.Sprintf("cannot use the election database %q: %s", el.connCfg.Database, el.scrub(err)))
				return
			}
			el.noteErr(err)
			el.markFirst()
			sleepCtx(ctx, el.interval)
			continue
		}
		el.connected.Do(func() {
			if el.onConnect != nil {
				el.onConnect(ctx, conn)
			}
		})
		err = el.hold(ctx, conn)
		el.resign(err)
		closeConn(conn)
		if el.fellBack() != "" || ctx.Err() != nil {
			return
		}
		sleepCtx(ctx, el.interval)
	}
}

// connect opens the election session and bounds its life: a statement may take one interval,
// and the server ends the session after a lease without a poll, or when its peer stops
// acknowledging (keepalives, tcp_user_timeout; both ignored on Unix sockets).
func (el *election) connect(ctx context.Context) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, el.connCfg)
	if err != nil {
		return nil, err
	}
	secs := strconv.Itoa(max(int(el.interval.Round(time.Second)/time.Second), 1))
	sets := []string{
		"SET statement_timeout = " + strconv.FormatInt(el.interval.Milliseconds(), 10),
		"SET tcp_keepalives_idle = " + secs,
		"SET tcp_keepalives_interval = " + secs,
		"SET tcp_keepalives_count = 3",
		"SET tcp_user_timeout = " + strconv.FormatInt(el.lease().Milliseconds(), 10),
	}
	major, _, _ := strings.Cut(c.PgConn().ParameterStatus("server_version"), ".")
	if v, _ := strconv.Atoi(major); v >= 14 {
		sets = append(sets, "SET idle_session_timeout = "+strconv.FormatInt(el.lease().Milliseconds(), 10))
	} else {
		el.log.Warn("The server has no idle_session_timeout (PostgreSQL 14): a stopped leader keeps the collector lock until TCP keepalives end its session")
	}
	for _, s := range sets {
		if _, err := c.Exec(ctx, s); err != nil {
			closeConn(c)
			return nil, err
		}
	}
	return c, nil
}

// lockKey is the advisory lock's key for this server and configuration. Advisory locks belong
// to one server instance already; the system identifier and the recovery state still go in,
// so that sidecars of a primary and of its standbys never mistake one another's lock through
// a proxy that routes both, and the configuration hash keeps differently configured sidecars
// from sharing a leader silently.
func (el *election) lockKey(ctx context.Context, c *pgx.Conn) (int64, error) {
	var ident string
	var standby bool
	// pg_control_system() may be refused to roles without pg_monitor-like rights; the key then
	// lacks the identifier, which locks on one instance do not need anyway.
	err := c.QueryRow(ctx, "SELECT coalesce((SELECT system_identifier::text FROM pg_control_system()), ''), pg_is_in_recovery()").
		Scan(&ident, &standby)
	if err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			return 0, err
		}
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
			return 0, err
		}
	}
	sum := sha256.Sum256([]byte(ident + "\x00" + strconv.FormatBool(standby) + "\x00" + el.hash()))
	// Non-negative, so that pg_locks' classid and objid are its high and low halves as is.
	return int64(binary.BigEndian.Uint64(sum[:8]) >> 1), nil
}

const (
	tryLockQuery = `SELECT pg_try_advisory_lock($1), pg_backend_pid()`
	// heldQuery renews a leader's lease without stacking the lock, and checks it is still held
	// by this very backend: behind a pooler that resets or swaps server sessions it is not.
	heldQuery = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
  AND pid = pg_backend_pid() AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid
  AND objsubid = 1), pg_backend_pid()`
)

// hold polls the lock on c until the session fails, ctx ends, the configuration changes (a new
// key) or a pooler is found in between.
func (el *election) hold(ctx context.Context, c *pgx.Conn) error {
	hash := el.hash()
	key, err := el.lockKey(ctx, c)
	if err != nil {
		return err
	}
	var pid uint32
	held := false
	t := time.NewTicker(el.interval)
	defer t.Stop()
	for {
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, el.interval)
		var got bool
		var backend uint32
		q := tryLockQuery
		if held {
			q = heldQuery
		}
		err := c.QueryRow(qctx, q, key).Scan(&got, &backend)
		cancel()
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "0A000" {
			el.giveUp("a pooler in between refuses session advisory locks: " + pe.Message)
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case pid != 0 && backend != pid:
			el.giveUp("the election session moved to another server backend: a transaction-mode pooler is in between, on which a session lock cannot work")
			return nil
		case held && !got:
			el.giveUp("the collector lock vanished while its session stayed: a pooler is in between that resets server sessions")
			return nil
		}
		pid = backend
		el.mu.Lock()
		el.lastErr = ""
		if got {
			el.leaderUntil = start.Add(el.lease() - el.interval)
			el.holding = true
		}
		el.mu.Unlock()
		if got {
			if !held {
				held = true
				el.changes.Add(1)
				el.log.Info("This sidecar now runs the server-wide collectors (collector leader)", "database", el.connCfg.Database)
			}
		}
		el.markFirst()
		if el.hash() != hash {
			el.log.Info("The server-wide configuration changed: taking part in the election under its new key")
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// resign ends this sidecar's leadership when its session ends.
func (el *election) resign(err error) {
	el.mu.Lock()
	// A leader whose lease ran out while it was stopped resigns too.
	was := el.holding
	el.leaderUntil, el.holding = time.Time{}, false
	el.mu.Unlock()
	if err != nil {
		el.noteErr(err)
	}
	if was {
		el.log.Info("This sidecar no longer runs the server-wide collectors: its election session ended")
		if el.onResign != nil {
			el.onResign()
		}
	}
}

// giveUp stops the election for good: this sidecar then runs every collector, as with
// --collector.scope=all, which may duplicate series but loses none.
func (el *election) giveUp(reason string) {
	el.mu.Lock()
	el.fallback = reason
	el.mu.Unlock()
	el.markFirst()
	el.log.Warn("Collector election given up: this sidecar runs the server-wide collectors as with --collector.scope=all", "reason", reason)
}

// noteErr logs a connection error of the election once, not on every retry.
func (el *election) noteErr(err error) {
	msg := el.scrub(err).Error()
	el.mu.Lock()
	same := msg == el.lastErr
	el.lastErr = msg
	el.mu.Unlock()
	if !same {
		el.log.Warn("Collector election session failed; no leader from this sidecar until it reconnects", "error", msg)
	}
}

// unusableDatabase reports whether err says the election database does not exist or may not be
// connected to: retrying would not help.
func unusableDatabase(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "3D000" || pe.Code == "42501")
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
