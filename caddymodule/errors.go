package caddymodule

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/store"
)

// denial is what deny needs beyond the outcome: the key the request was
// identified as, whose usage records the outcome (view nil before a key is
// identified), and for a 429 the rate-limit decision behind it.
type denial struct {
	st    *store.Store
	view  *store.KeyView
	ip    netip.Addr
	now   time.Time
	limit decision
}

// deny is the single exit of every request keygate refuses: it counts the
// outcome, records it in the key's usage, sets the outcome's headers and
// answers as outcomeTable says.
//
//   - Every 401 carries the WWW-Authenticate challenge (with
//     error="invalid_token" when a credential was presented); a 429 carries
//     Retry-After and RateLimit-*. Headers set before (CORS) stay.
//   - A gRPC request gets a trailers-only answer (grpcReject).
//   - When the server has handle_errors routes, deny returns a
//     caddyhttp.Error so they can shape the answer (the code is in the
//     placeholder {http.auth.api_key.error}); otherwise it writes the spec's
//     JSON body itself.
func (h *Handler) deny(w http.ResponseWriter, r *http.Request, o outcome, d denial) error {
	row := &outcomeTable[o]
	h.shared.outcomes.inc(o)
	if d.view != nil && row.usage != noUsage {
		d.st.RecordUse(d.view, d.ip, row.usage, d.now)
	}
	hdr := w.Header()
	switch row.status {
	case http.StatusUnauthorized:
		// Names are canonical already: assigning skips Set's
		// re-canonicalizing (a 401 is the cheapest answer keygate gives,
		// so its few hundred nanoseconds show).
		if row.invalidToken {
			hdr[wwwAuthenticate] = []string{h.challengeInvalid}
		} else {
			hdr[wwwAuthenticate] = []string{h.challenge}
		}
	case http.StatusTooManyRequests:
		hdr.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(d.limit.retryAfter)))))
		hdr.Set("RateLimit-Limit", strconv.Itoa(d.limit.limit))
		hdr.Set("RateLimit-Remaining", strconv.Itoa(d.limit.remaining))
		hdr.Set("RateLimit-Reset", strconv.Itoa(max(1, int(math.Ceil(d.limit.resetAfter)))))
	}
	if isGRPC(r) {
		grpcReject(w, row)
		return nil
	}
	if h.hasErrorRoutes(r) {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("http.auth.api_key.error", row.code)
		}
		return caddyhttp.Error(row.status, errors.New(row.code+": "+row.message))
	}
	writeJSONError(w, row.status, &errorBodies[o])
	return nil
}

// hasErrorRoutes reports whether the server has handle_errors routes. It is
// known from Provision (a server's config does not change while it runs);
// a handler provisioned by hand (tests) asks the request's server.
func (h *Handler) hasErrorRoutes(r *http.Request) bool {
	if h.errorRoutesKnown {
		return h.errorRoutes
	}
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return ok && serverHasErrorRoutes(srv)
}

func serverHasErrorRoutes(srv *caddyhttp.Server) bool {
	return srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
}

const (
	wwwAuthenticate = "Www-Authenticate" // canonical form of WWW-Authenticate
	contentType     = "Content-Type"
	contentLength   = "Content-Length"
	cacheControl    = "Cache-Control"
)

// errorBody is an outcome's JSON answer, built once.
type errorBody struct {
	body   []byte
	length string // len(body), for Content-Length
}

// errorBodies are {"error":{"code":…,"message":…}} of every outcome. Codes
// and messages are our own constants, so no escaping beyond quoting is
// needed.
var errorBodies = func() (b [numOutcomes]errorBody) {
	for o := range b {
		row := &outcomeTable[o]
		body := `{"error":{"code":` + strconv.Quote(row.code) + `,"message":` + strconv.Quote(row.message) + "}}\n"
		b[o] = errorBody{body: []byte(body), length: strconv.Itoa(len(body))}
	}
	return b
}()

// writeJSONError writes an outcome's JSON answer. The header values share
// one per-request array (one allocation, not three); the body is the
// shared, never modified errorBodies entry.
func writeJSONError(w http.ResponseWriter, status int, e *errorBody) {
	hdr := w.Header()
	vals := &[3]string{"application/json", e.length, "no-store"}
	hdr[contentType] = vals[0:1:1]
	hdr[contentLength] = vals[1:2:2]
	hdr[cacheControl] = vals[2:3:3]
	w.WriteHeader(status)
	_, _ = w.Write(e.body)
}

// isGRPC reports whether r is a gRPC call (Content-Type application/grpc or
// application/grpc+<codec>; grpc-web is not: its clients read HTTP statuses).
func isGRPC(r *http.Request) bool {
	vals := r.Header["Content-Type"]
	if len(vals) != 1 {
		return false
	}
	const grpcType = "application/grpc"
	ct := vals[0]
	if len(ct) < len(grpcType) || !strings.EqualFold(ct[:len(grpcType)], grpcType) {
		return false
	}
	return len(ct) == len(grpcType) || ct[len(grpcType)] == '+'
}

// grpcReject answers a gRPC call in the trailers-only form: HTTP 200 and
// one header block (sent with END_STREAM, as no body follows) carrying
// grpc-status and grpc-message, which gRPC clients read as the call's
// status. grpc-message is the outcome's code: plain ASCII, no
// percent-encoding needed.
func grpcReject(w http.ResponseWriter, row *outcomeRow) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/grpc")
	hdr.Set("Grpc-Status", strconv.Itoa(int(row.grpc)))
	hdr.Set("Grpc-Message", row.code)
	w.WriteHeader(http.StatusOK)
}
