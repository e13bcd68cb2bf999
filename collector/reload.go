package collector

import (
	"context"
	"net/http"
	"os"
)

// ReloadHandler reloads the queries file on POST (or PUT) /-/reload, as Prometheus does: 200
// when the new file is in use, 500 with the error (file:line) when the old queries stay.
func (e *Exporter) ReloadHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			w.Header().Set("Allow", "POST, PUT")
			http.Error(w, "This endpoint requires a POST request.", http.StatusMethodNotAllowed)
			return
		}
		if err := e.Reload(); err != nil {
			http.Error(w, "failed to reload queries: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

// ReloadOn reloads the queries file for each value received on sigs (SIGHUP in the binary)
// until ctx ends. Failures are logged and exported; the old queries stay.
func (e *Exporter) ReloadOn(ctx context.Context, sigs <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			e.log.Info("Reloading custom queries", "signal", sig.String())
			_ = e.Reload()
		}
	}
}
