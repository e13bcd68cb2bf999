// Package backoff computes capped exponential backoff delays with jitter, for the pool's retries
// and reconnects and the proxy's accept loop.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay returns the delay before retry number attempt (1-based): base doubled per attempt,
// capped at maxDelay, with "equal jitter" so the result lies in [d/2, d]. Spreading retries
// keeps many clients from hitting a recovering server at the same instant.
func Delay(attempt int, base, maxDelay time.Duration) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < attempt && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
}
