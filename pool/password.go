package pool

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ReloadPassword makes the connections the pool opens from now on (its own, and those of its
// monitor pools) log in with the password databaseURL gives now: the one in the URL, else
// PGPASSWORD, else the password file (passfile, PGPASSFILE or ~/.pgpass), read again. It is
// how a rotated password reaches the pool without a restart. Connections already open keep
// their session; replace them (pgxpool's Reset, or a front end's reconnect) to move them over.
//
// databaseURL must name the same server, port, database, user and connection parameters as
// the DATABASE_URL the pool was built with; anything else changes what the pool connects to
// and needs a new Manager, so ReloadPassword refuses it and keeps the old password. changed
// reports whether the password differs from the one in use. Errors never hold a password.
func (m *Manager) ReloadPassword(databaseURL string) (changed bool, err error) {
	cfg := m.cfg
	cfg.DatabaseURL = databaseURL
	pc, err := cfg.pgxConfig()
	if err != nil {
		return false, m.scrubbed(err)
	}
	if err := sameTarget(m.pool.Config(), pc); err != nil {
		return false, m.scrubbed(err)
	}
	m.scrub.AddPassword(pc.ConnConfig.Password)
	m.passwordMu.Lock()
	defer m.passwordMu.Unlock()
	if pc.ConnConfig.Password == m.currentPassword() {
		return false, nil
	}
	m.password.Store(&pc.ConnConfig.Password)
	return true, nil
}

// currentPassword is the password new connections log in with.
func (m *Manager) currentPassword() string {
	if p := m.password.Load(); p != nil {
		return *p
	}
	return m.pool.Config().ConnConfig.Password
}

// usePassword sets pc's BeforeConnect so that each new connection logs in with the password
// ReloadPassword last took; until it is called, the password pc was parsed with.
func (m *Manager) usePassword(pc *pgxpool.Config) {
	next := pc.BeforeConnect
	pc.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		if p := m.password.Load(); p != nil {
			cc.Password = *p
		}
		if next != nil {
			return next(ctx, cc)
		}
		return nil
	}
}

// sameTarget refuses a new configuration that connects anywhere else, or otherwise than the
// pool does: only the password may change on a reload.
func sameTarget(was, now *pgxpool.Config) error {
	a, b := was.ConnConfig, now.ConnConfig
	var diff []string
	if a.Host != b.Host || a.Port != b.Port || len(a.Fallbacks) != len(b.Fallbacks) {
		diff = append(diff, "host or port")
	} else {
		for i := range a.Fallbacks {
			if a.Fallbacks[i].Host != b.Fallbacks[i].Host || a.Fallbacks[i].Port != b.Fallbacks[i].Port {
				diff = append(diff, "host or port")
				break
			}
		}
	}
	if a.Database != b.Database {
		diff = append(diff, "database")
	}
	if a.User != b.User {
		diff = append(diff, "user")
	}
	if !maps.Equal(a.RuntimeParams, b.RuntimeParams) {
		diff = append(diff, "run-time parameters")
	}
	if (a.TLSConfig == nil) != (b.TLSConfig == nil) {
		diff = append(diff, "sslmode")
	}
	if len(diff) == 0 {
		return nil
	}
	return fmt.Errorf("DATABASE_URL now names another %s; only the password can change without a restart",
		strings.Join(slices.Compact(diff), ", "))
}
