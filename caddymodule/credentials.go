package caddymodule

import (
	"net/http"
	"strings"
)

// presented is what a request carried in keygate's credential sources.
// Sources are read in the spec's order: the key header, then
// "Authorization: Bearer", then the query parameter (option query).
type presented struct {
	secret    string // the credential to verify: the first non-blank source
	any       bool   // some source carried a non-blank credential
	duplicate bool   // a source was present more than once: 401 invalid_key
	header    bool   // the key header is present (stripped on admit)
	bearer    bool   // Authorization carries the Bearer scheme (stripped on admit)
	query     bool   // the query parameter is present (stripped on admit)
}

// authorization is http.CanonicalHeaderKey("Authorization").
const authorization = "Authorization"

// credentials reads every source. It does not allocate: header names are
// canonical already, so it indexes the map directly.
func (h *Handler) credentials(r *http.Request) presented {
	var p presented
	if vals := r.Header[h.header]; len(vals) > 0 {
		p.header = true
		if len(vals) > 1 {
			// Two X-API-Key fields: which one would an intermediary,
			// a log or the upstream believe? Neither is admitted.
			p.duplicate, p.any = true, true
		} else if v := strings.TrimSpace(vals[0]); v != "" {
			p.secret, p.any = v, true
		}
	}
	if h.bearer {
		vals := r.Header[authorization]
		for _, v := range vals {
			tok, ok := bearerToken(v)
			if !ok {
				continue
			}
			if p.bearer || len(vals) > 1 {
				// Two Authorization fields, one of them Bearer.
				p.duplicate, p.any = true, true
			}
			p.bearer = true
			if tok != "" {
				p.any = true
				if p.secret == "" {
					p.secret = tok
				}
			}
		}
	}
	if h.Query != "" && r.URL.RawQuery != "" {
		v, n := queryParam(r.URL.RawQuery, h.Query)
		p.query = n > 0
		if n > 1 {
			p.duplicate, p.any = true, true
		} else if v = strings.TrimSpace(v); v != "" {
			p.any = true
			if p.secret == "" {
				p.secret = v
			}
		}
	}
	return p
}

// bearerToken returns the credential of an "Authorization: Bearer <token>"
// value (scheme case-insensitive) and whether the scheme is Bearer.
func bearerToken(v string) (string, bool) {
	if len(v) < 7 || !strings.EqualFold(v[:7], "Bearer ") {
		return "", false
	}
	return strings.TrimSpace(v[7:]), true
}

// identityPrefix is the request-header namespace keygate's docs use for the
// identity a gateway forwards (header_up X-Api-Key-Id {http.auth.api_key.id}).
// A client must not be able to pre-fill it: every client header in it is
// removed on admit, before the handlers that add the real values.
const identityPrefix = "X-Api-Key-"

// stripIdentity deletes the client's headers in the identity namespace,
// except the configured key header (which strip_credentials governs). It
// does not allocate.
func (h *Handler) stripIdentity(hdr http.Header) {
	for k := range hdr {
		if len(k) >= len(identityPrefix) && strings.EqualFold(k[:len(identityPrefix)], identityPrefix) && k != h.header {
			delete(hdr, k)
		}
	}
}
