// Package admin is keygate's admin REST API (SPEC section 4): tenants,
// settings, users, user tokens, groups, API keys and audit events, served as
// JSON under /v1. It is a plain http.Handler over a *store.Store and imports
// nothing from Caddy; the api_key_admin Caddy handler only calls ServeHTTP.
//
// Every request is authenticated (Authorization: Bearer <token>) as either
// the operator (a token from Config.OperatorTokens) or a user of one tenant
// (a kga_… user token). Authorization follows SPEC section 4; see access.go.
package admin

import (
	"net/http"
	"time"

	"github.com/keygate/keygate/store"
)

// Config configures a Handler.
type Config struct {
	// OperatorTokens are the operator's bearer tokens (usually one, from
	// {env.KEYGATE_OPERATOR_TOKEN}). Empty strings are ignored, so an unset
	// variable never lets an empty token in.
	OperatorTokens []string
	// Now is the handler's clock (default time.Now). The store keeps its
	// own clock for every domain decision.
	Now func() time.Time
	// Logger, when set, receives internal (storage) errors, which the client
	// only sees as 503 "unavailable", and a line for each failed
	// authentication (client address and a token hint: a public
	// prefix, a short fingerprint and its length). Nothing logged ever holds a secret. A
	// Logger that also has Warnf(format string, args ...any) gets the
	// failed authentications there.
	Logger store.Logger

	// ClientIP returns a request's client address, which the failed-
	// authentication throttle counts by and its log lines name (default:
	// the host of RemoteAddr). The Caddy handler passes Caddy's client_ip,
	// which honours trusted_proxies.
	ClientIP func(*http.Request) string
	// AuthFailureBurst is how many bad tokens a client address may present
	// before it is slowed down (default 10); after that one more is looked
	// at every AuthFailureInterval (default 1s), and requests in between
	// answer 429 with Retry-After without their token being checked.
	AuthFailureBurst    int
	AuthFailureInterval time.Duration
	// AuthFailureClients bounds how many client addresses the throttle
	// remembers (default 16384, about 2 MB).
	AuthFailureClients int
	// OnAuthFailure, when set, is called once for each refused token
	// (throttled false) and each request refused with 429 because its
	// address is throttled (throttled true): the Caddy module counts them
	// in /metrics.
	OnAuthFailure func(throttled bool)
}

// Handler serves the admin REST API. It is safe for concurrent use.
type Handler struct {
	st        *store.Store
	now       func() time.Time
	log       store.Logger
	operators [][32]byte // SHA-256 digests of the operator tokens
	mux       *http.ServeMux
	patterns  []string // every registered "METHOD /path" (tests check each is covered)

	clientIP    func(*http.Request) string
	throttle    *authThrottle
	onAuthFails func(throttled bool)
}

// New returns the admin API handler over st.
func New(st *store.Store, cfg Config) *Handler {
	h := &Handler{st: st, now: cfg.Now, log: cfg.Logger, mux: http.NewServeMux(),
		clientIP: cfg.ClientIP, onAuthFails: cfg.OnAuthFailure,
		throttle: newAuthThrottle(cfg.AuthFailureBurst, cfg.AuthFailureInterval, cfg.AuthFailureClients)}
	if h.now == nil {
		h.now = time.Now
	}
	if h.clientIP == nil {
		h.clientIP = remoteIP
	}
	for _, tok := range cfg.OperatorTokens {
		if tok != "" {
			h.operators = append(h.operators, digest(tok))
		}
	}
	h.routes()
	return h
}

// endpoint is one authenticated API operation. It writes its success answer
// itself and returns any failure, which the caller turns into the JSON error
// answer (see errors.go).
type endpoint func(w http.ResponseWriter, r *http.Request, p *principal) error

