package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

func startupPacket(code uint32, params ...string) []byte {
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b[4:], code)
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	if len(params) > 0 {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func dialRaw(t *testing.T, h *harness) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// readMsg reads one backend message: its type and body.
func readMsg(t *testing.T, c net.Conn) (byte, []byte) {
	t.Helper()
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("read message: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return hdr[0], body
}

func TestNegotiation(t *testing.T) {
	h := newHarness(t, nil)
	t.Run("gssenc_and_ssl_declined", func(t *testing.T) {
		c := dialRaw(t, h)
		for _, code := range []uint32{gssencRequest, sslRequest} {
			if _, err := c.Write(startupPacket(code)); err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
				t.Fatalf("answer to request %d: %q %v, want N", code, b[0], err)
			}
		}
		if _, err := c.Write(startupPacket(protocol30, "user", "postgres", "database", "postgres")); err != nil {
			t.Fatal(err)
		}
		if typ, body := readMsg(t, c); typ != 'R' || binary.BigEndian.Uint32(body) != 10 {
			t.Fatalf("after startup: %q %v, want AuthenticationSASL", typ, body)
		}
	})
	t.Run("newer_minor_version", func(t *testing.T) {
		c := dialRaw(t, h)
		if _, err := c.Write(startupPacket(3<<16|2, "user", "postgres", "_pq_.something", "x")); err != nil {
			t.Fatal(err)
		}
		typ, body := readMsg(t, c)
		if typ != 'v' || binary.BigEndian.Uint32(body) != 0 || binary.BigEndian.Uint32(body[4:]) != 1 {
			t.Fatalf("NegotiateProtocolVersion expected, got %q %v", typ, body)
		}
		if typ, _ := readMsg(t, c); typ != 'R' {
			t.Fatalf("authentication request expected, got %q", typ)
		}
	})
	t.Run("protocol_2_refused", func(t *testing.T) {
		c := dialRaw(t, h)
		if _, err := c.Write(startupPacket(2<<16, "user", "postgres")); err != nil {
			t.Fatal(err)
		}
		if typ, _ := readMsg(t, c); typ != 'E' {
			t.Fatalf("got %q, want ErrorResponse", typ)
		}
	})
}

// TestNoPlaintextAcrossTLSSwitch sends a StartupMessage in the same write as the SSLRequest, as an
// attacker injecting bytes before the handshake would. The proxy must not treat those bytes as
// part of the TLS session: the handshake fails and no session starts.
func TestNoPlaintextAcrossTLSSwitch(t *testing.T) {
	cert := selfSigned(t)
	h := newHarness(t, func(_ *pool.Config, c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		c.Auth = AuthTrust
	})
	c := dialRaw(t, h)
	msg := append(startupPacket(sslRequest), startupPacket(protocol30, "user", "postgres", "database", "postgres")...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("answer to SSLRequest: %q %v", b[0], err)
	}
	rest, err := io.ReadAll(c)
	if len(rest) > 0 && rest[0] == 'R' {
		t.Fatalf("the proxy answered plaintext sent before the TLS handshake: %q", rest)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the proxy kept the connection open")
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_sessions_total", nil); got != 0 {
		t.Fatalf("sessions = %v, want 0", got)
	}
}

// TestTerminatedBackend: an administrator ends the server connection under an idle client. The
// client gets the server's FATAL and is closed; the pool drops the connection.
func TestTerminatedBackend(t *testing.T) {
	h := newHarness(t, func(pc *pool.Config, _ *Config) { pc.MaxConns, pc.MinConns = 1, 1 })
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	var pid int
	if err := c.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.QueryInt(ctx, "select pg_terminate_backend($1)::int", pid); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
		t.Fatalf("query after terminate: %v, want 57P01", err)
	}
	h.waitIdle(t)
	c2, err := pgx.Connect(ctx, h.superURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	var pid2 int
	if err := c2.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil || pid2 == pid {
		t.Fatalf("new session: backend %d (old %d), %v", pid2, pid, err)
	}
}

// TestCloseEndsSessions: Close disconnects clients and returns; the pool gets its connections back.
func TestCloseEndsSessions(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	if got := h.metric(t, "pgsidecar_proxy_client_connections", map[string]string{"state": "active"}); got != 1 {
		t.Fatalf("active clients = %v, want 1", got)
	}
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "select 1"); err == nil {
		t.Fatal("query after Close succeeded")
	}
	// Connections discarded at shutdown are destroyed in the background by pgxpool.
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.mgr.Stats().UsedConns == 0 }) {
		t.Fatalf("pool connections still in use after Close: %d", h.mgr.Stats().UsedConns)
	}
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", h.port), time.Second); err == nil {
		t.Fatal("still listening after Close")
	}
}

