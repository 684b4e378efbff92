package admin

import (
	"net/http"

	"github.com/keygate/keygate/store"
)

// tenantList is the answer of GET /v1/tenants.
type tenantList struct {
	Tenants    []*store.Tenant `json:"tenants"`
	NextCursor *string         `json:"next_cursor"`
}

// meAnswer is the answer of GET /v1/me.
type meAnswer struct {
	Principal string       `json:"principal"` // "operator" or "user"
	User      *string      `json:"user"`      // user id; null for the operator
	Tenant    *string      `json:"tenant"`    // the user's tenant; null for the operator
	Roles     []store.Role `json:"roles"`     // empty for the operator, who may do everything
}

// getMe answers GET /v1/me: who the token belongs to.
func (h *Handler) getMe(w http.ResponseWriter, _ *http.Request, p *principal) error {
	if p.operator {
		writeJSON(w, http.StatusOK, meAnswer{Principal: "operator", Roles: []store.Role{}})
		return nil
	}
	roles := p.user.Roles
	if roles == nil {
		roles = []store.Role{}
	}
	writeJSON(w, http.StatusOK, meAnswer{Principal: "user", User: &p.user.ID, Tenant: &p.user.Tenant, Roles: roles})
	return nil
}

// createTenant answers POST /v1/tenants (operator).
func (h *Handler) createTenant(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := p.requireOperator(""); err != nil {
		return err
	}
	var in store.TenantInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	t, err := h.st.CreateTenant(p.actor(), in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

// listTenants answers GET /v1/tenants (operator).
func (h *Handler) listTenants(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := p.requireOperator(""); err != nil {
		return err
	}
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	tenants, next, err := h.st.ListTenants(r.URL.Query().Get("cursor"), limit)
	if err != nil {
		return err
	}
	if tenants == nil {
		tenants = []*store.Tenant{}
	}
	writeJSON(w, http.StatusOK, tenantList{Tenants: tenants, NextCursor: nextCursor(next)})
	return nil
}

// getTenant answers GET /v1/tenants/{tenant} (operator; tenant_admin of it).
func (h *Handler) getTenant(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	t, err := h.st.GetTenant(tenant)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// updateTenant answers PATCH /v1/tenants/{tenant} (operator: name and
// key_limit are the operator's quota, not the tenant's to change).
func (h *Handler) updateTenant(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireOperator(tenant); err != nil {
		return err
	}
	var patch store.TenantPatch
	if err := decodeBody(w, r, &patch); err != nil {
		return err
	}
	t, err := h.st.UpdateTenant(p.actor(), tenant, patch)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// getSettings answers GET /v1/tenants/{tenant}/settings (tenant_admin).
func (h *Handler) getSettings(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	s, err := h.st.GetSettings(tenant)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}

// updateSettings answers PATCH /v1/tenants/{tenant}/settings (tenant_admin).
func (h *Handler) updateSettings(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var patch store.SettingsPatch
	if err := decodeBody(w, r, &patch); err != nil {
		return err
	}
	s, err := h.st.UpdateSettings(p.actor(), tenant, patch)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}
