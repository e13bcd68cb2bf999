package api

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"regexp"
)

// statusHTML is the whole /status page: markup, style and script inline, nothing fetched from
// elsewhere, so it works in closed networks and needs no asset pipeline.
//
//go:embed static/status.html
var statusHTML []byte

// statusPolicy allows exactly the page's own script and style block (by hash) and requests to
// its own origin; anything else, including injected markup, is refused by the browser.
var statusPolicy = "default-src 'none'; script-src " + inlineHash(statusHTML, "script") +
	"; style-src " + inlineHash(statusHTML, "style") +
	"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash returns the CSP source expression of the page's one <tag> block.
func inlineHash(page []byte, tag string) string {
	m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindSubmatch(page)
	if m == nil {
		panic("api: status page has no <" + tag + "> block")
	}
	sum := sha256.Sum256(m[1])
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func (h *Handler) statusPage(w http.ResponseWriter, _ *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", statusPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-cache")
	_, _ = w.Write(statusHTML)
}
