package proxy

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgauth"
)

// scramServer runs the server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) without
// channel binding, as PostgreSQL does over connections without TLS binding data.
type scramServer struct {
	v *scramVerifier
	// previous, when not nil, is a second verifier with v's salt and iteration count, which
	// the proof is checked against when v refuses it; usedPrevious reports that it matched.
	previous        *scramVerifier
	usedPrevious    bool
	clientFirstBare string
	serverFirst     string
	gs2Header       string
	nonce           string
}

// first handles client-first-message and returns server-first-message.
func (s *scramServer) first(msg string) (string, error) {
	// gs2-header: "n,," or "y,," (client supports binding, we don't offer it); "p=" is refused.
	var header string
	switch {
	case strings.HasPrefix(msg, "n,"), strings.HasPrefix(msg, "y,"):
		i := strings.IndexByte(msg[2:], ',')
		if i < 0 {
			return "", errors.New("malformed SCRAM client-first-message")
		}
		header = msg[:2+i+1]
	case strings.HasPrefix(msg, "p="):
		return "", errors.New("SCRAM channel binding is not supported by the proxy")
	default:
		return "", errors.New("malformed SCRAM client-first-message")
	}
	s.gs2Header = header
	s.clientFirstBare = msg[len(header):]
	var clientNonce string
	for _, attr := range strings.Split(s.clientFirstBare, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			clientNonce = v
		}
	}
	if clientNonce == "" {
		return "", errors.New("SCRAM client-first-message has no nonce")
	}
	raw := make([]byte, 18)
	_, _ = rand.Read(raw)
	s.nonce = clientNonce + base64.StdEncoding.EncodeToString(raw)
	s.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.v.salt), s.v.iterations)
	return s.serverFirst, nil
}

// final checks client-final-message and returns server-final-message.
func (s *scramServer) final(msg string) (string, error) {
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return "", errors.New("SCRAM client-final-message has no proof")
	}
	withoutProof := msg[:i]
	proof, err := base64.StdEncoding.DecodeString(msg[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return "", errors.New("malformed SCRAM proof")
	}
	var binding, nonce string
	for _, attr := range strings.Split(withoutProof, ",") {
		if v, ok := strings.CutPrefix(attr, "c="); ok {
			binding = v
		} else if v, ok := strings.CutPrefix(attr, "r="); ok {
			nonce = v
		}
	}
	if binding != base64.StdEncoding.EncodeToString([]byte(s.gs2Header)) || nonce != s.nonce {
		return "", errors.New("SCRAM channel binding or nonce mismatch")
	}
	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	v := s.v
	if !proves(v, proof, authMessage) {
		if s.previous == nil || !proves(s.previous, proof, authMessage) {
			return "", errWrongPassword
		}
		v, s.usedPrevious = s.previous, true
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(v.serverKey, authMessage)), nil
}

