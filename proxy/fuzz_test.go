package proxy

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzStartupPacket feeds arbitrary bytes to the proxy's startup framing and parameter parser,
// the first thing an unauthenticated client reaches: no panic, no read past the declared
// length, no allocation of a length the proxy refuses.
func FuzzStartupPacket(f *testing.F) {
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "app", "database": "pos", "_pq_.x": "1"}}).Encode(nil)
	f.Add(startup)
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})           // SSLRequest
	f.Add([]byte{0, 0, 0, 3})                           // shorter than its header
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0})   // two gigabytes
	f.Add([]byte{0, 0, 0, 12, 0, 3, 0, 0, 'u', 0, 'x'}) // parameter without its terminator
	f.Fuzz(func(t *testing.T, data []byte) {
		pkt, err := readStartupPacket(bytes.NewReader(data))
		if err != nil {
			return
		}
		if want := int(binary.BigEndian.Uint32(data)) - 4; len(pkt) != want || want > 10000 {
			t.Fatalf("packet of %d bytes for declared length %d", len(pkt), want)
		}
		if len(pkt) < 4 {
			return
		}
		params, unknown := parseStartupParams(pkt[4:])
		for k, v := range params {
			if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) || strings.HasPrefix(k, "_pq_.") {
				t.Fatalf("bad parameter %q=%q", k, v)
			}
		}
		for _, u := range unknown {
			if !strings.HasPrefix(u, "_pq_.") {
				t.Fatalf("unknown option %q", u)
			}
		}
	})
}

// FuzzSCRAMExchange feeds arbitrary client-first and client-final messages, what an
// unauthenticated client controls, to the SCRAM server: no panic, and no message that was not
// built from the password is ever accepted.
func FuzzSCRAMExchange(f *testing.F) {
	f.Add("n,,n=,r=abc", "c=biws,r=NONCE,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("y,,n=app,r=x", "c=eSws,r=x,p=")
	f.Add("p=tls-server-end-point,,n=,r=x", "")
	f.Add("n,a=admin,n=,r=r=r=", "c=,r=,p=,p=")
	f.Add("n,", ",p=")
	v, err := newSCRAMVerifier("fuzz-password")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, clientFirst, clientFinal string) {
		s := &scramServer{v: v}
		serverFirst, err := s.first(clientFirst)
		if err != nil {
			return
		}
		if !strings.HasPrefix(serverFirst, "r=") || !strings.Contains(serverFirst, ",s=") {
			t.Fatalf("server-first-message %q", serverFirst)
		}
		// The server's nonce is random, so a fuzzed final message can only carry it by
		// substituting it; its proof is still not derived from the password.
		msg := strings.ReplaceAll(clientFinal, "NONCE", s.nonce)
		if _, err := s.final(msg); err == nil {
			t.Fatalf("accepted client-final-message %q without the password", msg)
		}
	})
}

// FuzzDecodeError feeds arbitrary ErrorResponse bodies, as a server (or anything posing as
// one) could send, to the field decoder the relay's metrics use: no panic, no NUL in a field.
func FuzzDecodeError(f *testing.F) {
	f.Add([]byte("SERROR\x00VERROR\x00C23505\x00Mduplicate key\x00\x00"))
	f.Add([]byte("C"))
	f.Add([]byte("S\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e := decodeError(b)
		for _, v := range []string{e.Severity, e.SeverityUnlocalized, e.Code, e.Message} {
			if strings.ContainsRune(v, 0) {
				t.Fatalf("field %q holds a NUL", v)
			}
		}
	})
}
