package caddymodule

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/keygate/keygate/store"
)

func TestQueryParam(t *testing.T) {
	for _, c := range []struct {
		raw, value string
		n          int
	}{
		{"", "", 0},
		{"api_key=K", "K", 1},
		{"a=1&api_key=K&b=2", "K", 1},
		{"api_key", "", 1},
		{"api_key=", "", 1},
		{"api%5Fkey=K", "K", 1},         // the name as the upstream's parser decodes it
		{"api_key=K%2B1", "K+1", 1},     // escaped value
		{"api_key=K&api_key=L", "K", 2}, // duplicate
		{"api_key=K&API_KEY=L", "K", 1}, // names are case-sensitive
		{"x_api_key=K&api_keys=L&apikey=M", "", 0},
		{"api_key=%zz", "%zz", 1}, // a bad escape stays as sent
	} {
		v, n := queryParam(c.raw, "api_key")
		if v != c.value || n != c.n {
			t.Errorf("%q: %q %d, want %q %d", c.raw, v, n, c.value, c.n)
		}
	}
}

func TestWithoutParam(t *testing.T) {
	for raw, want := range map[string]string{
		"api_key=K":     "",
		"api_key=K&b=2": "b=2",
		"a=1&api_key=K": "a=1",
		"z=%2F%2f&api_key=K&a=+1&a=2&m=a%20b;c=d": "z=%2F%2f&a=+1&a=2&m=a%20b;c=d", // order, escapes and oddities kept
		"a=1&api%5Fkey=K&api_key=L&b":             "a=1&b",
		"a=1&&b=2":                                "a=1&&b=2",
		"a=1&":                                    "a=1&",
		"api_keys=1&x=api_key":                    "api_keys=1&x=api_key",
	} {
		if got := withoutParam(raw, "api_key"); got != want {
			t.Errorf("%q: %q, want %q", raw, got, want)
		}
	}
	r, _ := http.NewRequest("GET", "http://gw/ws?b=2&api_key=K&a=%41", nil)
	r.RequestURI = "/ws?b=2&api_key=K&a=%41"
	stripQueryParam(r, "api_key")
	if r.URL.RawQuery != "b=2&a=%41" || r.RequestURI != "/ws?b=2&a=%41" || r.URL.String() != "http://gw/ws?b=2&a=%41" {
		t.Errorf("stripped: %q %q %q", r.URL.RawQuery, r.RequestURI, r.URL)
	}
	r, _ = http.NewRequest("GET", "http://gw/ws?api_key=K", nil)
	r.RequestURI = "/ws?api_key=K"
	stripQueryParam(r, "api_key")
	if r.URL.RawQuery != "" || r.RequestURI != "/ws" || r.URL.String() != "http://gw/ws" {
		t.Errorf("stripped: %q %q %q", r.URL.RawQuery, r.RequestURI, r.URL)
	}
}

func TestScrubQueryParams(t *testing.T) {
	names := []string{"api_key", "token"}
	for uri, want := range map[string]string{
		"/ws?api_key=secret1":                  "/ws?api_key=REDACTED",
		"/ws?a=1&api%5Fkey=secret1&token=s2&b": "/ws?a=1&api%5Fkey=REDACTED&token=REDACTED&b",
		"/ws?api_key=a&api_key=b":              "/ws?api_key=REDACTED&api_key=REDACTED",
		"/ws?a=1#api_key=x":                    "/ws?a=1#api_key=x",
		"/api_key=secret":                      "/api_key=secret",
	} {
		got, changed := scrubQueryParams(uri, names)
		if got != want || changed != (uri != want) {
			t.Errorf("%q: %q %v, want %q", uri, got, changed, want)
		}
	}
}