// proves reports whether a client's proof shows it knows the password of v.
func proves(v *scramVerifier, proof []byte, authMessage string) bool {
	clientSig := hmacSHA256(v.storedKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for j := range clientKey {
		clientKey[j] = proof[j] ^ clientSig[j]
	}
	stored := sha256.Sum256(clientKey)
	return subtle.ConstantTimeCompare(stored[:], v.storedKey) == 1
}

var errWrongPassword = errors.New("wrong password")

// authenticator checks clients' passwords against the proxy's credentials.
type authenticator struct {
	core  *core
	creds atomic.Pointer[credSet] // swapped whole by Reload
	log   *logThrottle            // of failures
}

// previousPasswordUsed logs and counts a login with the pool user's previous password, which
// the rotation window still accepts. Only a client that knows that password gets here, and
// only until the window ends, so each one is logged.
func (s *authenticator) previousPasswordUsed(cl *client, method AuthMethod, until time.Time) {
	s.core.m.previousPassword.Inc()
	s.core.log.Warn("Proxy client logged in with the previous server password; it is accepted until the rotation window ends",
		"user", cl.user, "client", cl.remote, "method", string(method), "accepted_until", until.UTC().Format(time.RFC3339))
}

// authenticate runs the configured method and sends AuthenticationOk.
func (s *authenticator) authenticate(cl *client, raw net.Conn) error {
	method := s.core.cfg.Auth
	fail := func(err error) error {
		s.core.m.authFailures.WithLabelValues(string(method)).Inc()
		if err != nil && !errors.Is(err, errWrongPassword) {
			s.log.event("user", cl.user, "client", cl.remote, "method", string(method), "error", err.Error())
		} else {
			s.log.event("user", cl.user, "client", cl.remote, "method", string(method))
		}
		return reject("28P01", "password authentication failed for user %q", cl.user)
	}
	set := s.creds.Load()
	cred, previous := set.lookup(cl.user, time.Now())
	switch {
	case method == AuthTrust:
		if !isLocal(raw) {
			s.core.m.authFailures.WithLabelValues(string(method)).Inc()
			return reject("28000", "trust authentication is only allowed on loopback and unix socket connections")
		}
	case method == AuthMD5 && (cred == nil || cred.md5 != ""):
		var salt [4]byte
		_, _ = rand.Read(salt[:])
		if err := cl.send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
			return err
		}
		body, err := cl.expectPassword()
		if err != nil {
			return err
		}
		if cred == nil {
			return fail(nil)
		}
		got := strings.TrimRight(string(body), "\x00")
		if subtle.ConstantTimeCompare([]byte(got), []byte(md5Response(cred.md5, salt))) != 1 {
			if previous == nil || previous.md5 == "" || subtle.ConstantTimeCompare([]byte(got), []byte(md5Response(previous.md5, salt))) != 1 {
				return fail(nil)
			}
			s.previousPasswordUsed(cl, method, set.previousUntil)
		}
	default:
		method = AuthSCRAM
		v, prev := (*scramVerifier)(nil), (*scramVerifier)(nil)
		if cred != nil {
			v = cred.scram
		}
		if previous != nil && sameSCRAMStart(v, previous.scram) {
			prev = previous.scram
		}
		if v == nil {
			// Unknown user (or no SCRAM secret): run the exchange against a random secret so the
			// reply does not tell which user names exist.
			v = &scramVerifier{salt: make([]byte, 16), iterations: pgauth.SCRAMIterations, storedKey: make([]byte, 32), serverKey: make([]byte, 32)}
			_, _ = rand.Read(v.salt)
			_, _ = rand.Read(v.storedKey)
		}
		usedPrevious, err := cl.scram(v, prev)
		if err != nil {
			if errors.As(err, new(*rejectError)) {
				return err
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return err
			}
			return fail(err)
		}
		if usedPrevious {
			s.previousPasswordUsed(cl, method, set.previousUntil)
		}
	}
	return cl.send(&pgproto3.AuthenticationOk{})
}

// scram runs a SCRAM-SHA-256 exchange against v and, when v refuses the proof, previous (nil,
// or a verifier with v's salt and iteration count). usedPrevious reports that previous matched.
func (cl *client) scram(v, previous *scramVerifier) (usedPrevious bool, err error) {
	if err := cl.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}); err != nil {
		return false, err
	}
	body, err := cl.expectPassword()
	if err != nil {
		return false, err
	}
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(body); err != nil {
		return false, reject("08P01", "malformed SASL initial response")
	}
	if init.AuthMechanism != "SCRAM-SHA-256" {
		return false, reject("28000", "SASL authentication mechanism %q is not supported", init.AuthMechanism)
	}
	ss := &scramServer{v: v, previous: previous}
	first, err := ss.first(string(init.Data))
	if err != nil {
		return false, err
	}
	if err := cl.send(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return false, err
	}
	body, err = cl.expectPassword()
	if err != nil {
		return false, err
	}
	final, err := ss.final(string(body))
	if err != nil {
		return false, err
	}
	return ss.usedPrevious, cl.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// send buffers one message for the client.
func (cl *client) send(m encoder) error {
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	cl.writeClient(b)
	return nil
}

// expectPassword flushes what was written and reads one PasswordMessage-type ('p') body.
func (cl *client) expectPassword() ([]byte, error) {
	cl.flushClient() // a failed write closes the connection: the read below fails
	var hdr [5]byte
	if _, err := io.ReadFull(cl.cr, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if hdr[0] != 'p' || n < 0 || n > 10000 {
		return nil, reject("08P01", "expected a password response, got message type %q", hdr[0])
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(cl.cr, body); err != nil {
		return nil, err
	}
	return body, nil
}

func isLocal(c net.Conn) bool {
	switch a := c.RemoteAddr().(type) {
	case *net.UnixAddr:
		return true
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	}
	return c.RemoteAddr() == nil
}
