package admin

import (
	"net/http"
	"time"

	"github.com/keygate/keygate/store"
)

// keyCreate is the body of POST /v1/tenants/{t}/keys: store.KeyInput plus
// an optional owner. Users own the keys they create; a tenant_admin (or the
// operator, who must) may name another owner. Only they may give a group:
// a developer's keys get the tenant's default_group.
type keyCreate struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Group       store.Opt[string] `json:"group"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	IPAllowlist []string          `json:"ip_allowlist"`
	Owner       string            `json:"owner"`
}

// keySecret is the answer of create and rotate: the only place a key's
// secret ever appears.
type keySecret struct {
	Key    *store.Key `json:"key"`
	Secret string     `json:"secret"`
}

// keyList is the answer of GET /v1/tenants/{t}/keys.
type keyList struct {
	Keys       []*store.Key   `json:"keys"`
	NextCursor *string        `json:"next_cursor"`
	Total      int            `json:"total"` // keys matching the query, all pages
	Usage      tenantKeyUsage `json:"usage"`
}

// tenantKeyUsage is the tenant's "2/10 keys" figure.
type tenantKeyUsage struct {
	Count int  `json:"count"` // the tenant's keys
	Limit *int `json:"limit"` // the tenant's key_limit; null: no limit
}

// bulkRevoke is the body of POST /v1/tenants/{t}/keys/revoke.
type bulkRevoke struct {
	IDs []string `json:"ids"`
}

// bulkRevokeResults is its answer.
type bulkRevokeResults struct {
	Results []store.RevokeResult `json:"results"`
}

// deletedCount is the answer of DELETE /v1/tenants/{t}/keys?owner=….
type deletedCount struct {
	Deleted int `json:"deleted"`
}

// createKey answers POST /v1/tenants/{tenant}/keys (developer, tenant_admin,
// operator) with the key and its secret, shown this once.
func (h *Handler) createKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	if !p.isAdminOf(tenant) && !p.user.HasRole(store.RoleDeveloper) {
		return errForbidden("creating keys needs the developer or tenant_admin role")
	}
	var in keyCreate
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	owner, err := p.ownerParam("owner", in.Owner)
	if err != nil {
		return err
	}
	switch {
	case p.operator && owner == "":
		return errInvalid("owner", "required: the operator creates keys on behalf of a user")
	case owner == "":
		owner = p.user.ID
	case !p.isAdminOf(tenant) && owner != p.user.ID:
		return errForbidden("only a tenant_admin may create keys owned by someone else")
	}
	admin := p.isAdminOf(tenant)
	if !admin && in.Group.Set {
		return errGroupForbidden
	}
	key, secret, err := h.st.CreateKey(p.actor(), tenant, owner, store.KeyInput{
		Name: in.Name, Description: in.Description, Group: in.Group.Value, ExpiresAt: in.ExpiresAt, IPAllowlist: in.IPAllowlist,
		DefaultGroup: !admin,
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, keySecret{Key: key, Secret: secret})
	return nil
}

// listKeys answers GET /v1/tenants/{tenant}/keys: tenant_admins and the
// operator search every key, other users only their own (owner is forced to
// the caller; asking for another owner is 403).
func (h *Handler) listKeys(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	owner, err := p.ownerParam("owner", q.Get("owner"))
	if err != nil {
		return err
	}
	if !p.isAdminOf(tenant) {
		if owner != "" && owner != p.user.ID {
			return errForbidden("developers list only their own keys")
		}
		owner = p.user.ID
	}
	page, err := h.st.ListKeys(tenant, store.KeyQuery{
		Q: q.Get("q"), Status: q.Get("status"), ExpiryState: q.Get("expiry_state"), Owner: owner,
		Group: q.Get("group"), Limit: limit, Cursor: q.Get("cursor"),
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, keyList{
		Keys: page.Keys, NextCursor: nextCursor(page.NextCursor), Total: page.Total,
		Usage: tenantKeyUsage{Count: page.Count, Limit: page.Limit},
	})
	return nil
}

// getKey answers GET /v1/tenants/{tenant}/keys/{key} (owner, tenant_admin).
func (h *Handler) getKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	key, err := h.visibleKey(p, r.PathValue("tenant"), r.PathValue("key"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, key)
	return nil
}

// updateKey answers PATCH /v1/tenants/{tenant}/keys/{key} (owner,
// tenant_admin): name, description, group and ip_allowlist; expires_at is a
// 400 (rotate instead). A developer may not touch the group (403, also for
// null): that would widen what its key may call.
func (h *Handler) updateKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	key, err := h.visibleKey(p, tenant, r.PathValue("key"))
	if err != nil {
		return err
	}
	var patch store.KeyPatch
	if err := decodeBody(w, r, &patch); err != nil {
		return err
	}
	if patch.Group.Set && !p.isAdminOf(tenant) {
		return errGroupForbidden
	}
	updated, err := h.st.UpdateKey(p.actor(), tenant, key.ID, patch)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, updated)
	return nil
}

// rotateKey answers POST /v1/tenants/{tenant}/keys/{key}/rotate (owner,
// tenant_admin) with the key and its new secret, shown this once.
func (h *Handler) rotateKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	key, err := h.visibleKey(p, tenant, r.PathValue("key"))
	if err != nil {
		return err
	}
	var in store.RotateInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	rotated, secret, err := h.st.RotateKey(p.actor(), tenant, key.ID, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, keySecret{Key: rotated, Secret: secret})
	return nil
}

// revokeKey answers POST /v1/tenants/{tenant}/keys/{key}/revoke (owner,
// tenant_admin); a key that is not active is a 409.
func (h *Handler) revokeKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	key, err := h.visibleKey(p, tenant, r.PathValue("key"))
	if err != nil {
		return err
	}
	revoked, err := h.st.RevokeKey(p.actor(), tenant, key.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, revoked)
	return nil
}

// revokeKeys answers POST /v1/tenants/{tenant}/keys/revoke (tenant_admin):
// one result per id, in order.
func (h *Handler) revokeKeys(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var in bulkRevoke
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	results, err := h.st.RevokeKeys(p.actor(), tenant, in.IDs)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, bulkRevokeResults{Results: results})
	return nil
}

// deleteKey answers DELETE /v1/tenants/{tenant}/keys/{key} with 204. SPEC
// grants it to the key's owner (and the operator may do everything); a
// tenant_admin who does not own the key gets 403 and revokes it instead,
// or deletes all of a user's keys with DELETE …/keys?owner=<user>.
func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	key, err := h.visibleKey(p, tenant, r.PathValue("key"))
	if err != nil {
		return err
	}
	if !p.operator && !p.owns(key) {
		return errForbidden("only the key's owner may delete it; revoke it instead")
	}
	if err := h.st.DeleteKey(p.actor(), tenant, key.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deleteOwnerKeys answers DELETE /v1/tenants/{tenant}/keys?owner=me|<user>
// with {deleted: n}. The owner parameter is required (there is no "delete
// every key of the tenant"). Developers may only name themselves; a
// tenant_admin (or the operator) may name any user, e.g. to clean up after
// someone has left.
func (h *Handler) deleteOwnerKeys(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	owner, err := p.ownerParam("owner", r.URL.Query().Get("owner"))
	if err != nil {
		return err
	}
	if owner == "" {
		return errInvalid("owner", `required: owner=me, or a user id (tenant_admin)`)
	}
	if !p.isAdminOf(tenant) && owner != p.user.ID {
		return errForbidden("developers may only delete their own keys (owner=me)")
	}
	n, err := h.st.DeleteOwnerKeys(p.actor(), tenant, owner)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, deletedCount{Deleted: n})
	return nil
}

// keyUsage answers GET /v1/tenants/{tenant}/keys/{key}/usage (owner,
// tenant_admin): requests per minute over the last 24 h and per outcome.
func (h *Handler) keyUsage(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	key, err := h.visibleKey(p, tenant, r.PathValue("key"))
	if err != nil {
		return err
	}
	u, err := h.st.Usage(tenant, key.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}
