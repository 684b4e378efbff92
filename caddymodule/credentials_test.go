package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/keygate/keygate/store"
)

// doHeader sends a request with hdr as given (repeated fields included).
func doHeader(t testing.TB, url string, hdr http.Header) result {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = hdr
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: body}
}

// TestCredentialSources: sources in order (header, then Bearer), a source
// sent twice is invalid_key, every source that carried a credential is
// stripped, every 401 carries the challenge with the configured realm.
func TestCredentialSources(t *testing.T) {
	g := startGateway(t, "",
		// 0: another realm
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		realm "orders api"
	}
	reverse_proxy {{UPSTREAM}}
}`)
	enable(t, g.st, store.DefaultTenant)
	k1, s1 := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Name: "one"})
	k2, s2 := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Name: "two"})
	_, revoked := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Name: "revoked"})
	if _, err := g.st.RevokeKey("test", store.DefaultTenant, mustID(t, g.st, revoked)); err != nil {
		t.Fatal(err)
	}
	const (
		challenge        = `Bearer realm="keygate"`
		challengeInvalid = `Bearer realm="keygate", error="invalid_token"`
	)

	t.Run("header wins and both sources are stripped", func(t *testing.T) {
		r := doHeader(t, g.url+"/", http.Header{"X-Api-Key": {s1}, "Authorization": {"Bearer " + s2}})
		if r.status != 200 {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		e := r.echo(t)
		if got := e.Headers["X-Api-Key-Id"]; len(got) != 1 || got[0] != k1.ID {
			t.Errorf("admitted as %v, want the header's key %s (not %s)", got, k1.ID, k2.ID)
		}
		for _, h := range []string{"X-Api-Key", "Authorization"} {
			if v, ok := e.Headers[h]; ok {
				t.Errorf("upstream received %s: %v", h, v)
			}
		}
		if strings.Contains(string(r.body), s2) || strings.Contains(string(r.body), s1) {
			t.Error("a secret reached the upstream")
		}
	})
	t.Run("Basic for the upstream stays", func(t *testing.T) {
		e := doHeader(t, g.url+"/", http.Header{"X-Api-Key": {s1}, "Authorization": {"Basic dXNlcjpwYXNz"}}).echo(t)
		if got := e.Headers["Authorization"]; len(got) != 1 || got[0] != "Basic dXNlcjpwYXNz" {
			t.Errorf("upstream Authorization = %v, want the Basic credentials", got)
		}
		if _, ok := e.Headers["X-Api-Key"]; ok {
			t.Error("X-Api-Key reached the upstream")
		}
	})

	for _, c := range []struct {
		name      string
		hdr       http.Header
		code      string
		challenge string
	}{
		{"two X-API-Key fields", http.Header{"X-Api-Key": {s1, s2}}, "invalid_key", challengeInvalid},
		{"the same key twice", http.Header{"X-Api-Key": {s1, s1}}, "invalid_key", challengeInvalid},
		{"two Bearer fields", http.Header{"Authorization": {"Bearer " + s1, "Bearer " + s2}}, "invalid_key", challengeInvalid},
		{"Bearer and Basic fields", http.Header{"X-Api-Key": {s1}, "Authorization": {"Basic dXNlcjpwYXNz", "Bearer " + s2}}, "invalid_key", challengeInvalid},
		{"unknown key", http.Header{"X-Api-Key": {store.NewSecret(store.KeyPrefix)}}, "invalid_key", challengeInvalid},
		{"malformed bearer", http.Header{"Authorization": {"Bearer nope"}}, "invalid_key", challengeInvalid},
		{"revoked", http.Header{"X-Api-Key": {revoked}}, "key_revoked", challengeInvalid},
		{"no credential", http.Header{}, "missing_key", challenge},
		{"Basic only", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, "missing_key", challenge},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := doHeader(t, g.url+"/", c.hdr)
			if r.status != 401 || r.code() != c.code {
				t.Fatalf("got %d %q (%s), want 401 %s", r.status, r.code(), r.body, c.code)
			}
			if got := r.header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != c.challenge {
				t.Errorf("WWW-Authenticate = %q, want %q", got, c.challenge)
			}
		})
	}

	t.Run("realm", func(t *testing.T) {
		r := doHeader(t, g.extra["0"]+"/", http.Header{})
		if got := r.header.Get("WWW-Authenticate"); r.status != 401 || got != `Bearer realm="orders api"` {
			t.Fatalf("got %d, WWW-Authenticate %q", r.status, got)
		}
		r = doHeader(t, g.extra["0"]+"/", http.Header{"X-Api-Key": {"kg_bad"}})
		if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="orders api", error="invalid_token"` {
			t.Fatalf("WWW-Authenticate %q", got)
		}
	})

	t.Run("identity headers cannot be spoofed", func(t *testing.T) {
		e := doHeader(t, g.url+"/", http.Header{
			"X-Api-Key":        {s1},
			"X-Api-Key-Id":     {"key_forged"},
			"X-Api-Key-Name":   {"forged"},
			"X-Api-Key-Tenant": {"forged"},
			"x-api-key-group":  {"forged"}, // sent lower-case; Go canonicalizes it
			"X-Api-Keys":       {"not the namespace"},
			"X-Other":          {"kept"},
		}).echo(t)
		if got := e.Headers["X-Api-Key-Id"]; len(got) != 1 || got[0] != k1.ID {
			t.Errorf("X-Api-Key-Id = %v, want only %s", got, k1.ID)
		}
		for _, h := range []string{"X-Api-Key-Name", "X-Api-Key-Tenant", "X-Api-Key-Group"} {
			if v, ok := e.Headers[h]; ok {
				t.Errorf("client's %s reached the upstream: %v", h, v)
			}
		}
		if e.Headers["X-Other"] == nil || e.Headers["X-Api-Keys"] == nil {
			t.Errorf("headers outside the namespace were dropped: %v", e.Headers)
		}
	})
}

