package caddymodule

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/keygate/keygate/store"
)

// corsHeaderNames are the response headers a CORS answer may carry.
var corsHeaderNames = []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
	"Access-Control-Max-Age", "Access-Control-Expose-Headers", "Access-Control-Allow-Credentials"}

func noCORSHeaders(t *testing.T, r result) {
	t.Helper()
	for _, h := range corsHeaderNames {
		if v, ok := r.header[h]; ok {
			t.Errorf("%s: %v, want no CORS headers", h, v)
		}
	}
}

// readableCrossOrigin checks what a browser needs to hand the answer to the
// page at origin: one Allow-Origin echoing it, keygate's headers exposed,
// and Vary: Origin for caches.
func readableCrossOrigin(t *testing.T, r result, origin string) {
	t.Helper()
	if got := r.header["Access-Control-Allow-Origin"]; len(got) != 1 || got[0] != origin {
		t.Errorf("Access-Control-Allow-Origin %q, want exactly %q", got, origin)
	}
	exposed := strings.ToLower(strings.Join(r.header["Access-Control-Expose-Headers"], ","))
	for _, h := range []string{"retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "www-authenticate"} {
		if !strings.Contains(exposed, h) {
			t.Errorf("Access-Control-Expose-Headers %q lacks %s", exposed, h)
		}
	}
	if !slices.ContainsFunc(r.header.Values("Vary"), func(v string) bool { return strings.Contains(v, "Origin") }) {
		t.Errorf("Vary %q lacks Origin", r.header.Values("Vary"))
	}
}

