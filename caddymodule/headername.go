package caddymodule

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// headerKept returns an error naming the fix when srv would drop request
// headers called name before any handler runs, so api_key would answer
// missing_key to every request without a word (PITFALLS 20). It mirrors
// caddyhttp.Server's filter (Caddy 2.11): names with "_" or "." are dropped
// unless listed in expected_underscore_headers / expected_dot_headers (a
// trailing "*" is a prefix glob; a name with both characters needs an exact
// entry), and listing one drops its hyphenated spelling.
func headerKept(srv *caddyhttp.Server, name string) error {
	key := http.CanonicalHeaderKey(name)
	under, dot := strings.ContainsRune(key, '_'), strings.ContainsRune(key, '.')
	switch {
	case under && dot:
		if listedExact(srv.ExpectedUnderscoreHeaders, key) || listedExact(srv.ExpectedDotHeaders, key) {
			return nil
		}
		return fmt.Errorf("header %q: Caddy drops request headers whose names contain \"_\" or \".\", so no key "+
			"would ever arrive: use a name with hyphens only, or list it exactly in the server's "+
			"expected_underscore_headers (Caddyfile: servers { expected_underscore_headers %s })", name, name)
	case under:
		if listed(srv.ExpectedUnderscoreHeaders, key) {
			return nil
		}
		return fmt.Errorf("header %q: Caddy drops request headers whose names contain \"_\", so no key would "+
			"ever arrive: use %q, or allow it for this server (Caddyfile: servers { expected_underscore_headers %s }; "+
			"JSON: \"expected_underscore_headers\")", name, strings.ReplaceAll(name, "_", "-"), name)
	case dot:
		if listed(srv.ExpectedDotHeaders, key) {
			return nil
		}
		return fmt.Errorf("header %q: Caddy drops request headers whose names contain \".\", so no key would "+
			"ever arrive: use %q, or allow it for this server (Caddyfile: servers { expected_dot_headers %s }; "+
			"JSON: \"expected_dot_headers\")", name, strings.ReplaceAll(name, ".", "-"), name)
	}
	for _, l := range []struct {
		entries []string
		sep     string
		option  string
	}{{srv.ExpectedUnderscoreHeaders, "_", "expected_underscore_headers"}, {srv.ExpectedDotHeaders, ".", "expected_dot_headers"}} {
		for _, e := range l.entries {
			glob := strings.HasSuffix(e, "*")
			hyphenated := http.CanonicalHeaderKey(strings.ReplaceAll(strings.TrimSuffix(e, "*"), l.sep, "-"))
			if hyphenated == key || (glob && strings.HasPrefix(key, hyphenated)) {
				return fmt.Errorf("header %q: the server's %s entry %q makes Caddy drop the hyphenated "+
					"spelling %q, so no key would ever arrive: remove the entry or read the key from another header",
					name, l.option, e, key)
			}
		}
	}
	return nil
}

// listed reports whether an allowlist entry (exact or trailing-"*" glob,
// case-insensitive) keeps the canonical header key.
func listed(entries []string, key string) bool {
	for _, e := range entries {
		if p, glob := strings.CutSuffix(e, "*"); glob {
			if strings.HasPrefix(key, http.CanonicalHeaderKey(p)) {
				return true
			}
		} else if http.CanonicalHeaderKey(e) == key {
			return true
		}
	}
	return false
}

func listedExact(entries []string, key string) bool {
	for _, e := range entries {
		if !strings.HasSuffix(e, "*") && http.CanonicalHeaderKey(e) == key {
			return true
		}
	}
	return false
}
