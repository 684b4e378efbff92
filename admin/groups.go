package admin

import (
	"net/http"

	"github.com/keygate/keygate/store"
)

// groupList is the answer of GET /v1/tenants/{t}/groups.
type groupList struct {
	Groups     []*store.Group `json:"groups"`
	NextCursor *string        `json:"next_cursor"`
}

// listGroups answers GET /v1/tenants/{tenant}/groups (any user of the
// tenant: developers pick a group when they create a key).
func (h *Handler) listGroups(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	groups, next, err := h.st.ListGroups(tenant, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, groupList{Groups: groups, NextCursor: nextCursor(next)})
	return nil
}

// getGroup answers GET /v1/tenants/{tenant}/groups/{group} (any user of the
// tenant).
func (h *Handler) getGroup(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.seeTenant(tenant); err != nil {
		return err
	}
	if _, err := h.st.GetTenant(tenant); err != nil {
		return err
	}
	g, err := h.st.GetGroup(tenant, r.PathValue("group"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, g)
	return nil
}

// putGroup answers PUT /v1/tenants/{tenant}/groups/{group} (tenant_admin):
// 201 when it creates the group, 200 when it replaces it. Keys of the group
// see the change on their next request.
func (h *Handler) putGroup(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, name := r.PathValue("tenant"), r.PathValue("group")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var in store.GroupInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	status := http.StatusOK
	if _, err := h.st.GetGroup(tenant, name); store.KindOf(err) == store.KindNotFound {
		status = http.StatusCreated
	} else if err != nil {
		return err
	}
	g, err := h.st.PutGroup(p.actor(), tenant, name, in)
	if err != nil {
		return err
	}
	writeJSON(w, status, g)
	return nil
}

// deleteGroup answers DELETE /v1/tenants/{tenant}/groups/{group}
// (tenant_admin); a group still used by a key is a 409.
func (h *Handler) deleteGroup(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	if err := h.st.DeleteGroup(p.actor(), tenant, r.PathValue("group")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
