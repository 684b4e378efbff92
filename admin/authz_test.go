package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// allowed lists the expected status for the five authenticated callers, in
// the order developer, other developer (same tenant), tenant admin, other
// tenant's admin, operator. The four unauthenticated callers (no token, bad
// token, revoked token, gateway key) always get 401.
func allowed(dev, dev2, admin, otherAdmin, op int) [numWho]int {
	return [numWho]int{401, 401, 401, 401, dev, dev2, admin, otherAdmin, op}
}

// TestAuthorizationMatrix sends every endpoint of SPEC section 4 as every
// kind of caller, each case against a fixture no earlier case has changed, and checks
// the status.
// "{key}" is dev's key and "{devtoken}" dev's active token.
//
// Choices encoded here (see the report / README):
//   - users of another tenant get 404 for everything under that tenant;
//   - a developer asking for a colleague's key gets 404, as for an unknown id;
//   - DELETE of a single key is the owner's (SPEC); a tenant_admin who does
//     not own it gets 403 and revokes it instead;
//   - DELETE …/keys?owner=<user> is allowed to the tenant_admin.
func TestAuthorizationMatrix(t *testing.T) {
	const (
		ok   = http.StatusOK
		made = http.StatusCreated
		gone = http.StatusNoContent
		bad  = http.StatusBadRequest
		no   = http.StatusForbidden
		nf   = http.StatusNotFound
	)
	rows := []struct {
		method, path string
		body         any
		want         [numWho]int
	}{
		{"GET", "/v1/me", nil, allowed(ok, ok, ok, ok, ok)},
		{"POST", "/v1/tenants", map[string]any{"id": "newco"}, allowed(no, no, no, no, made)},
		{"GET", "/v1/tenants", nil, allowed(no, no, no, no, ok)},
		{"GET", "/v1/tenants/acme", nil, allowed(no, no, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme", map[string]any{"name": "Acme Inc."}, allowed(no, no, no, nf, ok)},
		{"GET", "/v1/tenants/acme/settings", nil, allowed(no, no, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme/settings", map[string]any{"max_keys_per_user": 10}, allowed(no, no, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/users", nil, allowed(no, no, ok, nf, ok)},
		{"PUT", "/v1/tenants/acme/users/newbie", map[string]any{"roles": []string{"developer"}}, allowed(no, no, made, nf, made)},
		{"DELETE", "/v1/tenants/acme/users/dev2", nil, allowed(no, no, gone, nf, gone)},
		{"POST", "/v1/tenants/acme/users/dev2/tokens", map[string]any{"name": "ci"}, allowed(no, no, made, nf, made)},
		{"GET", "/v1/tenants/acme/users/dev/tokens", nil, allowed(no, no, ok, nf, ok)},
		{"DELETE", "/v1/tenants/acme/users/dev/tokens/{devtoken}", nil, allowed(no, no, gone, nf, gone)},
		{"GET", "/v1/tenants/acme/groups", nil, allowed(ok, ok, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/groups/g1", nil, allowed(ok, ok, ok, nf, ok)},
		{"PUT", "/v1/tenants/acme/groups/g2", map[string]any{"description": "two"}, allowed(no, no, made, nf, made)},
		{"DELETE", "/v1/tenants/acme/groups/g1", nil, allowed(no, no, gone, nf, gone)},
		// Without owner the caller owns the key; the operator must name one.
		{"POST", "/v1/tenants/acme/keys", map[string]any{"name": "new key"}, allowed(made, made, made, nf, bad)},
		// Naming an owner other than oneself needs tenant_admin.
		{"POST", "/v1/tenants/acme/keys", map[string]any{"name": "new key", "owner": "dev"}, allowed(made, no, made, nf, made)},
		// Developers never choose a key's group, not even null (issue #9 item 11).
		{"POST", "/v1/tenants/acme/keys", map[string]any{"name": "new key", "group": "g1", "owner": "dev"}, allowed(no, no, made, nf, made)},
		{"POST", "/v1/tenants/acme/keys", map[string]any{"name": "new key", "group": nil}, allowed(no, no, made, nf, bad)},
		{"GET", "/v1/tenants/acme/keys", nil, allowed(ok, ok, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/keys?owner=dev", nil, allowed(ok, no, ok, nf, ok)},
		{"DELETE", "/v1/tenants/acme/keys?owner=dev", nil, allowed(ok, no, ok, nf, ok)},
		{"DELETE", "/v1/tenants/acme/keys?owner=me", nil, allowed(ok, ok, ok, nf, bad)},
		{"POST", "/v1/tenants/acme/keys/revoke", map[string]any{"ids": []string{"{key}"}}, allowed(no, no, ok, nf, ok)},
		{"POST", "/v1/tenants/acme/keys/import", map[string]any{"keys": []map[string]any{{"name": "moved key", "owner": "dev", "secret": "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"}}}, allowed(no, no, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/keys/{key}", nil, allowed(ok, nf, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme/keys/{key}", map[string]any{"name": "renamed"}, allowed(ok, nf, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme/keys/{key}", map[string]any{"description": "d", "ip_allowlist": []string{"10.0.0.0/8"}}, allowed(ok, nf, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme/keys/{key}", map[string]any{"group": "g1"}, allowed(no, nf, ok, nf, ok)},
		{"PATCH", "/v1/tenants/acme/keys/{key}", map[string]any{"group": nil}, allowed(no, nf, ok, nf, ok)},
		{"DELETE", "/v1/tenants/acme/keys/{key}", nil, allowed(gone, nf, no, nf, gone)},
		{"POST", "/v1/tenants/acme/keys/{key}/rotate", nil, allowed(ok, nf, ok, nf, ok)},
		{"POST", "/v1/tenants/acme/keys/{key}/revoke", nil, allowed(ok, nf, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/keys/{key}/usage", nil, allowed(ok, nf, ok, nf, ok)},
		{"GET", "/v1/tenants/acme/events", nil, allowed(no, no, ok, nf, ok)},
	}
	// Every registered endpoint has a row.
	covered := map[string]bool{}
	mux := New(nil, Config{}).mux
	for _, row := range rows {
		_, pattern := mux.Handler(httptest.NewRequest(row.method, row.path, nil))
		covered[pattern] = true
	}
	for _, pattern := range New(nil, Config{}).patterns {
		if !covered[pattern] {
			t.Errorf("no matrix row for %s", pattern)
		}
	}
	for _, row := range rows {
		t.Run(row.method+" "+row.path, func(t *testing.T) {
			// A fixture is reused until a request may have changed it.
			var fx *fixture
			for caller := who(0); caller < numWho; caller++ {
				if fx == nil {
					fx = newFixture(t)
				}
				path := strings.NewReplacer("{key}", fx.devKey.ID, "{devtoken}", fx.devTokenID).Replace(row.path)
				body := row.body
				if m, ok := body.(map[string]any); ok {
					if ids, ok := m["ids"].([]string); ok && ids[0] == "{key}" {
						body = map[string]any{"ids": []string{fx.devKey.ID}}
					}
				}
				res := fx.do(caller, row.method, path, body)
				if row.method != http.MethodGet && res.status < 300 {
					fx = nil
				}
				if res.status != row.want[caller] {
					t.Errorf("%s: status %d, want %d: %s", caller, res.status, row.want[caller], res.body)
					continue
				}
				if res.status == http.StatusUnauthorized {
					if got := res.header.Get("WWW-Authenticate"); got != `Bearer realm="keygate-admin"` {
						t.Errorf("%s: WWW-Authenticate %q", caller, got)
					}
					if e := res.apiErr(t); e.Code != "unauthorized" {
						t.Errorf("%s: code %q", caller, e.Code)
					}
				}
				if res.status == http.StatusForbidden {
					e := res.apiErr(t)
					if e.Code != "forbidden" {
						t.Errorf("%s: code %q, want forbidden", caller, e.Code)
					}
					// A developer refused for the group is told which field.
					if m, ok := body.(map[string]any); ok && caller == developer {
						if _, hasGroup := m["group"]; hasGroup && e.Fields["group"] == "" {
							t.Errorf("%s: 403 does not name the group field: %+v", caller, e)
						}
					}
				}
			}
		})
	}
}
