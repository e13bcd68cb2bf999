//go:build !race

package proxy

// raceEnabled: the race detector's instrumentation makes stack frames larger.
const raceEnabled = false
