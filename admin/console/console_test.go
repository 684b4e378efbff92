package console

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serve(h http.Handler, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestServe: the prefix serves index.html, files have their types and the
// security headers, unknown files are 404, other methods 405, the prefix
// without its slash redirects, and a matching ETag answers 304.
func TestServe(t *testing.T) {
	h := New("/console/")
	rec := serve(h, "GET", "/console/", nil)
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") || !strings.Contains(rec.Body.String(), `src="app.js"`) {
		t.Fatalf("index: %d %q %.80s", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	for k, want := range map[string]string{
		"Content-Security-Policy": ContentSecurityPolicy,
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
		"Cache-Control":           "no-cache",
	} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"} {
		if !strings.Contains(ContentSecurityPolicy, want) {
			t.Errorf("CSP lacks %q", want)
		}
	}
	if strings.Contains(ContentSecurityPolicy, "unsafe") {
		t.Errorf("CSP allows unsafe sources: %s", ContentSecurityPolicy)
	}
	if rec := serve(h, "GET", "/console/app.js", nil); rec.Code != 200 || rec.Header().Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("app.js: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	} else if rec304 := serve(h, "GET", "/console/app.js", map[string]string{"If-None-Match": rec.Header().Get("ETag")}); rec304.Code != 304 || rec304.Body.Len() != 0 {
		t.Errorf("If-None-Match: %d", rec304.Code)
	}
	if rec := serve(h, "GET", "/console/console.css", nil); rec.Header().Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("css type %q", rec.Header().Get("Content-Type"))
	}
	for _, p := range []string{"/console/nope.js", "/console/static/app.js", "/console/../console.go", "/console/screenshots/keys.png"} {
		if rec := serve(h, "GET", p, nil); rec.Code != 404 || rec.Header().Get("Content-Security-Policy") == "" {
			t.Errorf("%s: %d", p, rec.Code)
		}
	}
	if rec := serve(h, "POST", "/console/", nil); rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d %q", rec.Code, rec.Header().Get("Allow"))
	}
	if rec := serve(h, "GET", "/console", nil); rec.Code != 301 || rec.Header().Get("Location") != "console/" {
		t.Errorf("no slash: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if rec := serve(h, "HEAD", "/console/app.js", nil); rec.Code != 200 || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") == "" {
		t.Errorf("HEAD: %d %d", rec.Code, rec.Body.Len())
	}
	if !h.Matches("/console/") || !h.Matches("/console") || !h.Matches("/console/x.js") || h.Matches("/consoles") || h.Matches("/v1/me") {
		t.Error("Matches")
	}
}

// TestStaticFilesAreSafe reads every embedded file: no inline script or
// style, no event-handler or style attributes, no markup parsed from
// strings, no resource from another origin.
func TestStaticFilesAreSafe(t *testing.T) {
	sub, _ := fs.Sub(files, "static")
	inlineScript := regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`)
	eventAttr := regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
	externalURL := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	sinks := []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute('style'", ".style.", "localStorage", "document.cookie", "createContextualFragment", "DOMParser"}
	n := 0
	err := fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		text := string(b)
		for _, u := range externalURL.FindAllString(text, -1) {
			if !strings.HasSuffix(u, "www.w3.org") { // the SVG namespace, not a fetch
				t.Errorf("%s: refers to %s on another origin", name, u)
			}
		}
		switch {
		case strings.HasSuffix(name, ".html"), strings.HasSuffix(name, ".svg"):
			if inlineScript.MatchString(text) || strings.Contains(text, "<style") || strings.Contains(text, "style=") || eventAttr.MatchString(text) {
				t.Errorf("%s: inline script, style or event attribute", name)
			}
		case strings.HasSuffix(name, ".js"):
			for _, s := range sinks {
				if strings.Contains(text, s) {
					t.Errorf("%s uses %s", name, s)
				}
			}
		}
		return nil
	})
	if err != nil || n < 8 {
		t.Fatalf("walk: %v (%d files)", err, n)
	}
}
