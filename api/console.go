package api

import (
	"embed"
	"io/fs"
	"net/http"
)

// console holds the analyst console's files: plain HTML, CSS and
// JavaScript, no library, nothing fetched from elsewhere.
//
//go:embed console
var console embed.FS

// consolePolicy lets the page load only its own script and style and talk
// only to this API; no inline script, no framing.
const consolePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// consoleHandler serves GET / and /console/*. The page holds no data: what
// it shows it fetches with the analyst's token.
func consoleHandler() http.Handler {
	files, _ := fs.Sub(console, "console")
	static := http.StripPrefix("/console/", http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", consolePolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		switch r.URL.Path {
		case "/":
			http.ServeFileFS(w, r, files, "index.html")
			return
		case "/favicon.ico":
			w.WriteHeader(http.StatusNoContent) // browsers ask; there is none
			return
		}
		static.ServeHTTP(w, r)
	})
}
