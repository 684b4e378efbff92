package caddymodule

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The query option (SPEC 3): a browser's WebSocket cannot set headers, so
// the key may come as a query parameter, the third source. The raw query
// is read and edited as text, never re-encoded through url.Values, so the
// upstream sees every other parameter exactly as the client sent it.

// validQueryParam accepts a parameter name that can be matched in a raw
// query: not empty, no separator or space.
func validQueryParam(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if strings.ContainsAny(s, "&=#?; \t\r\n") {
		return errors.New("must not contain & = # ? ; or spaces")
	}
	return nil
}

// paramName reports whether the name part of a query segment is name,
// decoding it only when it is escaped (api%5Fkey is api_key for the
// upstream's parser too).
func paramName(key, name string) bool {
	if key == name {
		return true
	}
	if !strings.ContainsAny(key, "%+") {
		return false
	}
	k, err := url.QueryUnescape(key)
	return err == nil && k == name
}

// splitSegment splits one &-separated query segment at its first '='.
func splitSegment(seg string) (key, value string) {
	if i := strings.IndexByte(seg, '='); i >= 0 {
		return seg[:i], seg[i+1:]
	}
	return seg, ""
}

// queryParam returns the (unescaped) value of the first occurrence of name
// in the raw query and how many times it occurs. It does not allocate
// unless the value is escaped.
func queryParam(raw, name string) (value string, n int) {
	for raw != "" {
		var seg string
		seg, raw, _ = strings.Cut(raw, "&")
		key, v := splitSegment(seg)
		if !paramName(key, name) {
			continue
		}
		n++
		if n == 1 {
			value = v
			if strings.ContainsAny(v, "%+") {
				if u, err := url.QueryUnescape(v); err == nil {
					value = u
				} // a bad escape stays as sent: no key looks like that
			}
		}
	}
	return value, n
}

// withoutParam returns the raw query with every occurrence of name
// removed; the other segments keep their order and bytes.
func withoutParam(raw, name string) string {
	var b strings.Builder
	b.Grow(len(raw))
	first := true
	for rest := raw; ; {
		seg, tail, more := strings.Cut(rest, "&")
		if key, _ := splitSegment(seg); !paramName(key, name) {
			if !first {
				b.WriteByte('&')
			}
			b.WriteString(seg)
			first = false
		}
		if !more {
			break
		}
		rest = tail
	}
	return b.String()
}

// stripQueryParam removes the parameter from the request the next handlers
// see: the URL reverse_proxy forwards and the RequestURI placeholders read.
// Caddy puts the original URL back before handle_errors routes run
// (Server.ServeHTTP, caddy#3717), from a copy it keeps in the request's
// context: the parameter goes from that copy too, so an error route that
// proxies does not forward the key.
func stripQueryParam(r *http.Request, name string) {
	q := withoutParam(r.URL.RawQuery, name)
	r.URL.RawQuery = q
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil && orig.URL != r.URL {
		orig.URL.RawQuery = withoutParam(orig.URL.RawQuery, name)
	}
	if i := strings.IndexByte(r.RequestURI, '?'); i >= 0 {
		if q == "" {
			r.RequestURI = r.RequestURI[:i]
		} else {
			r.RequestURI = r.RequestURI[:i+1] + q
		}
	}
}

// scrubQueryParams returns uri with the values of the named parameters
// replaced by REDACTED, for logs.
func scrubQueryParams(uri string, names []string) (string, bool) {
	path, raw, ok := strings.Cut(uri, "?")
	if !ok || len(names) == 0 {
		return uri, false
	}
	frag := ""
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		raw, frag = raw[:i], raw[i:]
	}
	var b strings.Builder
	changed := false
	for i, seg := range strings.Split(raw, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		key, _ := splitSegment(seg)
		hit := false
		for _, name := range names {
			if paramName(key, name) {
				hit = true
				break
			}
		}
		if hit {
			b.WriteString(key + "=REDACTED")
			changed = true
		} else {
			b.WriteString(seg)
		}
	}
	if !changed {
		return uri, false
	}
	return path + "?" + b.String() + frag, true
}
