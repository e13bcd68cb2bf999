package proxy

import (
	"log/slog"
	"sync"
	"time"
)

// logThrottle logs the first of a run of events in full and then, at most once per interval, one
// summary line with how many it left out. A flood of failed logins thus costs a few log lines,
// while the metric counting them stays exact.
type logThrottle struct {
	log      *slog.Logger
	msg      string
	interval time.Duration

	mu         sync.Mutex
	quietUntil time.Time // events before this are counted, not logged
	suppressed int
	timer      *time.Timer // logs the summary at quietUntil; nil when none is pending
	stopped    bool
}

// event logs one event with attrs, or counts it for the next summary.
func (t *logThrottle) event(attrs ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.After(t.quietUntil) && t.timer == nil {
		t.quietUntil = now.Add(t.interval)
		t.log.Warn(t.msg, attrs...)
		return
	}
	t.suppressed++
	if t.timer == nil && !t.stopped {
		t.timer = time.AfterFunc(time.Until(t.quietUntil), t.summary)
	}
}

// summary logs how many events were left out, and keeps quiet for another interval, so a
// sustained flood gives one line per interval.
func (t *logThrottle) summary() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timer = nil
	if t.suppressed == 0 || t.stopped {
		return
	}
	t.log.Warn(t.msg, "suppressed", t.suppressed, "interval", t.interval)
	t.suppressed = 0
	t.quietUntil = time.Now().Add(t.interval)
}

// stop logs a pending summary now and ends the timer.
func (t *logThrottle) stop() {
	t.mu.Lock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.mu.Unlock()
	t.summary()
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
}