func TestTooManyClients(t *testing.T) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.MaxClients = 1 })
	ctx := ctxTimeout(t, 30*time.Second)
	c := h.connect(t, ctx, h.superURL())
	_, err := pgx.Connect(ctx, h.superURL())
	if sqlState(err) != "53300" {
		t.Fatalf("second client: %v, want 53300", err)
	}
	_ = c.Close(ctx)
	h.waitIdle(t)
	if !pgtest.WaitFor(10*time.Second, func() bool { return h.srv.table.clientCount() == 0 }) {
		t.Fatal("client connections not released")
	}
	c2 := h.connect(t, ctx, h.superURL())
	if err := c2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestBadMessages: after login, malformed client messages end the session with 08P01 and the
// server connection is not given to anyone else.
func TestBadMessages(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 30*time.Second)
	for name, msg := range map[string][]byte{
		"length below 4": {'Q', 0, 0, 0, 2},
		"unknown type":   {'z', 0, 0, 0, 4},
	} {
		t.Run(name, func(t *testing.T) {
			pc, err := pgconn.Connect(ctx, h.superURL())
			if err != nil {
				t.Fatal(err)
			}
			hc, err := pc.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Conn.Close()
			_ = hc.Conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := hc.Conn.Write(msg); err != nil {
				t.Fatal(err)
			}
			for {
				m, err := hc.Frontend.Receive()
				if err != nil {
					t.Fatalf("no ErrorResponse: %v", err)
				}
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					if e.Code != "08P01" {
						t.Fatalf("SQLSTATE %s (%s), want 08P01", e.Code, e.Message)
					}
					break
				}
			}
			h.waitIdle(t)
		})
	}
	if got := h.metric(t, "pgsidecar_proxy_client_errors_total", map[string]string{"sqlstate": "08P01"}); got != 1 {
		t.Errorf("proxy's own 08P01 errors = %v, want 1 (the other comes from the server)", got)
	}
}

// TestTerminateBeforeReadyForQuery: node-postgres' pool reads a failed query's ErrorResponse
// and sends Terminate without waiting for the ReadyForQuery. Those queries must still be
// measured and the server connections go back to the pool instead of being closed. Here the
// client sends its query and Terminate together, and the query fails only after a short sleep,
// so the proxy always sees Terminate before the answer.
func TestTerminateBeforeReadyForQuery(t *testing.T) {
	h := newHarness(t, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	const n = 5
	for range n {
		c := h.connect(t, ctx, h.superURL())
		pc := c.PgConn()
		buf, _ := (&pgproto3.Query{String: "select 1/(random()*0)::int from pg_sleep(0.2)"}).Encode(nil)
		buf, _ = (&pgproto3.Terminate{}).Encode(buf)
		if _, err := pc.Conn().Write(buf); err != nil {
			t.Fatal(err)
		}
		_ = pc.Conn().Close()
	}
	h.waitIdle(t)
	if got := h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "22012"}); got != n {
		t.Errorf("division-by-zero errors counted: %v, want %d (57014, canceled: %v)", got, n,
			h.metric(t, "pgsidecar_query_errors_total", map[string]string{"sqlstate": "57014"}))
	}
	if got := h.metric(t, "pgsidecar_query_duration_seconds", nil); got != n {
		t.Errorf("queries measured: %v, want %d", got, n)
	}
	if opened, max := h.mgr.Stats().ConnectionsOpened, h.mgr.Config().MaxConns; opened > int64(max) {
		t.Errorf("%d server connections opened for sessions that each used one at a time (pool max %d): released connections were closed", opened, max)
	}
}

