package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup packet codes.
const (
	protocol30    = 3 << 16
	sslRequest    = 80877103
	gssencRequest = 80877104
	cancelCode    = 80877102
)

// gate lets clients in: it answers requests for encryption, reads the startup packet,
// authenticates the client and starts its session, and forwards cancel requests.
type gate struct {
	core     *core
	set      *serverSet
	auth     *authenticator
	table    *clientTable
	tlsMode  TLSMode // resolved: never empty
	database string  // the one database clients may ask for
}

// handle lets one client connection in: it returns the client's session to run, or nil when
// the connection ended in its startup. The session calls ended when it ends, in whichever
// goroutine runs it then.
func (s *gate) handle(raw net.Conn) (session func(ended func())) {
	s.core.m.authenticating.Inc()
	authenticating := true
	defer func() {
		if authenticating {
			s.core.m.authenticating.Dec()
		}
	}()
	_ = raw.SetDeadline(time.Now().Add(s.core.cfg.StartupTimeout))
	conn, params, err := s.startup(raw)
	if err != nil || conn == nil {
		s.core.refuse(raw, err)
		return nil
	}
	if s.core.ending() {
		s.core.refuse(conn, reject("57P03", "the proxy is shutting down"))
		return nil
	}
	cl := newClient(s.core, s.set, conn, params, remoteString(raw))
	cl.cr = cl.newReader()
	if err := s.auth.authenticate(cl, raw); err != nil {
		s.core.refuse(cl, err)
		cl.flushClient()
		return nil
	}
	if err := s.table.authenticated(raw); err != nil {
		s.core.refuse(cl, err)
		cl.flushClient()
		return nil
	}
	_ = raw.SetDeadline(time.Time{})
	authenticating = false
	s.core.m.authenticating.Dec()

	s.core.m.sessions.Inc()
	s.table.register(cl)
	return func(ended func()) {
		cl.ended = func() {
			s.table.unregister(cl)
			ended()
		}
		cl.run(params)
	}
}

// remoteHost is the client's IP address, as PostgreSQL names the host in its errors.
func remoteHost(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return "[local]"
}

func remoteString(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "unix"
}

// startup reads startup packets until a StartupMessage, answering SSLRequest and GSSENCRequest on
// the way. It reads exact packet lengths straight from the socket, so no plaintext byte sent
// before a TLS handshake can be taken as if it came through TLS. A nil conn with a nil error
// means the connection was a cancel request and is done.
func (s *gate) startup(raw net.Conn) (net.Conn, map[string]string, error) {
	conn := raw
	tlsDone := false
	for range 4 {
		pkt, err := readStartupPacket(conn)
		if err != nil {
			return nil, nil, err
		}
		code := binary.BigEndian.Uint32(pkt)
		switch {
		case code == sslRequest && !tlsDone:
			if s.core.cfg.TLS == nil || s.tlsMode == TLSDisable {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil, nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil, nil, err
			}
			tc := tls.Server(raw, s.core.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return nil, nil, fmt.Errorf("tls handshake: %w", err)
			}
			conn, tlsDone = tc, true
		case code == gssencRequest && !tlsDone:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, nil, err
			}
		case code == cancelCode && len(pkt) >= 12:
			s.cancelRequest(binary.BigEndian.Uint32(pkt[4:8]), binary.BigEndian.Uint32(pkt[8:12]))
			return nil, nil, nil
		case code>>16 == 3:
			params, unknown := parseStartupParams(pkt[4:])
			if code&0xffff != 0 || len(unknown) > 0 {
				// We speak 3.0 and no protocol extensions: say so, as PostgreSQL does.
				b, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}).Encode(nil)
				if _, err := conn.Write(b); err != nil {
					return nil, nil, err
				}
			}
			if params["user"] == "" {
				return conn, nil, reject("28000", "no PostgreSQL user name specified in startup packet")
			}
			if params["replication"] != "" && params["replication"] != "false" && params["replication"] != "0" {
				return conn, nil, reject("0A000", "replication connections are not supported by the proxy")
			}
			if params["database"] == "" {
				params["database"] = params["user"]
			}
			if s.tlsMode == TLSRequire && !tlsDone {
				if _, ok := raw.RemoteAddr().(*net.TCPAddr); ok {
					// PostgreSQL's answer when only hostssl lines could match.
					return conn, nil, reject("28000", "no pg_hba.conf entry for host %q, user %q, database %q, no encryption",
						remoteHost(raw), params["user"], params["database"])
				}
			}
			if params["database"] != s.database {
				return conn, nil, reject("3D000", "database %q is not served by this proxy (it serves %q)", params["database"], s.database)
			}
			return conn, params, nil
		default:
			return conn, nil, reject("0A000", "unsupported frontend protocol %d.%d", code>>16, code&0xffff)
		}
	}
	return conn, nil, reject("08P01", "too many startup packets")
}

func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > 10000 {
		return nil, reject("08P01", "invalid length of startup packet")
	}
	pkt := make([]byte, n-4)
	if _, err := io.ReadFull(r, pkt); err != nil {
		return nil, err
	}
	return pkt, nil
}

// parseStartupParams reads the name/value pairs of a StartupMessage. Names starting with _pq_.
// are protocol options, which the proxy does not support.
func parseStartupParams(b []byte) (map[string]string, []string) {
	params := map[string]string{}
	var unknown []string
	for len(b) > 1 {
		i := indexZero(b)
		if i < 0 {
			break
		}
		name := string(b[:i])
		b = b[i+1:]
		j := indexZero(b)
		if j < 0 {
			break
		}
		if strings.HasPrefix(name, "_pq_.") {
			unknown = append(unknown, name)
		} else {
			params[name] = string(b[:j])
		}
		b = b[j+1:]
	}
	return params, unknown
}

// cancelRequest forwards a client's CancelRequest to the server connection its session uses now,
// with that connection's own key. Unknown keys are ignored, as PostgreSQL does.
func (s *gate) cancelRequest(pid, secret uint32) {
	cl := s.table.lookup(pid, secret)
	if cl == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.core.ctx, s.core.cfg.ResetTimeout)
	defer cancel()
	if cl.cancelQueued() {
		return // a request a pause queued: it fails with 57014 without reaching the server
	}
	if cl.cancelServer(ctx) {
		s.core.m.cancels.Inc()
	}
}
