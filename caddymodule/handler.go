package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"
	"unique"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/keygate/keygate/store"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the api_key gateway: it admits a request only with a valid API
// key of its tenant, then hands it to the next handler (usually
// reverse_proxy). Rejections follow the spec's outcome table, in order.
type Handler struct {
	// Tenant whose keys this route accepts. It need not exist yet: keys of a
	// missing tenant are simply unknown. Default "default".
	Tenant string `json:"tenant,omitempty"`

	// Header carrying the key. Default "X-API-Key".
	Header string `json:"header,omitempty"`

	// Bearer also reads "Authorization: Bearer <key>". Default true.
	Bearer *bool `json:"bearer,omitempty"`

	// Query names a query parameter that carries the key too, read after
	// the header and Bearer: browsers' WebSocket API cannot set headers.
	// With strip_credentials it is removed from the URI the upstream sees
	// (other parameters keep their order and encoding); it is never
	// written to a log either way. Default: off.
	Query string `json:"query,omitempty"`

	// StripCredentials removes every credential source that carried a
	// keygate credential (the key header, Authorization when it has the
	// Bearer scheme, the query parameter) before the request goes
	// upstream, so the upstream never sees a secret. An Authorization
	// header with another scheme (Basic…) is not keygate's and is left for
	// the upstream. Default true.
	StripCredentials *bool `json:"strip_credentials,omitempty"`

	// Realm is the realm of the WWW-Authenticate challenge on every 401.
	// Printable ASCII without quotes or backslashes. Default "keygate".
	Realm string `json:"realm,omitempty"`

	// AllowGroups, when set, admits only keys of these groups on this route.
	AllowGroups []string `json:"allow_groups,omitempty"`

	// CORS lists the origins whose browser pages may call this route, as
	// browsers send them in Origin ("https://app.example.com",
	// "http://127.0.0.1:5173"), or "*" for every origin. keygate answers
	// their preflights itself (204, never reaching the upstream) and makes
	// every answer to them readable by the page, rejections included
	// (Access-Control-Allow-Origin and -Expose-Headers). Requests from
	// other origins are handled as if the option were absent. Default: none.
	CORS []string `json:"cors,omitempty"`

	shared *shared
	header string // canonical form of Header
	bearer bool
	strip  bool
	cors   *corsPolicy // nil without the cors option
	// challenge and challengeInvalid are the WWW-Authenticate values of a
	// 401 without and with a presented credential.
	challenge, challengeInvalid string
	// errorRoutes: the server has handle_errors routes (deny returns an
	// error for them instead of writing its JSON answer); errorRoutesKnown
	// once Provision has seen the server.
	errorRoutes, errorRoutesKnown bool
	now                           func() time.Time
	logger                        *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_key",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision joins the api_keys app (instantiated with defaults if the config
// does not mention it) and applies defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	appVal, err := ctx.App("api_keys")
	if err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	h.shared = appVal.(*App).shared
	h.logger = ctx.Logger()
	if err := h.provisionDefaults(); err != nil {
		return err
	}
	srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok {
		// Without its server the logs could not be protected: fail closed.
		return errors.New("api_key: provisioned outside an HTTP server")
	}
	if err := headerKept(srv, h.Header); err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	if err := protectServerLogs(srv, h.header, h.bearer, h.Query); err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	if err := debugLogRefusal(ctx, srv, h.strip); err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	registerConnContext(srv) // HTTP/1.x streams end by closing their connection (streams.go)
	h.errorRoutes, h.errorRoutesKnown = serverHasErrorRoutes(srv), true
	return nil
}

