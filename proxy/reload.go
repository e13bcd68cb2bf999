package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Reload reads again what may rotate under a running proxy: the users file, the TLS certificate
// and key, and, without users, the password of the pool's user (which the pool takes on with
// Manager.ReloadPassword, so call that first). What it reads applies to logins that start
// afterwards: sessions and logins in progress keep what they started with, and no connection is
// closed. A users file and a certificate read in one Reload apply together or not at all: on
// error both stay as they were (the pool user's credential, read from no file, still follows
// the pool). Errors name the file and never hold a secret.
//
// When the pool user's password changed and Config.PasswordRotationWindow is not 0, the
// previous one stays accepted for that long; each login with it is logged and counted.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	files, err := s.cfg.readFiles()
	if err != nil {
		if s.cfg.UsersFile == "" && len(s.cfg.Users) == 0 {
			// The pool user's credential comes from no file: it follows the pool's password
			// whatever became of the files.
			if creds, cerr := s.credentials(nil, s.auth.creds.Load()); cerr == nil {
				s.auth.creds.Store(creds)
			}
		}
		return err
	}
	users := s.cfg.Users
	if s.cfg.UsersFile != "" {
		users = files.users
	}
	creds, err := s.credentials(users, s.auth.creds.Load())
	if err != nil {
		return err
	}
	if files.cert != nil {
		s.cert.Store(files.cert)
	}
	s.auth.creds.Store(creds)
	s.log.Info("Proxy configuration reloaded", "users", len(creds.users), "users_file", s.cfg.UsersFile,
		"tls_cert_file", s.cfg.TLSCertFile)
	return nil
}

// credentials prepares the credentials for users (name → secret) or, with none, for the pool's
// user from the pool's password. cur, the set in use (nil at start), gives the pool user's
// salt, and becomes the previous credential when the password changed.
func (s *Server) credentials(users map[string]string, cur *credSet) (*credSet, error) {
	if len(users) > 0 {
		set := &credSet{users: make(map[string]*credential, len(users))}
		for name, secret := range users {
			c, err := parseSecret(name, secret)
			if err != nil {
				return nil, fmt.Errorf("proxy: user %q: %w", name, err)
			}
			set.users[name] = c
		}
		return set, nil
	}
	var was *credential
	if cur != nil && cur.poolUser != "" {
		was = cur.users[cur.poolUser]
	}
	own, err := s.poolCredential(was)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if own.SCRAM == "" && s.cfg.Auth != AuthTrust {
		return nil, errors.New("proxy: DATABASE_URL has no password to check clients against; give a users file or use trust authentication")
	}
	c := &credential{md5: own.MD5}
	if own.SCRAM != "" {
		if c.scram, err = parseSCRAMVerifier(own.SCRAM); err != nil {
			return nil, fmt.Errorf("proxy: user %q: %w", own.User, err)
		}
	}
	set := &credSet{users: map[string]*credential{own.User: c}, poolUser: own.User}
	switch {
	case was == nil:
	case was.md5 == c.md5:
		return cur, nil // the same password: keep the set, and its window if one runs
	case s.cfg.PasswordRotationWindow > 0:
		set.previous, set.previousUntil = was, time.Now().Add(s.cfg.PasswordRotationWindow)
		s.log.Info("Proxy clients' password follows the changed password of DATABASE_URL; the previous one stays accepted for the rotation window",
			"user", own.User, "window", s.cfg.PasswordRotationWindow, "accepted_until", set.previousUntil.UTC().Format(time.RFC3339))
	default:
		s.log.Info("Proxy clients' password follows the changed password of DATABASE_URL", "user", own.User)
	}
	return set, nil
}

// poolCredential derives the pool user's credential from the pool's password now, with the
// SCRAM salt of was when there is one, so the two can be checked in one exchange.
func (s *Server) poolCredential(was *credential) (pool.ClientCredential, error) {
	if was != nil && was.scram != nil {
		return s.mgr.ClientCredentialWithSalt(was.scram.salt)
	}
	return s.mgr.ClientCredential()
}
