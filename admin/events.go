package admin

import (
	"net/http"

	"github.com/keygate/keygate/store"
)

// eventList is the answer of GET /v1/tenants/{t}/events.
type eventList struct {
	Events     []*store.Event `json:"events"`
	NextCursor *string        `json:"next_cursor"`
}

// listEvents answers GET /v1/tenants/{tenant}/events (tenant_admin): audit
// events oldest first, filtered by key_id, type and since (RFC 3339).
func (h *Handler) listEvents(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	since, err := querySince(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	events, next, err := h.st.ListEvents(tenant, store.EventQuery{
		KeyID: q.Get("key_id"), Type: q.Get("type"), Since: since, Limit: limit, Cursor: q.Get("cursor"),
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, eventList{Events: events, NextCursor: nextCursor(next)})
	return nil
}
