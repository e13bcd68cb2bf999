package api

import (
	_ "embed"
	"net/http"
)

// statusHTML is the whole /status page: markup, style and script inline, nothing fetched from
// elsewhere, so it works in closed networks and needs no asset pipeline.
//
//go:embed static/status.html
var statusHTML []byte

// statusPolicy forbids every outside resource; the page only talks to its own origin.
const statusPolicy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (h *Handler) statusPage(w http.ResponseWriter, _ *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", statusPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-cache")
	_, _ = w.Write(statusHTML)
}