// routes registers every path of SPEC section 4.
func (h *Handler) routes() {
	h.handle("GET /v1/me", h.getMe)

	h.handle("POST /v1/tenants", h.createTenant)
	h.handle("GET /v1/tenants", h.listTenants)
	h.handle("GET /v1/tenants/{tenant}", h.getTenant)
	h.handle("PATCH /v1/tenants/{tenant}", h.updateTenant)
	h.handle("GET /v1/tenants/{tenant}/settings", h.getSettings)
	h.handle("PATCH /v1/tenants/{tenant}/settings", h.updateSettings)

	h.handle("GET /v1/tenants/{tenant}/users", h.listUsers)
	h.handle("PUT /v1/tenants/{tenant}/users/{user}", h.putUser)
	h.handle("DELETE /v1/tenants/{tenant}/users/{user}", h.deleteUser)
	h.handle("POST /v1/tenants/{tenant}/users/{user}/tokens", h.createToken)
	h.handle("GET /v1/tenants/{tenant}/users/{user}/tokens", h.listTokens)
	h.handle("DELETE /v1/tenants/{tenant}/users/{user}/tokens/{token}", h.revokeToken)

	h.handle("GET /v1/tenants/{tenant}/groups", h.listGroups)
	h.handle("PUT /v1/tenants/{tenant}/groups/{group}", h.putGroup)
	h.handle("GET /v1/tenants/{tenant}/groups/{group}", h.getGroup)
	h.handle("DELETE /v1/tenants/{tenant}/groups/{group}", h.deleteGroup)

	h.handle("POST /v1/tenants/{tenant}/keys", h.createKey)
	h.handle("GET /v1/tenants/{tenant}/keys", h.listKeys)
	h.handle("DELETE /v1/tenants/{tenant}/keys", h.deleteOwnerKeys)
	h.handle("POST /v1/tenants/{tenant}/keys/revoke", h.revokeKeys)
	h.handle("POST /v1/tenants/{tenant}/keys/import", h.importKeys)
	h.handle("GET /v1/tenants/{tenant}/keys/{key}", h.getKey)
	h.handle("PATCH /v1/tenants/{tenant}/keys/{key}", h.updateKey)
	h.handle("DELETE /v1/tenants/{tenant}/keys/{key}", h.deleteKey)
	h.handle("POST /v1/tenants/{tenant}/keys/{key}/rotate", h.rotateKey)
	h.handle("POST /v1/tenants/{tenant}/keys/{key}/revoke", h.revokeKey)
	h.handle("GET /v1/tenants/{tenant}/keys/{key}/usage", h.keyUsage)

	h.handle("GET /v1/tenants/{tenant}/events", h.listEvents)
}

// handle registers fn behind authentication.
func (h *Handler) handle(pattern string, fn endpoint) {
	h.patterns = append(h.patterns, pattern)
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		p, err := h.authenticate(r)
		if err == nil {
			err = fn(w, r, p)
		}
		if err != nil {
			h.writeError(w, err)
		}
	})
}

// ServeHTTP answers one admin API request. Unknown paths answer 404 and
// known paths with another method 405 (with Allow), both as JSON and before
// authentication: the API's shape is public, its data is not.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	// Admin answers are never cacheable: some carry secrets, all carry
	// tenant data.
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	if _, pattern := h.mux.Handler(r); pattern == "" {
		if allow := h.allowedMethods(r); allow != "" {
			hdr.Set("Allow", allow)
			h.writeError(w, errMethodNotAllowed(r.Method))
			return
		}
		h.writeError(w, errNoRoute)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// probeMethods are the methods the API uses, in the order Allow lists them.
var probeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// allowedMethods lists the methods registered for r's path ("" when the path
// is unknown).
func (h *Handler) allowedMethods(r *http.Request) string {
	allow := ""
	for _, m := range probeMethods {
		probe := *r
		probe.Method = m
		if _, pattern := h.mux.Handler(&probe); pattern != "" {
			if allow != "" {
				allow += ", "
			}
			allow += m
		}
	}
	return allow
}
