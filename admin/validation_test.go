package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestValidation sends every field rule of SPEC section 2 (and the API's own
// rules on bodies and query parameters) through HTTP, each against a fresh
// fixture, and checks the status, the error code and the field named.
func TestValidation(t *testing.T) {
	future := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	within := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
	tooFar := time.Now().Add(31 * 24 * time.Hour).UTC().Format(time.RFC3339)
	const keys = "/v1/tenants/acme/keys"
	key := func(fields map[string]any) map[string]any {
		if _, ok := fields["name"]; !ok {
			fields["name"] = "valid name"
		}
		return fields
	}
	// exactly1MiB is a valid create body padded with spaces to exactly the
	// limit; one byte more is too large.
	exactly1MiB := func(extra int) []byte {
		b := []byte(`{"name":"big body"}`)
		return append(b, bytes.Repeat([]byte(" "), maxBodyBytes-len(b)+extra)...)
	}
	rows := []struct {
		name   string
		as     who
		method string
		path   string
		body   any
		// setup, if set, runs first (as the operator) against the fixture.
		setup  func(fx *fixture)
		status int
		code   string // expected error code ("" for success)
		field  string // field the error must name ("" for none)
	}{
		// Names: 2–200 characters, counted in characters, not bytes.
		{name: "name 1 char", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "a"}), status: 400, code: "invalid", field: "name"},
		{name: "name 2 chars", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "ab"}), status: 201},
		{name: "name 200 chars", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": strings.Repeat("n", 200)}), status: 201},
		{name: "name 201 chars", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": strings.Repeat("n", 201)}), status: 400, code: "invalid", field: "name"},
		{name: "name 1 two-byte char", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "é"}), status: 400, code: "invalid", field: "name"},
		{name: "name 2 CJK chars", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "日本"}), status: 201},
		{name: "name 2 emoji", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "🔑🔑"}), status: 201},
		{name: "name 200 CJK chars (600 bytes)", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": strings.Repeat("日", 200)}), status: 201},
		{name: "name 201 CJK chars", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": strings.Repeat("日", 201)}), status: 400, code: "invalid", field: "name"},
		{name: "name missing", as: developer, method: "POST", path: keys, body: map[string]any{}, status: 400, code: "invalid", field: "name"},
		{name: "name not a string", as: developer, method: "POST", path: keys, body: map[string]any{"name": 5}, status: 400, code: "invalid", field: "name"},
		{name: "name with control char", as: developer, method: "POST", path: keys, body: key(map[string]any{"name": "bad\x00name"}), status: 400, code: "invalid", field: "name"},
		// Description ≤ 1000 characters.
		{name: "description 1000", as: developer, method: "POST", path: keys, body: key(map[string]any{"description": strings.Repeat("ü", 1000)}), status: 201},
		{name: "description 1001", as: developer, method: "POST", path: keys, body: key(map[string]any{"description": strings.Repeat("d", 1001)}), status: 400, code: "invalid", field: "description"},
		// Group must exist in the tenant.
		{name: "existing group", as: tenantAdmin, method: "POST", path: keys, body: key(map[string]any{"group": "g1"}), status: 201},
		{name: "unknown group", as: tenantAdmin, method: "POST", path: keys, body: key(map[string]any{"group": "nope"}), status: 400, code: "invalid", field: "group"},
		{name: "other tenant's group", as: tenantAdmin, method: "POST", path: keys, body: key(map[string]any{"group": "og"}), status: 400, code: "invalid", field: "group",
			setup: func(fx *fixture) {
				fx.do(operator, "PUT", "/v1/tenants/other/groups/og", map[string]any{}).want(fx.t, 201)
			}},
		// expires_at: in the future, within max_expiration.
		{name: "expires in the future", as: developer, method: "POST", path: keys, body: key(map[string]any{"expires_at": future}), status: 201},
		{name: "expires in the past", as: developer, method: "POST", path: keys, body: key(map[string]any{"expires_at": past}), status: 400, code: "invalid", field: "expires_at"},
		{name: "expires not a time", as: developer, method: "POST", path: keys, body: key(map[string]any{"expires_at": "tomorrow"}), status: 400, code: "invalid", field: "expires_at"},
		{name: "expires within max_expiration", as: developer, method: "POST", path: keys, body: key(map[string]any{"expires_at": within}), status: 201,
			setup: func(fx *fixture) { fx.setSettings(map[string]any{"max_expiration": "720h"}) }},
		{name: "expires beyond max_expiration", as: developer, method: "POST", path: keys, body: key(map[string]any{"expires_at": tooFar}), status: 400, code: "invalid", field: "expires_at",
			setup: func(fx *fixture) { fx.setSettings(map[string]any{"max_expiration": "720h"}) }},
		// ip_allowlist: addresses or CIDRs, IPv4 or IPv6.
		{name: "allowlist v4 v6 cidr and address", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::1"}}), status: 201},
		{name: "allowlist empty", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{}}), status: 201},
		{name: "allowlist prefix too long", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{"10.0.0.0/33"}}), status: 400, code: "invalid", field: "ip_allowlist"},
		{name: "allowlist v6 prefix too long", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{"2001:db8::/129"}}), status: 400, code: "invalid", field: "ip_allowlist"},
		{name: "allowlist not an address", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{"example.com"}}), status: 400, code: "invalid", field: "ip_allowlist"},
		{name: "allowlist bad octet", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": []string{"256.1.1.1"}}), status: 400, code: "invalid", field: "ip_allowlist"},
		{name: "allowlist not an array", as: developer, method: "POST", path: keys, body: key(map[string]any{"ip_allowlist": "10.0.0.0/8"}), status: 400, code: "invalid", field: "ip_allowlist"},
		// Owner.
		{name: "operator without owner", as: operator, method: "POST", path: keys, body: key(map[string]any{}), status: 400, code: "invalid", field: "owner"},
		{name: "operator with owner me", as: operator, method: "POST", path: keys, body: key(map[string]any{"owner": "me"}), status: 400, code: "invalid", field: "owner"},
		{name: "admin with bad owner id", as: tenantAdmin, method: "POST", path: keys, body: key(map[string]any{"owner": "no spaces allowed"}), status: 400, code: "invalid", field: "owner"},
		// Bodies.
		{name: "unknown field", as: developer, method: "POST", path: keys, body: key(map[string]any{"colour": "red"}), status: 400, code: "invalid", field: "colour"},
		{name: "unknown nested field", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/groups/g2", body: `{"rules":[{"methods":["GET"],"Paths":["/a"]}]}`, status: 400, code: "invalid", field: "rules[0].Paths"},
		// Strict JSON (SPEC section 6): exact names, no duplicates, valid UTF-8.
		{name: "invalid UTF-8 in name", as: developer, method: "POST", path: keys, body: []byte("{\"name\":\"bad \xff name\"}"), status: 400, code: "invalid", field: "name"},
		{name: "invalid UTF-8 in a list", as: developer, method: "POST", path: keys, body: []byte("{\"name\":\"ok\",\"ip_allowlist\":[\"10.0.0.1\",\"\xc3\"]}"), status: 400, code: "invalid", field: "ip_allowlist[1]"},
		{name: "invalid UTF-8 in a field name", as: developer, method: "POST", path: keys, body: []byte("{\"na\xffme\":\"ok\"}"), status: 400, code: "invalid"},
		{name: "lone surrogate escape", as: developer, method: "POST", path: keys, body: `{"name":"ab\ud800"}`, status: 400, code: "invalid", field: "name"},
		{name: "duplicate name", as: developer, method: "POST", path: keys, body: `{"name":"first","name":"second"}`, status: 400, code: "invalid", field: "name"},
		{name: "duplicate name via escape", as: developer, method: "POST", path: keys, body: `{"name":"first","n\u0061me":"second"}`, status: 400, code: "invalid", field: "name"},
		{name: "duplicate nested name", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/groups/g2", body: `{"rate_limit":{"burst":1,"burst":1000}}`, status: 400, code: "invalid", field: "rate_limit.burst"},
		{name: "duplicate in PATCH", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: `{"max_expiration":"720h","max_expiration":null}`, status: 400, code: "invalid", field: "max_expiration"},
		{name: "case-mismatched name", as: developer, method: "POST", path: keys, body: `{"Name":"ab"}`, status: 400, code: "invalid", field: "Name"},
		{name: "case-mismatched PATCH name", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: `{"API_KEYS_ENABLED":false}`, status: 400, code: "invalid", field: "API_KEYS_ENABLED"},
		{name: "folded name (long s)", as: developer, method: "POST", path: keys, body: `{"name":"ab","deſcription":"x"}`, status: 400, code: "invalid", field: "deſcription"},
		{name: "null body", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: `null`, status: 400, code: "invalid"},
		{name: "empty body is {}", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: "", status: 200},
		{name: "malformed JSON", as: developer, method: "POST", path: keys, body: `{"name": "ab"`, status: 400, code: "invalid"},
		{name: "not JSON", as: developer, method: "POST", path: keys, body: `name=ab`, status: 400, code: "invalid"},
		{name: "JSON array", as: developer, method: "POST", path: keys, body: `["ab"]`, status: 400, code: "invalid"},
		{name: "trailing data", as: developer, method: "POST", path: keys, body: `{"name": "ab"} {}`, status: 400, code: "invalid"},
		{name: "body of exactly 1 MiB", as: developer, method: "POST", path: keys, body: exactly1MiB(0), status: 201},
		{name: "body of 1 MiB + 1", as: developer, method: "POST", path: keys, body: exactly1MiB(1), status: 413, code: "request_too_large"},
		// Tenant state and limits.
		{name: "api keys disabled", as: developer, method: "POST", path: keys, body: key(map[string]any{}), status: 403, code: "api_keys_disabled",
			setup: func(fx *fixture) { fx.setSettings(map[string]any{"api_keys_enabled": false}) }},
		// PATCH: expires_at only changes by rotating.
		{name: "patch expires_at", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"expires_at": future}, status: 400, code: "invalid", field: "expires_at"},
		{name: "patch name too short", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"name": "x"}, status: 400, code: "invalid", field: "name"},
		{name: "patch name null", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"name": nil}, status: 400, code: "invalid", field: "name"},
		{name: "patch unknown group", as: tenantAdmin, method: "PATCH", path: keys + "/{key}", body: map[string]any{"group": "nope"}, status: 400, code: "invalid", field: "group"},
		{name: "patch bad cidr", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"ip_allowlist": []string{"1.2.3.4/40"}}, status: 400, code: "invalid", field: "ip_allowlist"},
		{name: "patch unknown field", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"secret": "x"}, status: 400, code: "invalid", field: "secret"},
		{name: "patch ok", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"name": "renamed", "description": "d", "ip_allowlist": []string{"10.0.0.1"}}, status: 200},
		{name: "patch group ok", as: tenantAdmin, method: "PATCH", path: keys + "/{key}", body: map[string]any{"name": "renamed", "group": "g1"}, status: 200},
		{name: "developer group", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"group": "g1"}, status: 403, code: "forbidden", field: "group"},
		{name: "developer group null", as: developer, method: "PATCH", path: keys + "/{key}", body: map[string]any{"group": nil}, status: 403, code: "forbidden", field: "group"},
		{name: "developer create with group", as: developer, method: "POST", path: keys, body: key(map[string]any{"group": "g1"}), status: 403, code: "forbidden", field: "group"},
		{name: "default_group unknown", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"default_group": "nope"}, status: 400, code: "invalid", field: "default_group"},
		{name: "default_group a number", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"default_group": 1}, status: 400, code: "invalid", field: "default_group"},
		{name: "default_group ok", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"default_group": "g1"}, status: 200},
		{name: "default group deleted", as: tenantAdmin, method: "DELETE", path: "/v1/tenants/acme/groups/g1", status: 409, code: "conflict",
			setup: func(fx *fixture) {
				fx.do(tenantAdmin, "PATCH", "/v1/tenants/acme/settings", map[string]any{"default_group": "g1"}).want(fx.t, 200)
			}},
		// Rotate.
		{name: "rotate negative grace", as: developer, method: "POST", path: keys + "/{key}/rotate", body: map[string]any{"grace_period": "-1h"}, status: 400, code: "invalid", field: "grace_period"},
		{name: "rotate bad grace", as: developer, method: "POST", path: keys + "/{key}/rotate", body: map[string]any{"grace_period": "soon"}, status: 400, code: "invalid", field: "grace_period"},
		{name: "rotate past expiry", as: developer, method: "POST", path: keys + "/{key}/rotate", body: map[string]any{"expires_at": past}, status: 400, code: "invalid", field: "expires_at"},
		{name: "rotate ok", as: developer, method: "POST", path: keys + "/{key}/rotate", body: map[string]any{"expires_at": future, "grace_period": "1h"}, status: 200},
		// Bulk revoke.
		{name: "bulk revoke no ids", as: tenantAdmin, method: "POST", path: keys + "/revoke", body: map[string]any{"ids": []string{}}, status: 400, code: "invalid", field: "ids"},
		// Query parameters.
		{name: "limit=0", as: developer, method: "GET", path: keys + "?limit=0", status: 400, code: "invalid", field: "limit"},
		{name: "limit=1", as: developer, method: "GET", path: keys + "?limit=1", status: 200},
		{name: "limit=500", as: developer, method: "GET", path: keys + "?limit=500", status: 200},
		{name: "limit=501", as: developer, method: "GET", path: keys + "?limit=501", status: 400, code: "invalid", field: "limit"},
		{name: "limit=abc", as: developer, method: "GET", path: keys + "?limit=abc", status: 400, code: "invalid", field: "limit"},
		{name: "limit=-1", as: developer, method: "GET", path: keys + "?limit=-1", status: 400, code: "invalid", field: "limit"},
		{name: "events limit=501", as: tenantAdmin, method: "GET", path: "/v1/tenants/acme/events?limit=501", status: 400, code: "invalid", field: "limit"},
		{name: "tenants limit=0", as: operator, method: "GET", path: "/v1/tenants?limit=0", status: 400, code: "invalid", field: "limit"},
		{name: "users limit=abc", as: tenantAdmin, method: "GET", path: "/v1/tenants/acme/users?limit=abc", status: 400, code: "invalid", field: "limit"},
		{name: "groups limit=501", as: developer, method: "GET", path: "/v1/tenants/acme/groups?limit=501", status: 400, code: "invalid", field: "limit"},
		{name: "status filter", as: developer, method: "GET", path: keys + "?status=sleeping", status: 400, code: "invalid", field: "status"},
		{name: "expiry_state filter", as: developer, method: "GET", path: keys + "?expiry_state=soonish", status: 400, code: "invalid", field: "expiry_state"},
		{name: "since not a time", as: tenantAdmin, method: "GET", path: "/v1/tenants/acme/events?since=yesterday", status: 400, code: "invalid", field: "since"},
		{name: "since RFC 3339", as: tenantAdmin, method: "GET", path: "/v1/tenants/acme/events?since=2020-01-02T03:04:05Z", status: 200},
		{name: "since with unencoded +", as: tenantAdmin, method: "GET", path: "/v1/tenants/acme/events?since=2020-01-02T03:04:05+01:00", status: 200},
		{name: "delete keys without owner", as: developer, method: "DELETE", path: keys, status: 400, code: "invalid", field: "owner"},
		// Settings.
		{name: "max_keys_per_user 0", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_keys_per_user": 0}, status: 400, code: "invalid", field: "max_keys_per_user"},
		{name: "max_keys_per_user 1001", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_keys_per_user": 1001}, status: 400, code: "invalid", field: "max_keys_per_user"},
		{name: "max_keys_per_user 1000", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_keys_per_user": 1000}, status: 200},
		{name: "max_expiration not a duration", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": "30 days"}, status: 400, code: "invalid", field: "max_expiration"},
		{name: "max_expiration a number", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": 3600}, status: 400, code: "invalid", field: "max_expiration"},
		{name: "max_expiration 1ns (keys born expired)", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": "1ns"}, status: 400, code: "invalid", field: "max_expiration"},
		{name: "max_expiration 59m59s", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": "59m59s"}, status: 400, code: "invalid", field: "max_expiration"},
		{name: "max_expiration 1h", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": "1h"}, status: 200},
		{name: "expiring_soon_window negative", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"expiring_soon_window": "-1s"}, status: 400, code: "invalid", field: "expiring_soon_window"},
		{name: "expiring_soon_window null", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"expiring_soon_window": nil}, status: 400, code: "invalid", field: "expiring_soon_window"},
		{name: "max_expiration null", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_expiration": nil}, status: 200},
		{name: "api_keys_enabled a string", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"api_keys_enabled": "yes"}, status: 400, code: "invalid", field: "api_keys_enabled"},
		{name: "settings unknown field", as: tenantAdmin, method: "PATCH", path: "/v1/tenants/acme/settings", body: map[string]any{"max_keys": 3}, status: 400, code: "invalid", field: "max_keys"},
		// Tenants, users, tokens, groups.
		{name: "tenant bad id", as: operator, method: "POST", path: "/v1/tenants", body: map[string]any{"id": "no spaces"}, status: 400, code: "invalid", field: "id"},
		{name: "tenant id ..", as: operator, method: "POST", path: "/v1/tenants", body: map[string]any{"id": ".."}, status: 400, code: "invalid", field: "id"},
		{name: "user named me (owner=me)", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/users/me", body: map[string]any{"roles": []string{"developer"}}, status: 400, code: "invalid", field: "user"},
		{name: "group rate below the minimum", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/groups/g2", body: map[string]any{"rate_limit": map[string]any{"requests_per_second": 1e-300, "burst": 1}}, status: 400, code: "invalid", field: "rate_limit.requests_per_second"},
		{name: "tenant duplicate", as: operator, method: "POST", path: "/v1/tenants", body: map[string]any{"id": "acme"}, status: 409, code: "conflict"},
		{name: "tenant negative key_limit", as: operator, method: "PATCH", path: "/v1/tenants/acme", body: map[string]any{"key_limit": -1}, status: 400, code: "invalid", field: "key_limit"},
		{name: "tenant unknown", as: operator, method: "GET", path: "/v1/tenants/nope", status: 404, code: "not_found"},
		{name: "user bad role", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/users/u1", body: map[string]any{"roles": []string{"root"}}, status: 400, code: "invalid", field: "roles[0]"},
		{name: "user no roles", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/users/u1", body: map[string]any{"roles": []string{}}, status: 400, code: "invalid", field: "roles"},
		{name: "user replaced", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/users/dev", body: map[string]any{"roles": []string{"developer", "tenant_admin"}}, status: 200},
		{name: "token for unknown user", as: tenantAdmin, method: "POST", path: "/v1/tenants/acme/users/ghost/tokens", body: map[string]any{"name": "x"}, status: 404, code: "not_found"},
		{name: "token expired at birth", as: tenantAdmin, method: "POST", path: "/v1/tenants/acme/users/dev/tokens", body: map[string]any{"expires_at": past}, status: 400, code: "invalid", field: "expires_at"},
		{name: "group bad method", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/groups/g2", body: map[string]any{"rules": []any{map[string]any{"methods": []string{"FETCH"}}}}, status: 400, code: "invalid", field: "rules[0].methods[0]"},
		{name: "group replaced", as: tenantAdmin, method: "PUT", path: "/v1/tenants/acme/groups/g1", body: map[string]any{"rate_limit": map[string]any{"requests_per_second": 5, "burst": 10}}, status: 200},
		{name: "group in use", as: tenantAdmin, method: "DELETE", path: "/v1/tenants/acme/groups/g1", status: 409, code: "conflict",
			setup: func(fx *fixture) {
				fx.do(operator, "POST", keys, map[string]any{"name": "grouped", "group": "g1", "owner": "dev"}).want(fx.t, 201)
			}},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			fx := newFixture(t)
			if row.setup != nil {
				row.setup(fx)
			}
			res := fx.do(row.as, row.method, strings.ReplaceAll(row.path, "{key}", fx.devKey.ID), row.body)
			if res.status != row.status {
				t.Fatalf("status %d, want %d: %.300s", res.status, row.status, res.body)
			}
			if row.code == "" {
				return
			}
			if ct := res.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			e := res.apiErr(t)
			if e.Code != row.code || e.Message == "" {
				t.Errorf("error %+v, want code %q", e, row.code)
			}
			if row.field != "" && e.Fields[row.field] == "" {
				t.Errorf("fields %v do not name %q (message %q)", e.Fields, row.field, e.Message)
			}
		})
	}
}

// setSettings patches acme's settings as the operator.
func (fx *fixture) setSettings(patch map[string]any) {
	fx.t.Helper()
	fx.do(operator, "PATCH", "/v1/tenants/acme/settings", patch).want(fx.t, http.StatusOK)
}

// TestKeyLimits creates keys up to exactly the limit (accepted) and one more
// (409 key_limit_reached), for max_keys_per_user and the tenant's key_limit.
func TestKeyLimits(t *testing.T) {
	const keys = "/v1/tenants/acme/keys"
	create := func(fx *fixture, as who, i int) *response {
		return fx.do(as, "POST", keys, map[string]any{"name": fmt.Sprintf("key %d", i)})
	}
	t.Run("max_keys_per_user", func(t *testing.T) {
		fx := newFixture(t)
		const n = 3
		fx.setSettings(map[string]any{"max_keys_per_user": n})
		// dev already owns devKey.
		for i := 2; i <= n; i++ {
			create(fx, developer, i).want(t, http.StatusCreated)
		}
		if e := create(fx, developer, n+1).want(t, http.StatusConflict).apiErr(t); e.Code != "key_limit_reached" {
			t.Fatalf("code %q", e.Code)
		}
		// The limit is per owner: a colleague still can.
		create(fx, otherDeveloper, 1).want(t, http.StatusCreated)
		// Only active keys count: revoking one makes room.
		fx.do(developer, "POST", keys+"/"+fx.devKey.ID+"/revoke", nil).want(t, http.StatusOK)
		create(fx, developer, n+1).want(t, http.StatusCreated)
	})
	t.Run("tenant key_limit", func(t *testing.T) {
		fx := newFixture(t)
		const n = 3
		fx.do(operator, "PATCH", "/v1/tenants/acme", map[string]any{"key_limit": n}).want(t, http.StatusOK)
		// devKey is the first of the tenant's n keys.
		create(fx, developer, 2).want(t, http.StatusCreated)
		create(fx, otherDeveloper, 3).want(t, http.StatusCreated)
		if e := create(fx, tenantAdmin, 4).want(t, http.StatusConflict).apiErr(t); e.Code != "key_limit_reached" {
			t.Fatalf("code %q", e.Code)
		}
		// Revoked keys still count toward key_limit; deleted ones do not.
		fx.do(developer, "POST", keys+"/"+fx.devKey.ID+"/revoke", nil).want(t, http.StatusOK)
		create(fx, tenantAdmin, 4).want(t, http.StatusConflict)
		fx.do(developer, "DELETE", keys+"/"+fx.devKey.ID, nil).want(t, http.StatusNoContent)
		create(fx, tenantAdmin, 4).want(t, http.StatusCreated)
		var list keyList
		fx.do(tenantAdmin, "GET", keys, nil).want(t, http.StatusOK).decode(t, &list)
		if list.Usage.Count != n || list.Usage.Limit == nil || *list.Usage.Limit != n {
			t.Fatalf("usage %+v", list.Usage)
		}
		// null removes the limit.
		fx.do(operator, "PATCH", "/v1/tenants/acme", map[string]any{"key_limit": nil}).want(t, http.StatusOK)
		create(fx, tenantAdmin, 5).want(t, http.StatusCreated)
	})
}

// TestRouting checks the answers that do not reach an endpoint: unknown
// paths, wrong methods, and the headers every answer carries.
func TestRouting(t *testing.T) {
	fx := newFixture(t)
	res := fx.do(operator, "GET", "/v1/nothing-here", nil).want(t, http.StatusNotFound)
	if e := res.apiErr(t); e.Code != "not_found" {
		t.Fatalf("code %q", e.Code)
	}
	fx.do(noToken, "GET", "/v2/tenants", nil).want(t, http.StatusNotFound)
	fx.do(operator, "GET", "/v1/tenants/", nil).want(t, http.StatusNotFound)

	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/tenants", "GET, HEAD, POST"},
		{"POST", "/v1/me", "GET, HEAD"},
		{"PUT", "/v1/tenants/acme/keys/key_1", "GET, HEAD, PATCH, DELETE"},
		{"GET", "/v1/tenants/acme/keys/key_1/rotate", "POST"},
		{"PATCH", "/v1/tenants/acme/users/dev", "PUT, DELETE"},
	} {
		res := fx.do(noToken, c.method, c.path, nil)
		if res.status != http.StatusMethodNotAllowed || res.header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 %q", c.method, c.path, res.status, res.header.Get("Allow"), c.allow)
			continue
		}
		if e := res.apiErr(t); e.Code != "method_not_allowed" {
			t.Errorf("%s %s: code %q", c.method, c.path, e.Code)
		}
	}

	res = fx.do(developer, "GET", "/v1/me", nil).want(t, http.StatusOK)
	for h, want := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := res.header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	var me meAnswer
	res.decode(t, &me)
	if me.Principal != "user" || *me.User != "dev" || *me.Tenant != "acme" || len(me.Roles) != 1 || me.Roles[0] != "developer" {
		t.Fatalf("me %+v", me)
	}
	fx.do(operator, "GET", "/v1/me", nil).want(t, http.StatusOK).decode(t, &me)
	if me.Principal != "operator" || me.User != nil || me.Tenant != nil || me.Roles == nil {
		t.Fatalf("operator me %+v", me)
	}
	// The Bearer scheme is case-insensitive; other schemes are not tokens.
	fx.doToken("", "GET", "/v1/me", nil).want(t, http.StatusUnauthorized)
	for _, hdr := range []string{"bearer " + testOperatorToken, "BEARER " + testOperatorToken} {
		r := httptestRequest("GET", "/v1/me", hdr)
		fx.h.ServeHTTP(r.rec, r.req)
		if r.rec.Code != http.StatusOK {
			t.Errorf("%q: %d", hdr, r.rec.Code)
		}
	}
	for _, hdr := range []string{"Basic " + testOperatorToken, testOperatorToken, "Bearer", "Bearer ", "Bearer " + testOperatorToken + "x", "Bearer " + testOperatorToken[:5]} {
		r := httptestRequest("GET", "/v1/me", hdr)
		fx.h.ServeHTTP(r.rec, r.req)
		if r.rec.Code != http.StatusUnauthorized {
			t.Errorf("%q: %d, want 401", hdr, r.rec.Code)
		}
	}
}

// TestEmptyOperatorTokenNeverMatches: an unset KEYGATE_OPERATOR_TOKEN must
// not let an empty bearer in.
func TestEmptyOperatorTokenNeverMatches(t *testing.T) {
	h := New(openStore(t), Config{OperatorTokens: []string{""}})
	r := httptestRequest("GET", "/v1/me", "Bearer ")
	h.ServeHTTP(r.rec, r.req)
	if r.rec.Code != http.StatusUnauthorized {
		t.Fatalf("status %d", r.rec.Code)
	}
}

// TestStoreUnavailable: storage failures answer 503 "unavailable" (fail
// closed) without their text.
func TestStoreUnavailable(t *testing.T) {
	fx := newFixture(t)
	logged := &recordingLogger{}
	fx.h = New(fx.st, Config{OperatorTokens: []string{testOperatorToken}, Logger: logged})
	if err := fx.st.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		as           who
		method, path string
	}{
		{operator, "GET", "/v1/tenants/acme/keys"},
		{operator, "POST", "/v1/tenants"},
		{developer, "GET", "/v1/me"}, // user tokens need the store
	} {
		res := fx.do(c.as, c.method, c.path, map[string]any{"id": "x"})
		if res.status != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", c.method, c.path, res.status, res.body)
		}
		if e := res.apiErr(t); e.Code != "unavailable" || strings.Contains(e.Message, "closed") {
			t.Fatalf("%s %s: %+v", c.method, c.path, e)
		}
	}
	if len(logged.lines) == 0 {
		t.Fatal("internal errors were not logged")
	}
}
