package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgauth"
)

// scramVerifier is a SCRAM-SHA-256 secret as PostgreSQL stores it: the salt, the iteration count
// and the two derived keys. The password itself is not needed to verify a client.
type scramVerifier struct {
	salt       []byte
	iterations int
	storedKey  []byte
	serverKey  []byte
}

// newSCRAMVerifier derives a verifier from a password with a fresh random salt. It runs once per
// user when the proxy starts, so authentication costs no PBKDF2 per connection.
func newSCRAMVerifier(password string) (*scramVerifier, error) {
	s, err := pgauth.SCRAMVerifier(password)
	if err != nil {
		return nil, err
	}
	return parseSCRAMVerifier(s)
}

// parseSCRAMVerifier reads "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
func parseSCRAMVerifier(s string) (*scramVerifier, error) {
	bad := errors.New("malformed SCRAM-SHA-256 verifier")
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return nil, bad
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, bad
	}
	iter, salt64, ok1 := strings.Cut(params, ":")
	stored64, server64, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return nil, bad
	}
	v := &scramVerifier{}
	var err error
	if v.iterations, err = strconv.Atoi(iter); err != nil || v.iterations < 1 {
		return nil, bad
	}
	if v.salt, err = base64.StdEncoding.DecodeString(salt64); err != nil {
		return nil, bad
	}
	if v.storedKey, err = base64.StdEncoding.DecodeString(stored64); err != nil || len(v.storedKey) != sha256.Size {
		return nil, bad
	}
	if v.serverKey, err = base64.StdEncoding.DecodeString(server64); err != nil || len(v.serverKey) != sha256.Size {
		return nil, bad
	}
	return v, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// md5Response is what a client sends for md5 authentication given the stored md5 hash.
func md5Response(stored string, salt [4]byte) string {
	sum := md5.Sum(append([]byte(stored[3:]), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

// credential is what the proxy knows about a user's password, prepared once.
type credential struct {
	md5   string // "md5" + hex(md5(password + user)); empty if unknown
	scram *scramVerifier
}

func parseSecret(user, secret string) (*credential, error) {
	switch {
	case strings.HasPrefix(secret, "SCRAM-SHA-256$"):
		v, err := parseSCRAMVerifier(secret)
		if err != nil {
			return nil, err
		}
		return &credential{scram: v}, nil
	case len(secret) == 35 && strings.HasPrefix(secret, "md5") && isHex(secret[3:]):
		return &credential{md5: secret}, nil
	default:
		v, err := newSCRAMVerifier(secret)
		if err != nil {
			return nil, err
		}
		return &credential{md5: pgauth.MD5(secret, user), scram: v}, nil
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// credSet is the credentials logins are checked against. A reload swaps the whole set, and a
// login reads it once, so a login in progress finishes against the set it started with.
type credSet struct {
	users map[string]*credential // by user name
	// poolUser names the user whose credential was derived from the pool's password (no users
	// file); "" with a users file.
	poolUser string
	// previous is poolUser's credential from before the server password changed, accepted
	// until previousUntil. Its SCRAM verifier has the salt and iteration count of the current
	// one (or is nil), so one exchange can check a client against both.
	previous      *credential
	previousUntil time.Time
}

// lookup returns user's credential and, within the rotation window, the previous one.
func (cs *credSet) lookup(user string, now time.Time) (cur, previous *credential) {
	cur = cs.users[user]
	if cs.previous != nil && user == cs.poolUser && now.Before(cs.previousUntil) {
		previous = cs.previous
	}
	return cur, previous
}

// sameSCRAMStart reports whether two verifiers open a SCRAM exchange alike (salt and iteration
// count), so that the proof of one exchange can be checked against both.
func sameSCRAMStart(a, b *scramVerifier) bool {
	return a != nil && b != nil && a.iterations == b.iterations && bytes.Equal(a.salt, b.salt)
}
