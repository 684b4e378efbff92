package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// CORS (SPEC 3, option cors): keygate answers the preflights of allowed
// origins itself, since a browser's preflight carries no key and would get
// 401 (PITFALLS 19), and makes every answer to an allowed origin readable
// by its page, rejections included.

// corsPolicy is the provisioned cors option.
type corsPolicy struct {
	any     bool     // cors *: every origin
	origins []string // normalised (lower case, no default port)
	// allowHeaders is appended to the headers a preflight asks for: the
	// key header and Authorization.
	allowHeaders string
}

// corsMaxAge is how long a browser may cache a preflight answer (Chromium
// caps it at 2 h, Firefox at 24 h).
const corsMaxAge = "7200"

// corsExposed are keygate's response headers that page code may read.
// ("RateLimit-*" is no wildcard in Access-Control-Expose-Headers.)
const corsExposed = "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, WWW-Authenticate"

var (
	headerOrigin        = []string{"Origin"}
	headerPreflightVary = []string{"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
	headerExposed       = []string{corsExposed}
	headerMaxAge        = []string{corsMaxAge}
)

// newCORSPolicy returns the policy of the cors option (nil without it).
func newCORSPolicy(origins []string, keyHeader string) (*corsPolicy, error) {
	if len(origins) == 0 {
		return nil, nil
	}
	p := &corsPolicy{allowHeaders: keyHeader + ", " + authorization}
	for _, o := range origins {
		if o == "*" {
			p.any = true
			continue
		}
		n, err := normalOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("cors origin %q: %w", o, err)
		}
		p.origins = append(p.origins, n)
	}
	return p, nil
}

// normalOrigin checks that s is an origin as a browser sends it in Origin,
// scheme://host[:port], and returns it as browsers serialise it: lower
// case, without the scheme's default port.
func normalOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("want scheme://host[:port] or *")
	}
	switch {
	case u.Scheme == "" || u.Host == "" || u.Opaque != "":
		return "", errors.New("want scheme://host[:port] or *")
	case u.User != nil:
		return "", errors.New("an origin has no user information")
	case u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", errors.New("an origin has no path, query or fragment (not even a trailing slash)")
	case u.Hostname() == "" || strings.Contains(u.Hostname(), "*"):
		return "", errors.New("want one host (wildcards are * alone)")
	}
	scheme, host, port := strings.ToLower(u.Scheme), strings.ToLower(u.Hostname()), u.Port()
	if strings.HasSuffix(u.Host, ":") {
		return "", errors.New("empty port")
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("bad port %q", port)
		}
	}
	if scheme == "https" && port == "443" || scheme == "http" && port == "80" {
		port = "" // browsers omit the default port
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, nil
}

// allowedOrigin returns r's Origin when the policy allows it, else "".
// It does not allocate.
func (p *corsPolicy) allowedOrigin(r *http.Request) string {
	vals := r.Header["Origin"]
	if len(vals) != 1 || vals[0] == "" || vals[0] == "null" {
		return ""
	}
	if p.any {
		return vals[0]
	}
	for _, o := range p.origins {
		if o == vals[0] {
			return o
		}
	}
	return ""
}

// isPreflight reports whether r is a CORS preflight: OPTIONS with
// Access-Control-Request-Method (its Origin is checked by allowedOrigin).
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && len(r.Header["Access-Control-Request-Method"]) > 0
}

// preflight answers an allowed origin's preflight with 204: the method it
// asks for, the headers it asks for plus the key header and Authorization
// (keygate does not filter request headers; the upstream may).
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request, origin string) error {
	h.shared.outcomes.inc(outcomePreflight)
	hdr := w.Header()
	hdr["Access-Control-Allow-Origin"] = []string{origin}
	hdr["Access-Control-Allow-Methods"] = []string{strings.Join(r.Header["Access-Control-Request-Method"], ", ")}
	allow := h.cors.allowHeaders
	if asked := r.Header["Access-Control-Request-Headers"]; len(asked) > 0 {
		allow = strings.Join(asked, ", ") + ", " + allow
	}
	hdr["Access-Control-Allow-Headers"] = []string{allow}
	hdr["Access-Control-Max-Age"] = headerMaxAge
	hdr["Vary"] = append(hdr["Vary"], headerPreflightVary...)
	w.WriteHeader(outcomeTable[outcomePreflight].status)
	return nil
}

// corsHeaders marks an answer to an allowed origin as readable by its page:
// set before the request is admitted or denied, so rejections carry them
// too (also through handle_errors).
func corsHeaders(hdr http.Header, origin string) {
	hdr["Access-Control-Allow-Origin"] = []string{origin}
	hdr["Access-Control-Expose-Headers"] = append(hdr["Access-Control-Expose-Headers"], headerExposed...)
	hdr["Vary"] = append(hdr["Vary"], headerOrigin...)
}

// corsWriter keeps Access-Control-Allow-Origin single-valued on an
// admitted request's answer: reverse_proxy adds the upstream's headers to
// keygate's, and a browser refuses an answer with two values. The
// upstream's other CORS headers (Expose-Headers, Allow-Credentials) stay.
type corsWriter struct {
	*caddyhttp.ResponseWriterWrapper
	origin string
	sent   bool
}

func (c *corsWriter) WriteHeader(status int) {
	if !c.sent && status >= 200 { // not on 1xx (101 Switching Protocols, 103)
		c.sent = true
		c.Header()["Access-Control-Allow-Origin"] = []string{c.origin}
	}
	c.ResponseWriterWrapper.WriteHeader(status)
}

func (c *corsWriter) Write(p []byte) (int, error) {
	if !c.sent {
		c.WriteHeader(http.StatusOK)
	}
	return c.ResponseWriterWrapper.Write(p)
}

func (c *corsWriter) ReadFrom(r io.Reader) (int64, error) {
	if !c.sent {
		c.WriteHeader(http.StatusOK)
	}
	return c.ResponseWriterWrapper.ReadFrom(r)
}
