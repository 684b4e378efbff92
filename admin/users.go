package admin

import (
	"net/http"

	"github.com/keygate/keygate/store"
)

// userList is the answer of GET /v1/tenants/{t}/users.
type userList struct {
	Users      []*store.User `json:"users"`
	NextCursor *string       `json:"next_cursor"`
}

// userPut is the body of PUT /v1/tenants/{t}/users/{u}.
type userPut struct {
	Roles []store.Role `json:"roles"`
}

// tokenList is the answer of GET …/users/{u}/tokens. Tokens of one user are
// few; the list is one page and next_cursor is always null.
type tokenList struct {
	Tokens     []*store.Token `json:"tokens"`
	NextCursor *string        `json:"next_cursor"`
}

// tokenCreated is the answer of POST …/users/{u}/tokens: the only place the
// token's secret ever appears.
type tokenCreated struct {
	Token  *store.Token `json:"token"`
	Secret string       `json:"secret"`
}

// listUsers answers GET /v1/tenants/{tenant}/users (tenant_admin).
func (h *Handler) listUsers(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	limit, err := queryLimit(r)
	if err != nil {
		return err
	}
	users, next, err := h.st.ListUsers(tenant, r.URL.Query().Get("cursor"), limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, userList{Users: users, NextCursor: nextCursor(next)})
	return nil
}

// putUser answers PUT /v1/tenants/{tenant}/users/{user} (tenant_admin):
// 201 when it creates the user, 200 when it replaces the roles.
func (h *Handler) putUser(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, id := r.PathValue("tenant"), r.PathValue("user")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var in userPut
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	status := http.StatusOK
	if _, err := h.st.GetUser(tenant, id); store.KindOf(err) == store.KindNotFound {
		status = http.StatusCreated
	} else if err != nil {
		return err
	}
	u, err := h.st.PutUser(p.actor(), tenant, id, in.Roles)
	if err != nil {
		return err
	}
	writeJSON(w, status, u)
	return nil
}

// deleteUser answers DELETE /v1/tenants/{tenant}/users/{user}
// (tenant_admin): the user's tokens are revoked, its keys stay.
func (h *Handler) deleteUser(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, id := r.PathValue("tenant"), r.PathValue("user")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	if err := h.st.DeleteUser(p.actor(), tenant, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// createToken answers POST /v1/tenants/{tenant}/users/{user}/tokens
// (tenant_admin) with the token and its secret, shown this once.
func (h *Handler) createToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, user := r.PathValue("tenant"), r.PathValue("user")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var in store.TokenInput
	if err := decodeBody(w, r, &in); err != nil {
		return err
	}
	tok, secret, err := h.st.CreateToken(p.actor(), tenant, user, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, tokenCreated{Token: tok, Secret: secret})
	return nil
}

// listTokens answers GET /v1/tenants/{tenant}/users/{user}/tokens
// (tenant_admin).
func (h *Handler) listTokens(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, user := r.PathValue("tenant"), r.PathValue("user")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	toks, err := h.st.ListTokens(tenant, user)
	if err != nil {
		return err
	}
	if toks == nil {
		toks = []*store.Token{}
	}
	writeJSON(w, http.StatusOK, tokenList{Tokens: toks})
	return nil
}

// revokeToken answers DELETE /v1/tenants/{tenant}/users/{user}/tokens/{token}
// (tenant_admin): the token stops working at once.
func (h *Handler) revokeToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant, user, id := r.PathValue("tenant"), r.PathValue("user"), r.PathValue("token")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	if err := h.st.RevokeToken(p.actor(), tenant, user, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
