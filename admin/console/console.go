// Package console is keygate's management console (SPEC section 8): a
// static single-page application (plain HTML, CSS and JavaScript modules,
// no build step) embedded in the binary and served under a path prefix,
// normally /console/. The page itself holds no data: it signs in with a
// pasted admin token and calls the admin REST API (/v1/…) of the same
// origin. Like package admin it imports nothing from Caddy.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
)

//go:embed static
var files embed.FS

// ContentSecurityPolicy is sent with every console answer. Scripts, styles,
// images and API calls come from the console's own origin only; no inline
// script or style attribute runs; the page cannot be framed; and Trusted
// Types leave no way to parse markup from a string (innerHTML and friends
// throw), so data from the API can only ever become text.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; " +
	"require-trusted-types-for 'script'; trusted-types 'none'"

// Handler serves the console's files under Prefix.
type Handler struct {
	prefix string
	assets map[string]asset
}

type asset struct {
	body  []byte
	ctype string
	etag  string
}

// New returns the console handler for requests under prefix (such as
// "/console/", with both slashes). A request for the prefix without its
// trailing slash is redirected to it (relatively).
func New(prefix string) *Handler {
	h := &Handler{prefix: prefix, assets: map[string]asset{}}
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		ctype := mime.TypeByExtension(path.Ext(name))
		switch path.Ext(name) { // not left to the system's mime tables
		case ".js":
			ctype = "text/javascript; charset=utf-8"
		case ".css":
			ctype = "text/css; charset=utf-8"
		case ".html":
			ctype = "text/html; charset=utf-8"
		case ".svg":
			ctype = "image/svg+xml"
		}
		h.assets[name] = asset{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return h
}

// Matches reports whether the request's path belongs to the console.
func (h *Handler) Matches(p string) bool {
	return p == strings.TrimSuffix(h.prefix, "/") || strings.HasPrefix(p, h.prefix)
}

// ServeHTTP answers GET and HEAD for the console's files with the security
// headers; the prefix itself serves index.html.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", ContentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Cross-Origin-Opener-Policy", "same-origin")
	hdr.Set("Cross-Origin-Resource-Policy", "same-origin")
	hdr.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == strings.TrimSuffix(h.prefix, "/") {
		// Relative ("console/"), so that it also holds when a proxy or
		// handle_path stripped a prefix the handler never sees; the page
		// reaches the API the same way, at "../v1/".
		hdr.Set("Location", path.Base(h.prefix)+"/")
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, h.prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if name == "" {
		name = "index.html"
	}
	a, found := h.assets[name]
	if !found {
		http.NotFound(w, r)
		return
	}
	hdr.Set("Content-Type", a.ctype)
	hdr.Set("ETag", a.etag)
	// Revalidated on every load (cheap: 304 by ETag), so an upgraded
	// binary never meets stale modules in a browser cache.
	hdr.Set("Cache-Control", "no-cache")
	if match := r.Header.Get("If-None-Match"); match != "" && match == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hdr.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(a.body)
	}
}
