package proxy

import (
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestLogThrottleSummaries: a sustained flood gives one summary per interval, and the logged
// and suppressed events add up to all of them.
func TestLogThrottleSummaries(t *testing.T) {
	buf := &testutil.LogBuffer{}
	th := &logThrottle{log: slog.New(slog.NewTextHandler(buf, nil)), msg: "Proxy authentication failed", interval: 100 * time.Millisecond}
	n := 0
	for start := time.Now(); time.Since(start) < 550*time.Millisecond; n++ {
		th.event("user", "u")
		time.Sleep(time.Millisecond)
	}
	th.stop()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	total := 0
	for _, l := range lines {
		if m := regexp.MustCompile(`suppressed=(\d+)`).FindStringSubmatch(l); m != nil {
			k, _ := strconv.Atoi(m[1])
			total += k
		} else {
			total++
		}
	}
	if total != n || len(lines) > 10 || len(lines) < 3 {
		t.Fatalf("%d events gave %d lines accounting for %d:\n%s", n, len(lines), total, buf.String())
	}
}