// TestUnderscoreHeaderName: a key header Caddy would drop is a config
// error naming the fix; with the server's allowlist it works end to end.
func TestUnderscoreHeaderName(t *testing.T) {
	up := echoUpstream(t)
	site := func(global, header string) string {
		return fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %[1]s/caddy
	log {
		level error
	}
	api_keys {
		storage %[1]s/keys
	}
	%[2]s
}
http://127.0.0.1:%[3]d {
	bind 127.0.0.1
	api_key {
		header %[4]s
	}
	reverse_proxy %[5]s
}`, t.TempDir(), global, freePort(t), header, up.Listener.Addr())
	}
	for _, c := range []struct{ global, header, want string }{
		{"", "api_key", "expected_underscore_headers api_key"},
		{"", "Api.Key", "expected_dot_headers Api.Key"},
		{"servers {\n\t\texpected_underscore_headers x_api_key\n\t}", "X-API-Key", `drop the hyphenated spelling "X-Api-Key"`},
	} {
		err := loadErr(t, site(c.global, c.header))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("header %s with %q: got %v, want an error containing %q", c.header, c.global, err, c.want)
		}
	}

	cfg := site("servers {\n\t\texpected_underscore_headers api_*\n\t}", "api_key")
	startCaddy(t, cfg)
	dir := strings.Fields(cfg[strings.Index(cfg, "storage file_system"):])[2]
	st := sharedStore(t, strings.TrimSuffix(dir, "/caddy")+"/keys")
	enable(t, st, store.DefaultTenant)
	_, secret := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	url := "http://" + cfg[strings.Index(cfg, "http://127.0.0.1:")+len("http://"):]
	url = url[:strings.Index(url, " ")]
	if r := doHeader(t, url, http.Header{"api_key": {secret}}); r.status != 200 {
		t.Fatalf("allowlisted api_key header: got %d %s", r.status, r.body)
	}
}

// TestHandlerConfigErrors: bad realms are refused in the Caddyfile and in
// JSON; strip_credentials off is refused where reverse_proxy would log the
// key at DEBUG.
func TestHandlerConfigErrors(t *testing.T) {
	for _, realm := range []string{`"a\"b"`, "`a\x01b`"} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("http://127.0.0.1:1 {\n\tapi_key {\n\t\trealm "+realm+"\n\t}\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "realm") {
			t.Errorf("realm %s: got %v", realm, err)
		}
	}
	h := &Handler{Realm: "a\"b"}
	if err := h.provisionDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "realm") {
		t.Errorf("JSON realm with a quote: got %v", err)
	}

	dir := t.TempDir()
	cfg := func(level, site string) string {
		return fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %[1]s/caddy
	log {
		level %[2]s
	}
	api_keys {
		storage %[1]s/keys
	}
}
http://127.0.0.1:%[3]d {
	bind 127.0.0.1
	%[4]s
}`, dir, level, freePort(t), site)
	}
	stripOff := "api_key {\n\t\tstrip_credentials off\n\t}\n\treverse_proxy 127.0.0.1:9"
	if err := loadErr(t, cfg("DEBUG", stripOff)); err == nil || !strings.Contains(err.Error(), "strip_credentials off") {
		t.Errorf("strip_credentials off with DEBUG logs: got %v", err)
	}
	if err := loadErr(t, cfg("INFO", stripOff)); err != nil {
		t.Errorf("strip_credentials off with INFO logs: %v", err)
	}
	// uri strip_prefix runs before api_key and logs the request (headers
	// and all) at DEBUG when it changes it.
	for _, site := range []string{
		"uri strip_prefix /api\n\tapi_key\n\treverse_proxy 127.0.0.1:9",
		"route {\n\t\trewrite * /v2{uri}\n\t\tapi_key\n\t\treverse_proxy 127.0.0.1:9\n\t}",
	} {
		if err := loadErr(t, cfg("DEBUG", site)); err == nil || !strings.Contains(err.Error(), "rewrite") {
			t.Errorf("%q with DEBUG logs: got %v", site, err)
		}
		if err := loadErr(t, cfg("INFO", site)); err != nil {
			t.Errorf("%q with INFO logs: %v", site, err)
		}
	}
	if err := loadErr(t, cfg("DEBUG", "api_key\n\treverse_proxy 127.0.0.1:9")); err != nil {
		t.Errorf("plain api_key with DEBUG logs: %v", err)
	}
}

