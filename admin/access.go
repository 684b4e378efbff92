package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/keygate/keygate/store"
)

// principal is the authenticated caller of one request: the operator, or a
// user of exactly one tenant.
type principal struct {
	operator bool
	user     *store.User  // nil for the operator
	token    *store.Token // the user token used; nil for the operator
}

// actor names the principal in audit events: "operator" or "user:<id>".
func (p *principal) actor() string {
	if p.operator {
		return "operator"
	}
	return "user:" + p.user.ID
}

// isAdminOf reports whether p may administer tenant t: the operator, or a
// tenant_admin of t.
func (p *principal) isAdminOf(tenant string) bool {
	return p.operator || p.user.Tenant == tenant && p.user.HasRole(store.RoleTenantAdmin)
}

// owns reports whether key belongs to the calling user.
func (p *principal) owns(key *store.Key) bool {
	return !p.operator && key.Tenant == p.user.Tenant && key.Owner == p.user.ID
}

// seeTenant fails with 404 when p is a user of another tenant: nobody learns
// whether another tenant exists. For the operator the store answers 404 for
// tenants that do not exist.
func (p *principal) seeTenant(tenant string) error {
	if p.operator || p.user.Tenant == tenant {
		return nil
	}
	return errNotFound("tenant %q not found", tenant)
}

// requireAdmin allows the operator and tenant_admins of the tenant; other
// users of the tenant get 403, users of other tenants 404.
func (p *principal) requireAdmin(tenant string) error {
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	if !p.isAdminOf(tenant) {
		return errForbidden("this needs the tenant_admin role in tenant %q", tenant)
	}
	return nil
}

// requireOperator allows only the operator. Users of the tenant named (if
// any) get 403, users of other tenants 404.
func (p *principal) requireOperator(tenant string) error {
	if tenant != "" {
		if err := p.seeTenant(tenant); err != nil {
			return err
		}
	}
	if !p.operator {
		return errForbidden("only the operator may do this")
	}
	return nil
}

// ownerParam resolves an owner given by the caller ("me" is the calling
// user). It is empty when the parameter is.
func (p *principal) ownerParam(field, owner string) (string, error) {
	if owner != "me" {
		return owner, nil
	}
	if p.operator {
		return "", errInvalid(field, `"me" names a user; the operator must give a user id`)
	}
	return p.user.ID, nil
}

// visibleKey loads key id of tenant t if p may see it: the operator and
// tenant_admins see every key of the tenant, other users only their own.
// A key p may not see answers 404 exactly as an unknown id does, so
// developers cannot probe for their colleagues' key ids.
func (h *Handler) visibleKey(p *principal, tenant, id string) (*store.Key, error) {
	if err := p.seeTenant(tenant); err != nil {
		return nil, err
	}
	key, err := h.st.GetKey(tenant, id)
	if err != nil {
		return nil, err
	}
	if !p.isAdminOf(tenant) && !p.owns(key) {
		return nil, errNotFound("key %q not found", id)
	}
	return key, nil
}

// digest is what operator tokens are compared by: equal-length SHA-256
// digests, so the comparison's time reveals neither content nor length.
func digest(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// authenticate identifies the caller from "Authorization: Bearer <token>".
// Gateway API keys (kg_…) are not admin tokens and are refused like any
// other unknown token. A refused token is logged (client address and token
// hint) and counted against the client address; an address with too many
// recent failures gets 429 before its token is looked at (authlimit.go).
// A request without a token is a plain 401: it guesses nothing.
func (h *Handler) authenticate(r *http.Request) (*principal, error) {
	token, ok := bearerToken(r)
	if !ok {
		return nil, errUnauthorized("missing bearer token: send Authorization: Bearer <token>")
	}
	ip := h.clientIP(r)
	client := throttleKey(ip)
	now := h.now()
	if wait := h.throttle.wait(client, now); wait > 0 {
		if h.onAuthFails != nil {
			h.onAuthFails(true)
		}
		return nil, errThrottled(wait)
	}
	p, err := h.checkToken(token)
	if err != nil && store.KindOf(err) == store.KindUnauthorized {
		throttled := h.throttle.fail(client, now)
		h.logAuthFailure(ip, token, throttled)
		if h.onAuthFails != nil {
			h.onAuthFails(false)
		}
		return nil, errUnauthorized("invalid, revoked or expired token")
	}
	return p, err
}

// logAuthFailure logs a refused token: never the token, only its hint.
func (h *Handler) logAuthFailure(ip, token string, throttled bool) {
	if h.log == nil {
		return
	}
	if _, err := netip.ParseAddr(ip); err != nil { // not from Caddy: keep it one bounded line
		ip = strconv.Quote(throttleKey(ip))
	}
	then := ""
	if throttled {
		then = "; this address is now slowed down (429) after repeated failures"
	}
	format, args := "admin API: authentication failed from %s with token %s%s", []any{ip, tokenHint(token), then}
	if w, ok := h.log.(interface{ Warnf(string, ...any) }); ok {
		w.Warnf(format, args...)
		return
	}
	h.log.Infof(format, args...)
}

// checkToken returns the principal of token, or a KindUnauthorized error.
func (h *Handler) checkToken(token string) (*principal, error) {
	d := digest(token)
	isOperator := 0
	for i := range h.operators {
		// No early exit: every configured token is compared.
		isOperator |= subtle.ConstantTimeCompare(d[:], h.operators[i][:])
	}
	if isOperator == 1 {
		return &principal{operator: true}, nil
	}
	tok, user, err := h.st.AuthenticateToken(token)
	if err != nil {
		if store.KindOf(err) == store.KindUnauthorized {
			return nil, err
		}
		return nil, fmt.Errorf("authenticate token: %w", err)
	}
	return &principal{user: user, token: tok}, nil
}

// bearerToken extracts the token of an "Authorization: Bearer" header (the
// scheme is case-insensitive, as RFC 9110 says).
func bearerToken(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
