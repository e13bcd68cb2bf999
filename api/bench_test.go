package api

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkLiveSnapshot is the cost of one live-metrics event (per open stream per second).
func BenchmarkLiveSnapshot(b *testing.B) {
	s := startSidecar(b, testConfig(b), false, nil)
	s.waitHealthy(b)
	for range 100 {
		if err := s.query(b, "SELECT 1"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.h.live()
	}
}

// BenchmarkEndpoints serves each pool-side endpoint in-process (no network), to show what a
// dashboard polling them costs the sidecar.
func BenchmarkEndpoints(b *testing.B) {
	s := startSidecar(b, testConfig(b), false, nil)
	s.waitHealthy(b)
	mux := http.NewServeMux()
	s.h.Register(mux)
	for _, path := range []string{"/healthz", "/readyz", "/api/database/metrics", "/api/database/live-metrics",
		"/api/database/performance"} {
		b.Run(path, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				mux.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("%s: %d", path, w.Code)
				}
			}
		})
	}
}