// TestCORS: the cors option end to end through Caddy (SPEC 3).
func TestCORS(t *testing.T) {
	const app, other = "http://app.example:5173", "https://evil.example"
	g := startGateway(t, "{\n\t\tcors "+app+" https://b.example\n\t}",
		// 0: cors *
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		cors *
	}
	reverse_proxy {{UPSTREAM}}
}`,
		// 1: cors with handle_errors shaping rejections
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		cors `+app+`
	}
	reverse_proxy {{UPSTREAM}}
	handle_errors {
		respond "{err.status_code} {http.auth.api_key.error}"
	}
}`,
		// 2: no cors
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key
	reverse_proxy {{UPSTREAM}}
}`)
	enable(t, g.st, store.DefaultTenant)
	if _, err := g.st.PutGroup("test", store.DefaultTenant, "slow", store.GroupInput{RateLimit: &store.RateLimit{RequestsPerSecond: 0.01, Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	_, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
	_, slow := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Group: "slow"})
	preflight := func(url, origin string) result {
		return do(t, "OPTIONS", url, map[string]string{"Origin": origin,
			"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-api-key,x-trace"})
	}

	t.Run("preflight from an allowed origin", func(t *testing.T) {
		r := preflight(g.url+"/v1/chat", app)
		if r.status != http.StatusNoContent {
			t.Fatalf("got %d %s, want 204", r.status, r.body)
		}
		if got := r.header["Access-Control-Allow-Origin"]; len(got) != 1 || got[0] != app {
			t.Errorf("Allow-Origin %q", got)
		}
		if got := r.header.Get("Access-Control-Allow-Methods"); !strings.Contains(got, "POST") {
			t.Errorf("Allow-Methods %q", got)
		}
		allow := r.header.Get("Access-Control-Allow-Headers")
		for _, h := range []string{"content-type", "x-api-key", "x-trace", "X-Api-Key", "Authorization"} {
			if !strings.Contains(allow, h) {
				t.Errorf("Allow-Headers %q lacks %s", allow, h)
			}
		}
		if r.header.Get("Access-Control-Max-Age") == "" {
			t.Error("no Access-Control-Max-Age")
		}
		if !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Origin") {
			t.Errorf("Vary %q", r.header.Values("Vary"))
		}
		if r.header.Get("WWW-Authenticate") != "" {
			t.Error("a preflight is no authentication failure")
		}
		if n := g.up.options.Load(); n != 0 {
			t.Errorf("upstream saw %d OPTIONS requests, want 0", n)
		}
	})
	t.Run("preflight from another origin is an ordinary keyless request", func(t *testing.T) {
		r := preflight(g.url+"/v1/chat", other)
		if r.status != 401 || r.code() != "missing_key" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		noCORSHeaders(t, r)
		if g.up.options.Load() != 0 {
			t.Error("upstream saw the preflight")
		}
	})
	t.Run("preflight without cors is an ordinary keyless request", func(t *testing.T) {
		r := preflight(g.extra["2"]+"/", app)
		if r.status != 401 || r.code() != "missing_key" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		noCORSHeaders(t, r)
	})
	t.Run("OPTIONS with a key is no preflight", func(t *testing.T) {
		r := do(t, "OPTIONS", g.url+"/", map[string]string{"Origin": app, "X-API-Key": secret})
		if r.status != 200 || g.up.options.Load() != 1 {
			t.Fatalf("got %d, upstream OPTIONS %d: want the request admitted and proxied", r.status, g.up.options.Load())
		}
		readableCrossOrigin(t, r, app)
	})
	t.Run("rejections are readable cross-origin", func(t *testing.T) {
		r := get(t, g.url+"/", map[string]string{"Origin": app})
		if r.status != 401 || r.code() != "missing_key" || r.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("got %d %s %v", r.status, r.body, r.header)
		}
		readableCrossOrigin(t, r, app)
		r = get(t, g.url+"/", map[string]string{"Origin": app, "X-API-Key": "kg_nonsense"})
		if r.status != 401 || r.code() != "invalid_key" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		readableCrossOrigin(t, r, app)
		if r := get(t, g.url+"/", map[string]string{"Origin": app, "X-API-Key": slow}); r.status != 200 {
			t.Fatalf("first call of the slow key: %d", r.status)
		}
		r = get(t, g.url+"/", map[string]string{"Origin": app, "X-API-Key": slow})
		if r.status != 429 || r.header.Get("Retry-After") == "" || r.header.Get("RateLimit-Limit") != "1" {
			t.Fatalf("got %d %v", r.status, r.header)
		}
		readableCrossOrigin(t, r, app)
	})
	t.Run("rejections through handle_errors are readable cross-origin", func(t *testing.T) {
		r := get(t, g.extra["1"]+"/", map[string]string{"Origin": app})
		if r.status != 401 || string(r.body) != "401 missing_key" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		readableCrossOrigin(t, r, app)
	})
	t.Run("admitted: one Allow-Origin even when the upstream sends its own", func(t *testing.T) {
		r := get(t, g.url+"/x?upstream_cors=1", map[string]string{"Origin": app, "X-API-Key": secret})
		if r.status != 200 {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		readableCrossOrigin(t, r, app)
		var e echoed
		if err := json.Unmarshal(r.body, &e); err != nil || e.Path != "/x" {
			t.Fatalf("upstream body %s: %v", r.body, err)
		}
	})
	t.Run("other origins get no CORS headers", func(t *testing.T) {
		noCORSHeaders(t, get(t, g.url+"/", map[string]string{"Origin": other, "X-API-Key": secret}))
		noCORSHeaders(t, get(t, g.url+"/", map[string]string{"Origin": other}))
		noCORSHeaders(t, get(t, g.url+"/", map[string]string{"Origin": "null"}))
		noCORSHeaders(t, get(t, g.url+"/", map[string]string{"X-API-Key": secret}))
	})
	t.Run("cors * echoes any origin", func(t *testing.T) {
		r := preflight(g.extra["0"]+"/", other)
		if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != other {
			t.Fatalf("got %d %v", r.status, r.header)
		}
		readableCrossOrigin(t, get(t, g.extra["0"]+"/", map[string]string{"Origin": other}), other)
	})
	if n := g.up.options.Load(); n != 1 {
		t.Errorf("upstream saw %d OPTIONS requests, want only the keyed one", n)
	}
}

// TestCORSOrigins: origins are written as browsers send them; the
// Caddyfile and Validate (JSON) refuse anything else, naming the option.
func TestCORSOrigins(t *testing.T) {
	for in, want := range map[string]string{
		"https://app.example.com":  "https://app.example.com",
		"HTTPS://App.Example.com":  "https://app.example.com",
		"https://app.example:443":  "https://app.example",
		"http://127.0.0.1:80":      "http://127.0.0.1",
		"http://127.0.0.1:5173":    "http://127.0.0.1:5173",
		"http://[::1]:8080":        "http://[::1]:8080",
		"chrome-extension://abcde": "chrome-extension://abcde",
	} {
		if got, err := normalOrigin(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"app.example.com", "https://app.example.com/", "https://app.example.com/api",
		"https://*.example.com", "https://u:p@app.example.com", "https://app.example.com:0", "https://app.example.com:",
		"https://app.example.com?x", "https://", "*.example.com", "null"} {
		h := &Handler{CORS: []string{bad}, Realm: "keygate"} // as provisioned, but the origin
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "cors") {
			t.Errorf("Validate %q: %v, want an error naming cors", bad, err)
		}
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key {\n\tcors " + bad + "\n}"))
		if err == nil || !strings.Contains(err.Error(), "cors") {
			t.Errorf("Caddyfile %q: %v", bad, err)
		}
	}
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key {\n\tcors https://a.example http://127.0.0.1:3000\n\tcors *\n}")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.CORS, []string{"https://a.example", "http://127.0.0.1:3000", "*"}) {
		t.Errorf("CORS %q", h.CORS)
	}
	if err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key {\n\tcors\n}")); err == nil {
		t.Error("cors without origins accepted")
	}
}

// readmeBlock returns the first ```caddyfile block after heading in
// README.md: tests run what the README shows.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	text, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q", heading)
	}
	s = s[i:]
	const fence = "```caddyfile\n"
	i = strings.Index(s, fence)
	if i < 0 {
		t.Fatalf("no caddyfile block after %q", heading)
	}
	s = s[i+len(fence):]
	return s[:strings.Index(s, "```")]
}