// TestTerminateWithoutReading: a client that sends a query with a large result and Terminate,
// then neither reads nor closes, must not hold its server connection: the proxy stops writing
// to a client that said goodbye.
func TestTerminateWithoutReading(t *testing.T) {
	h := newHarness(t, func(_ *pool.Config, c *Config) { c.ResetTimeout = time.Second })
	ctx := ctxTimeout(t, 60*time.Second)
	c := h.connect(t, ctx, h.superURL())
	pc := c.PgConn()
	buf, _ := (&pgproto3.Query{String: "select repeat('x', 1000) from generate_series(1, 20000)"}).Encode(nil)
	buf, _ = (&pgproto3.Terminate{}).Encode(buf)
	if _, err := pc.Conn().Write(buf); err != nil {
		t.Fatal(err)
	}
	h.waitIdle(t) // the client connection stays open and unread until the test ends
	if got := h.metric(t, "pgsidecar_query_duration_seconds", nil); got != 1 {
		t.Errorf("queries measured: %v, want 1", got)
	}
}

// TestClientErrorLabelsBounded: every code the proxy sends keeps its own label, and a code
// passed on from a server outside PostgreSQL's table (a pooler in between could send any) maps
// to its class, so pgsidecar_proxy_client_errors_total cannot grow a series per code.
func TestClientErrorLabelsBounded(t *testing.T) {
	h := newHarness(t, nil)
	for _, code := range []string{"28000", "28P01", "3D000", "0A000", "08P01", "08006", "53300", "53ZZZ", "Z9999"} {
		h.srv.refuse(io.Discard, reject(code, "test"))
	}
	for label, want := range map[string]float64{"28000": 1, "28P01": 1, "3D000": 1, "0A000": 1, "08P01": 1, "08006": 1, "53300": 1, "53xxx": 1, "other": 1} {
		if got := h.metric(t, "pgsidecar_proxy_client_errors_total", map[string]string{"sqlstate": label}); got != want {
			t.Errorf("sqlstate=%s: %v, want %v", label, got, want)
		}
	}
	if got := h.metric(t, "pgsidecar_proxy_client_errors_total", nil); got != 9 {
		t.Errorf("all client errors: %v, want 9", got)
	}
}

// TestServerOutputSplitMidMessage: PostgreSQL sends its output in 8 KiB pieces and, before a
// Sync or Flush, keeps the rest of a message that straddles a piece's end until more output
// fills the buffer. While the proxy waited for the rest of such a message, it held the client's
// writer, and the client's side of the relay waited for that writer before reading the request
// the server needed to go on: neither moved again (pgx's TestConnExecBatchHuge stalled so).
func TestServerOutputSplitMidMessage(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, func(_ *pool.Config, c *Config) { c.PoolMode = mode })
			ctx := ctxTimeout(t, 30*time.Second)
			pc := h.pgconnect(t, ctx, "")
			conn := pc.Conn()
			// About 20 KiB of rows of 1,000 bytes: the server sends two 8 KiB pieces and
			// keeps the rest, a row cut in two, for lack of a Sync.
			var b []byte
			b, _ = (&pgproto3.Parse{Query: "select repeat('x', 1000) from generate_series(1, 20)"}).Encode(b)
			b, _ = (&pgproto3.Bind{}).Encode(b)
			b, _ = (&pgproto3.Execute{}).Encode(b)
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			// A request the server answers without filling its buffer, and part of the next.
			rest, _ := (&pgproto3.Bind{}).Encode(nil)
			exec, _ := (&pgproto3.Execute{}).Encode(nil)
			rest = append(rest, exec[:3]...)
			if _, err := conn.Write(rest); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			tail := append([]byte(nil), exec[3:]...)
			tail, _ = (&pgproto3.Sync{}).Encode(tail)
			if _, err := conn.Write(tail); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			fe := pgproto3.NewFrontend(conn, conn)
			rows := 0
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("after %d rows: %v (the relay stalled)", rows, err)
				}
				switch m := msg.(type) {
				case *pgproto3.DataRow:
					rows++
				case *pgproto3.ErrorResponse:
					t.Fatalf("error: %s", m.Message)
				}
				if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			if rows != 40 {
				t.Errorf("rows = %d, want 40", rows)
			}
		})
	}
}
