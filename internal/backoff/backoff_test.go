package backoff

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	base, maxDelay := 100*time.Millisecond, 2*time.Second
	for attempt := 1; attempt <= 10; attempt++ {
		full := base << (attempt - 1)
		if full > maxDelay {
			full = maxDelay
		}
		for range 200 {
			d := Delay(attempt, base, maxDelay)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
	if d := Delay(1, 0, time.Second); d != 0 {
		t.Fatalf("zero base gave %v", d)
	}
	if d := Delay(1000, time.Second, 3*time.Second); d > 3*time.Second {
		t.Fatalf("cap exceeded: %v", d)
	}
}