// loadErr adapts and loads cfg, stops it again if it loaded, and returns
// the load error.
func loadErr(t testing.TB, cfg string) error {
	t.Helper()
	caddyMu.Lock()
	defer caddyMu.Unlock()
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		return err
	}
	if err := caddy.Load(js, true); err != nil {
		return err
	}
	return caddy.Stop()
}

// browserLikeRequest has the dozen headers of a typical API call.
func browserLikeRequest(secret string) *http.Request {
	r, _ := http.NewRequest("GET", "http://gw/orders/1", nil)
	for k, v := range map[string]string{
		"Accept": "application/json", "Accept-Encoding": "gzip, deflate, br", "Accept-Language": "en",
		"User-Agent": "client/1.0", "Connection": "keep-alive", "Cache-Control": "no-cache",
		"X-Request-Id": "4f9c0d", "X-Forwarded-For": "192.0.2.1", "Content-Type": "application/json",
		"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key-Name": "forged",
	} {
		r.Header[k] = []string{v}
	}
	r.Header["X-Api-Key"] = []string{secret}
	return r
}

// TestCredentialsNoAlloc: reading the sources, stripping them and the
// identity namespace allocate nothing (the hot path stays at 0 allocs).
func TestCredentialsNoAlloc(t *testing.T) {
	h := newCredentialHandler(t, "", true)
	h.strip = true
	secret := store.NewSecret(store.KeyPrefix)
	reqs := make([]*http.Request, 0, 200)
	for range 200 {
		reqs = append(reqs, browserLikeRequest(secret))
	}
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		r := reqs[i]
		i++
		if p := h.credentials(r); p.secret != secret || p.bearer || !p.header {
			t.Fatalf("credentials: %+v", p)
		}
		delete(r.Header, h.header)
		h.stripIdentity(r.Header)
		if _, ok := r.Header["X-Api-Key-Name"]; ok {
			t.Fatal("identity header kept")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
}

// BenchmarkCredentials: reading the sources and stripping the identity
// namespace of a request with a dozen headers.
func BenchmarkCredentials(b *testing.B) {
	h := &Handler{}
	if err := h.provisionDefaults(); err != nil {
		b.Fatal(err)
	}
	r := browserLikeRequest(store.NewSecret(store.KeyPrefix))
	b.ReportAllocs()
	for b.Loop() {
		if p := h.credentials(r); p.secret == "" {
			b.Fatal("no secret")
		}
		h.stripIdentity(r.Header)
	}
}
