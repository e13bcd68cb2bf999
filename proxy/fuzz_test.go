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