// TestQuerySource: the parameter is the third source, a duplicate is
// invalid_key, the option is validated, and reading it allocates nothing
// (nor does it cost anything when the option is off).
func TestQuerySource(t *testing.T) {
	h := newCredentialHandler(t, "", true)
	h.Query = "api_key"
	req := func(target string, hdr http.Header) *http.Request {
		r, _ := http.NewRequest("GET", "http://gw"+target, nil)
		for k, v := range hdr {
			r.Header[k] = v
		}
		return r
	}
	for _, c := range []struct {
		target         string
		hdr            http.Header
		secret         string
		dup, query, hd bool
	}{
		{"/ws?api_key=Q", nil, "Q", false, true, false},
		{"/ws?api_key=Q", http.Header{"X-Api-Key": {"H"}}, "H", false, true, true},
		{"/ws?api_key=Q", http.Header{"Authorization": {"Bearer B"}}, "B", false, true, false},
		{"/ws?api_key=Q&api_key=Q", nil, "", true, true, false},
		{"/ws?api_key=%20", nil, "", false, true, false},
		{"/ws?other=1", nil, "", false, false, false},
	} {
		p := h.credentials(req(c.target, c.hdr))
		if p.secret != c.secret || p.duplicate != c.dup || p.query != c.query || p.header != c.hd {
			t.Errorf("%s %v: %+v", c.target, c.hdr, p)
		}
	}

	secret := store.NewSecret(store.KeyPrefix)
	r := req("/ws?x=1&api_key="+secret+"&y=2", nil)
	if n := testing.AllocsPerRun(100, func() {
		if p := h.credentials(r); p.secret != secret {
			t.Fatal(p)
		}
	}); n != 0 {
		t.Errorf("query on: %v allocations", n)
	}
	h.Query = ""
	r = browserLikeRequest(secret)
	r.URL.RawQuery = "api_key=other&x=1"
	if n := testing.AllocsPerRun(100, func() {
		if p := h.credentials(r); p.secret != secret || p.query {
			t.Fatal(p)
		}
	}); n != 0 {
		t.Errorf("query off: %v allocations", n)
	}

	for _, bad := range []string{"", "a&b", "a=b", "a b", "a#", "a;b"} {
		h := &Handler{Query: bad, Realm: "keygate"}
		if bad == "" {
			err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key {\n\tquery\n}"))
			if err == nil {
				t.Error("query without a name accepted")
			}
			continue
		}
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "query") {
			t.Errorf("Validate query %q: %v", bad, err)
		}
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key {\n\tquery \"" + bad + "\"\n}"))
		if err == nil || !strings.Contains(err.Error(), "query") {
			t.Errorf("Caddyfile query %q: %v", bad, err)
		}
	}
}

// FuzzQueryStrip: for any raw query, removing the parameter leaves no
// occurrence of it (as read by queryParam, and by Go's own parser), keeps
// every other segment byte for byte and in order, and the log scrubber
// leaves no value of it either.
func FuzzQueryStrip(f *testing.F) {
	for _, s := range []string{"", "api_key=K", "a=1&api_key=K&b=%41", "api%5Fkey=K&api_key", "&&api_key=&", "a;b=1&api_key=x+y", "api_key=%zz&x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		const name = "api_key"
		out := withoutParam(raw, name)
		if _, n := queryParam(out, name); n != 0 {
			t.Fatalf("%q → %q still has the parameter", raw, out)
		}
		if vals, err := url.ParseQuery(out); err == nil && vals.Has(name) {
			t.Fatalf("%q → %q: Go's parser still finds it", raw, out)
		}
		var kept []string
		for _, seg := range strings.Split(raw, "&") {
			if key, _ := splitSegment(seg); !paramName(key, name) {
				kept = append(kept, seg)
			}
		}
		if want := strings.Join(kept, "&"); out != want {
			t.Fatalf("%q → %q, want %q", raw, out, want)
		}
		if strings.Contains(raw, "#") {
			return // a logged RequestURI has no fragment
		}
		logged, _ := scrubQueryParams("/p?"+raw, []string{name})
		_, q, _ := strings.Cut(logged, "?")
		for _, seg := range strings.Split(q, "&") {
			if key, v := splitSegment(seg); paramName(key, name) && v != "REDACTED" {
				t.Fatalf("%q logged as %q", raw, logged)
			}
		}
	})
}