// TestCORSHandWrittenRecipe runs README's hand-written CORS setup: real
// preflights from the allowed origin are answered without the upstream,
// and nothing else gets past api_key without a key (PITFALLS 19).
func TestCORSHandWrittenRecipe(t *testing.T) {
	const app = "https://app.example.com"
	site := strings.NewReplacer("api.example.com {", "http://127.0.0.1:{{PORT}} {\n\tbind 127.0.0.1",
		"backend:8080", "{{UPSTREAM}}").Replace(readmeBlock(t, "#### A hand-written CORS setup"))
	g := startGateway(t, "", site)
	url := g.extra["0"] + "/v1/chat"
	enable(t, g.st, store.DefaultTenant)
	_, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})

	r := do(t, "OPTIONS", url, map[string]string{"Origin": app, "Access-Control-Request-Method": "POST"})
	if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != app ||
		!strings.Contains(r.header.Get("Access-Control-Allow-Headers"), "X-API-Key") {
		t.Fatalf("preflight: %d %v", r.status, r.header)
	}
	for _, c := range []struct {
		method string
		hdr    map[string]string
	}{
		{"GET", nil},
		{"POST", map[string]string{"Origin": app}},
		{"OPTIONS", map[string]string{"Origin": app}},                                                            // no Access-Control-Request-Method
		{"OPTIONS", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}}, // another origin
		{"OPTIONS", map[string]string{"Access-Control-Request-Method": "GET"}},                                   // no origin
		{"DELETE", map[string]string{"Origin": app, "Access-Control-Request-Method": "GET"}},
	} {
		r := do(t, c.method, url, c.hdr)
		if r.status != 401 || r.code() != "missing_key" {
			t.Errorf("%s %v: %d %s, want 401 missing_key", c.method, c.hdr, r.status, r.body)
		}
	}
	r = get(t, url, map[string]string{"Origin": app})
	readableCrossOrigin(t, r, app)
	r = get(t, url, map[string]string{"Origin": app, "X-API-Key": secret})
	if r.status != 200 {
		t.Fatalf("keyed: %d %s", r.status, r.body)
	}
	readableCrossOrigin(t, r, app)
	if n := g.up.options.Load(); n != 0 {
		t.Errorf("upstream saw %d OPTIONS requests", n)
	}
}