func (h *Handler) provisionDefaults() error {
	if h.Tenant == "" {
		h.Tenant = store.DefaultTenant
	}
	// The store interns the tenant names of its views: comparing with the
	// same string is then a pointer compare (Store.Verify, every request).
	h.Tenant = unique.Make(h.Tenant).Value()
	if h.Header == "" {
		h.Header = "X-API-Key"
	}
	h.header = http.CanonicalHeaderKey(h.Header)
	h.bearer = h.Bearer == nil || *h.Bearer
	h.strip = h.StripCredentials == nil || *h.StripCredentials
	if h.Realm == "" {
		h.Realm = "keygate"
	}
	h.challenge = `Bearer realm="` + h.Realm + `"`
	h.challengeInvalid = h.challenge + `, error="invalid_token"`
	cors, err := newCORSPolicy(h.CORS, h.header)
	if err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	h.cors = cors
	if h.now == nil {
		h.now = time.Now
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if strings.EqualFold(h.header, "Authorization") {
		return errors.New("api_key: header must not be Authorization (use bearer on)")
	}
	if h.Query != "" {
		if err := validQueryParam(h.Query); err != nil {
			return fmt.Errorf("api_key: query %q: %w", h.Query, err)
		}
	}
	for _, g := range h.AllowGroups {
		if g == "" {
			return errors.New("api_key: allow_groups has an empty group name")
		}
	}
	if err := validRealm(h.Realm); err != nil {
		return fmt.Errorf("api_key: realm %q: %w", h.Realm, err)
	}
	if _, err := newCORSPolicy(h.CORS, h.header); err != nil {
		return fmt.Errorf("api_key: %w", err)
	}
	return nil
}

// validRealm accepts what can sit inside the quoted realm of a
// WWW-Authenticate challenge without escaping: printable ASCII, no quote,
// no backslash.
func validRealm(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return errors.New("only printable ASCII without quotes or backslashes")
		}
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	cred := h.credentials(r)
	var origin string // the request's Origin, when cors allows it
	if h.cors != nil {
		if origin = h.cors.allowedOrigin(r); origin != "" {
			if !cred.any && isPreflight(r) {
				return h.preflight(w, r, origin)
			}
			corsHeaders(w.Header(), origin)
		}
	}
	if cred.duplicate {
		return h.deny(w, r, outcomeDuplicateKey, denial{})
	}
	secret := cred.secret
	if secret == "" {
		return h.deny(w, r, outcomeMissingKey, denial{})
	}
	if len(secret) > store.MaxPresentedSecretLen {
		return h.deny(w, r, outcomeInvalidKey, denial{})
	}
	st, err := h.shared.store()
	if err != nil {
		return h.unavailable(w, r, err)
	}
	now := h.now()
	view, verdict, err := st.Verify(h.Tenant, secret, now)
	if err != nil {
		return h.unavailable(w, r, err)
	}
	d := denial{st: st, view: view, now: now}
	switch verdict {
	case store.VerdictInvalid:
		return h.deny(w, r, outcomeInvalidKey, denial{})
	case store.VerdictRevoked:
		return h.deny(w, r, outcomeRevoked, d)
	case store.VerdictExpired:
		return h.deny(w, r, outcomeExpired, d)
	}
	if !st.TenantEnabled(h.Tenant) {
		return h.deny(w, r, outcomeDisabled, d)
	}
	ip := clientIP(r)
	d.ip = ip
	if view.Allow != nil {
		if r.TLS != nil && !r.TLS.HandshakeComplete {
			return h.deny(w, r, outcomeTooEarly, d)
		}
		if !ip.IsValid() || !view.Allow.Contains(ip) {
			return h.deny(w, r, outcomeIPNotAllowed, d)
		}
	}
	group, ok := h.groupFor(st, view, r)
	if !ok {
		return h.deny(w, r, outcomeForbidden, d)
	}
	if group != nil && group.RateLimit != nil {
		if d.limit = h.shared.limiters.allow(view.ID, group.RateLimit, now); !d.limit.allowed {
			return h.deny(w, r, outcomeRateLimited, d)
		}
	}

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Map(placeholdersOf(view))
	if h.strip {
		// Every source that carried a credential, not only the one that
		// admitted: with X-API-Key K1 and Bearer K2 the upstream sees
		// neither. Names are canonical already: delete skips Del's
		// re-canonicalizing.
		if cred.header {
			delete(r.Header, h.header)
		}
		if cred.bearer {
			delete(r.Header, authorization)
		}
		if cred.query {
			stripQueryParam(r, h.Query)
		}
	}
	h.stripIdentity(r.Header)
	if origin != "" {
		w = &corsWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, origin: origin}
	}
	// Tracked while it runs: ended if the key stops admitting (streams.go).
	adm, stopped := h.shared.streams.admit(w, r, st, view)
	if stopped != "" {
		return h.deny(w, r, outcomeOfCode(stopped), d)
	}
	st.RecordUse(view, ip, store.OutcomeOK, now)
	h.shared.outcomes.inc(outcomeOK)
	return h.shared.streams.run(adm, next)
}

// groupFor applies allow_groups and the key's group rules. It returns the
// key's group (nil for a key without one) and whether the request may pass.
func (h *Handler) groupFor(st *store.Store, view *store.KeyView, r *http.Request) (*store.GroupView, bool) {
	if len(h.AllowGroups) > 0 {
		found := false
		for _, g := range h.AllowGroups {
			if g == view.Group {
				found = true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	if view.Group == "" {
		return nil, true
	}
	g := st.GroupView(view.Tenant, view.Group)
	if g == nil {
		return nil, false // the group vanished: fail closed
	}
	// The escaped path is what reverse_proxy writes on the request line.
	return g, g.Allows(r.Method, r.URL.EscapedPath())
}

// clientIP is Caddy's client_ip (which honours trusted_proxies), unmapped.
func clientIP(r *http.Request) netip.Addr {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, err error) error {
	h.logger.Error("api key store unavailable; failing closed", zap.Error(err))
	return h.deny(w, r, outcomeUnavailable, denial{})
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
