package admin

import (
	"net/http"
	"time"

	"github.com/keygate/keygate/store"
)

// maxImportBodyBytes bounds the body of POST …/keys/import: 10,000 keys
// with long secrets, names and descriptions do not fit in the 1 MiB of
// every other endpoint.
const maxImportBodyBytes = 16 << 20

// keyImport is the body of POST /v1/tenants/{t}/keys/import.
type keyImport struct {
	Keys []keyImportEntry `json:"keys"`
}

// keyImportEntry is one key moved from another gateway: a key's fields as
// a tenant_admin creates it, plus the secret it keeps. An empty owner is
// the caller ("me" too); the operator must name one.
type keyImportEntry struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Owner       string     `json:"owner"`
	Group       string     `json:"group"`
	ExpiresAt   *time.Time `json:"expires_at"`
	IPAllowlist []string   `json:"ip_allowlist"`
	Secret      string     `json:"secret"`
}

// importResults is the answer: how many keys were imported and, for every
// entry in order, the new key's id or why it was skipped. Never a secret.
type importResults struct {
	Imported int                  `json:"imported"`
	Results  []store.ImportResult `json:"results"`
}

// importKeys answers POST /v1/tenants/{tenant}/keys/import (tenant_admin,
// operator). Entries that fail validation are skipped with an error; the
// others are stored in one durable write, all or none.
func (h *Handler) importKeys(w http.ResponseWriter, r *http.Request, p *principal) error {
	tenant := r.PathValue("tenant")
	if err := p.requireAdmin(tenant); err != nil {
		return err
	}
	var in keyImport
	if err := decodeBodyLimit(w, r, &in, maxImportBodyBytes); err != nil {
		return err
	}
	ownerDefault := ""
	if !p.operator {
		ownerDefault = p.user.ID
	}
	entries := make([]store.ImportInput, len(in.Keys))
	for i, e := range in.Keys {
		owner := e.Owner
		if owner == store.ReservedUserID && !p.operator {
			owner = p.user.ID
		}
		entries[i] = store.ImportInput{
			KeyInput: store.KeyInput{Name: e.Name, Description: e.Description, Group: e.Group,
				ExpiresAt: e.ExpiresAt, IPAllowlist: e.IPAllowlist},
			Owner: owner, Secret: e.Secret,
		}
	}
	results, n, err := h.st.ImportKeys(p.actor(), tenant, ownerDefault, entries)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, importResults{Imported: n, Results: results})
	return nil
}
