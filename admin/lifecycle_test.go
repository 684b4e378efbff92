package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/keygate/keygate/store"
)

// TestKeyLifecycle drives one key through create, show, list, rotate,
// revoke and delete over HTTP, checking that the secret appears exactly in
// the create and rotate answers, that the store stops verifying replaced
// secrets at once, and that the audit trail records every step.
func TestKeyLifecycle(t *testing.T) {
	fx := newFixture(t)
	const keys = "/v1/tenants/acme/keys"

	// Developers' keys get the tenant's default group.
	fx.do(tenantAdmin, "PATCH", "/v1/tenants/acme/settings", map[string]any{"default_group": "g1"}).want(t, http.StatusOK)
	res := fx.do(developer, "POST", keys, map[string]any{
		"name": "billing", "description": "billing backend", "ip_allowlist": []string{"10.0.0.0/8"},
	}).want(t, http.StatusCreated)
	if cc := res.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q on a secret", cc)
	}
	var created keySecret
	res.decode(t, &created)
	secret, key := created.Secret, created.Key
	if !store.WellFormed(store.KeyPrefix, secret) {
		t.Fatalf("secret %q is not a well-formed key", secret)
	}
	if key.Owner != "dev" || key.Status != "active" || key.Name != "billing" || key.Group != "g1" || key.Hint == "" {
		t.Fatalf("created key %+v", key)
	}
	if len(key.Hint) >= len(secret) || !strings.HasPrefix(secret, key.Hint[:7]) || !strings.HasSuffix(secret[:len(secret)-7], key.Hint[len(key.Hint)-4:]) {
		t.Fatalf("hint %q vs secret", key.Hint)
	}
	if _, verdict, err := fx.st.Verify("acme", secret, time.Now()); err != nil || verdict != store.VerdictValid {
		t.Fatalf("verify new secret: %v %v", verdict, err)
	}
	// noSecret checks an answer never carries a secret.
	noSecret := func(what string, r *response, secrets ...string) {
		t.Helper()
		for _, s := range secrets {
			if bytes.Contains(r.body, []byte(s)) || bytes.Contains(r.body, []byte(s[len(s)-12:])) {
				t.Fatalf("%s leaks a secret: %s", what, r.body)
			}
		}
		if bytes.Contains(r.body, []byte(`"secret"`)) {
			t.Fatalf("%s has a secret field: %s", what, r.body)
		}
	}

	// GET and list show the hint, never the secret.
	var got store.Key
	res = fx.do(developer, "GET", keys+"/"+key.ID, nil).want(t, http.StatusOK)
	noSecret("GET", res, secret)
	res.decode(t, &got)
	if got.Hint != key.Hint || got.ID != key.ID {
		t.Fatalf("got %+v", got)
	}
	res = fx.do(tenantAdmin, "GET", keys+"?q=billing", nil).want(t, http.StatusOK)
	noSecret("list", res, secret)
	var list keyList
	res.decode(t, &list)
	if len(list.Keys) != 1 || list.Keys[0].Hint != key.Hint || list.Total != 1 || list.NextCursor != nil {
		t.Fatalf("list %+v", list)
	}

	// Edit touches metadata only.
	fx.do(developer, "PATCH", keys+"/"+key.ID, map[string]any{"name": "billing v2"}).want(t, http.StatusOK).decode(t, &got)
	if got.Name != "billing v2" || got.Hint != key.Hint {
		t.Fatalf("patched %+v", got)
	}

	// Rotate: new secret, same id and config; the old one is dead at once.
	res = fx.do(developer, "POST", keys+"/"+key.ID+"/rotate", nil).want(t, http.StatusOK)
	if cc := res.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q on a secret", cc)
	}
	var rotated keySecret
	res.decode(t, &rotated)
	if rotated.Secret == "" || rotated.Secret == secret || rotated.Key.ID != key.ID || rotated.Key.Group != "g1" || rotated.Key.Hint == key.Hint {
		t.Fatalf("rotated %+v", rotated)
	}
	if _, verdict, err := fx.st.Verify("acme", secret, time.Now()); err != nil || verdict != store.VerdictInvalid {
		t.Fatalf("old secret after rotate: %v %v", verdict, err)
	}
	if _, verdict, err := fx.st.Verify("acme", rotated.Secret, time.Now()); err != nil || verdict != store.VerdictValid {
		t.Fatalf("new secret after rotate: %v %v", verdict, err)
	}

	// Revoke (by the tenant admin): permanent; a second revoke is 409.
	var revoked store.Key
	fx.do(tenantAdmin, "POST", keys+"/"+key.ID+"/revoke", nil).want(t, http.StatusOK).decode(t, &revoked)
	if revoked.Status != "revoked" || revoked.RevokedBy == nil || *revoked.RevokedBy != "user:admin" || revoked.RevokedAt == nil {
		t.Fatalf("revoked %+v", revoked)
	}
	if _, verdict, _ := fx.st.Verify("acme", rotated.Secret, time.Now()); verdict != store.VerdictRevoked {
		t.Fatalf("verify after revoke: %v", verdict)
	}
	if e := fx.do(developer, "POST", keys+"/"+key.ID+"/revoke", nil).want(t, http.StatusConflict).apiErr(t); e.Code != "conflict" {
		t.Fatalf("second revoke: %+v", e)
	}
	fx.do(developer, "POST", keys+"/"+key.ID+"/rotate", nil).want(t, http.StatusConflict)

	// Delete: 204, then 404 everywhere.
	res = fx.do(developer, "DELETE", keys+"/"+key.ID, nil).want(t, http.StatusNoContent)
	if len(res.body) != 0 {
		t.Fatalf("204 with a body: %s", res.body)
	}
	fx.do(developer, "GET", keys+"/"+key.ID, nil).want(t, http.StatusNotFound)
	fx.do(tenantAdmin, "GET", keys+"/"+key.ID, nil).want(t, http.StatusNotFound)
	fx.do(developer, "DELETE", keys+"/"+key.ID, nil).want(t, http.StatusNotFound)

	// The audit trail has every step, with actors, and no secret.
	res = fx.do(tenantAdmin, "GET", "/v1/tenants/acme/events?key_id="+key.ID, nil).want(t, http.StatusOK)
	noSecret("events", res, secret, rotated.Secret)
	var events eventList
	res.decode(t, &events)
	var trail []string
	for _, e := range events.Events {
		trail = append(trail, e.Type+" by "+e.Actor)
	}
	want := []string{"key.created by user:dev", "key.updated by user:dev", "key.rotated by user:dev", "key.revoked by user:admin", "key.deleted by user:dev"}
	if fmt.Sprint(trail) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", trail, want)
	}
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/events?type=key.rotated", nil).want(t, http.StatusOK).decode(t, &events)
	if len(events.Events) != 1 || *events.Events[0].KeyID != key.ID {
		t.Fatalf("events by type: %+v", events.Events)
	}
}

// TestRotateWithGracePeriod: with grace_period the old secret keeps working
// until the grace ends.
func TestRotateWithGracePeriod(t *testing.T) {
	fx := newFixture(t)
	var rotated keySecret
	fx.do(developer, "POST", "/v1/tenants/acme/keys/"+fx.devKey.ID+"/rotate", map[string]any{"grace_period": "1h"}).
		want(t, http.StatusOK).decode(t, &rotated)
	now := time.Now()
	if _, verdict, _ := fx.st.Verify("acme", fx.devSecret, now); verdict != store.VerdictValid {
		t.Fatalf("old secret in grace: %v", verdict)
	}
	if _, verdict, _ := fx.st.Verify("acme", fx.devSecret, now.Add(61*time.Minute)); verdict == store.VerdictValid {
		t.Fatal("old secret valid after the grace period")
	}
	if _, verdict, _ := fx.st.Verify("acme", rotated.Secret, now); verdict != store.VerdictValid {
		t.Fatalf("new secret: %v", verdict)
	}
}

// TestKeyListPagination checks total, usage and next_cursor over pages, and
// that developers only ever see their own keys.
func TestKeyListPagination(t *testing.T) {
	fx := newFixture(t)
	const keys = "/v1/tenants/acme/keys"
	for i := 0; i < 4; i++ { // dev owns devKey plus these 4
		fx.do(developer, "POST", keys, map[string]any{"name": fmt.Sprintf("dev key %d", i)}).want(t, http.StatusCreated)
	}
	for i := 0; i < 2; i++ {
		fx.do(otherDeveloper, "POST", keys, map[string]any{"name": fmt.Sprintf("dev2 key %d", i)}).want(t, http.StatusCreated)
	}

	// pages walks the list with limit=2 and returns the page sizes.
	pages := func(as who, query string) (sizes []int, total int, usage tenantKeyUsage) {
		t.Helper()
		cursor := ""
		seen := map[string]bool{}
		for {
			var page keyList
			fx.do(as, "GET", keys+"?limit=2"+query+cursor, nil).want(t, http.StatusOK).decode(t, &page)
			for _, k := range page.Keys {
				if seen[k.ID] {
					t.Fatalf("key %s on two pages", k.ID)
				}
				seen[k.ID] = true
				if as == developer && k.Owner != "dev" {
					t.Fatalf("developer sees %s's key", k.Owner)
				}
			}
			sizes = append(sizes, len(page.Keys))
			total, usage = page.Total, page.Usage
			if page.NextCursor == nil {
				return sizes, total, usage
			}
			cursor = "&cursor=" + *page.NextCursor
		}
	}
	sizes, total, usage := pages(tenantAdmin, "")
	if fmt.Sprint(sizes) != "[2 2 2 1]" || total != 7 || usage.Count != 7 || usage.Limit != nil {
		t.Fatalf("admin: pages %v total %d usage %+v", sizes, total, usage)
	}
	sizes, total, usage = pages(developer, "")
	if fmt.Sprint(sizes) != "[2 2 1]" || total != 5 || usage.Count != 7 {
		t.Fatalf("developer: pages %v total %d usage %+v", sizes, total, usage)
	}
	sizes, total, _ = pages(tenantAdmin, "&owner=dev2")
	if fmt.Sprint(sizes) != "[2]" || total != 2 {
		t.Fatalf("owner filter: pages %v total %d", sizes, total)
	}
	sizes, total, _ = pages(otherDeveloper, "&owner=me&q=KEY%200")
	if fmt.Sprint(sizes) != "[1]" || total != 1 {
		t.Fatalf("search: pages %v total %d", sizes, total)
	}
	fx.do(operator, "PATCH", "/v1/tenants/acme", map[string]any{"key_limit": 10}).want(t, http.StatusOK)
	if _, _, usage = pages(developer, ""); usage.Limit == nil || *usage.Limit != 10 {
		t.Fatalf("usage limit %+v", usage)
	}

	// A developer deletes all of its keys at once.
	var deleted deletedCount
	fx.do(developer, "DELETE", keys+"?owner=me", nil).want(t, http.StatusOK).decode(t, &deleted)
	if deleted.Deleted != 5 {
		t.Fatalf("deleted %d", deleted.Deleted)
	}
	if sizes, total, usage = pages(developer, ""); fmt.Sprint(sizes) != "[0]" || total != 0 || usage.Count != 2 {
		t.Fatalf("after delete: pages %v total %d usage %+v", sizes, total, usage)
	}
}

// TestBulkRevoke revokes several keys at once, with a result per id.
func TestBulkRevoke(t *testing.T) {
	fx := newFixture(t)
	var other keySecret
	fx.do(otherDeveloper, "POST", "/v1/tenants/acme/keys", map[string]any{"name": "dev2 key"}).want(t, http.StatusCreated).decode(t, &other)
	var foreign keySecret
	fx.do(operator, "POST", "/v1/tenants/other/keys", map[string]any{"name": "foreign", "owner": "oadmin"}).want(t, http.StatusCreated).decode(t, &foreign)
	ids := []string{fx.devKey.ID, other.Key.ID, foreign.Key.ID, "key_unknown"}
	var out bulkRevokeResults
	fx.do(tenantAdmin, "POST", "/v1/tenants/acme/keys/revoke", map[string]any{"ids": ids}).want(t, http.StatusOK).decode(t, &out)
	if len(out.Results) != 4 {
		t.Fatalf("results %+v", out.Results)
	}
	for i, r := range out.Results {
		wantOK := i < 2 // another tenant's key is as unknown as an unknown one
		if r.ID != ids[i] || r.OK != wantOK || (r.Error == nil) != wantOK {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	if _, verdict, _ := fx.st.Verify("other", foreign.Secret, time.Now()); verdict != store.VerdictValid {
		t.Fatal("bulk revoke reached another tenant")
	}
}

// TestTokensAndUsers: a token created over the API authenticates, stops at
// once when revoked, and deleting a user revokes its tokens.
func TestTokensAndUsers(t *testing.T) {
	fx := newFixture(t)
	res := fx.do(tenantAdmin, "PUT", "/v1/tenants/acme/users/carol", map[string]any{"roles": []string{"developer"}}).want(t, http.StatusCreated)
	var u store.User
	res.decode(t, &u)
	if u.ID != "carol" || u.Tenant != "acme" {
		t.Fatalf("user %+v", u)
	}
	res = fx.do(tenantAdmin, "POST", "/v1/tenants/acme/users/carol/tokens", map[string]any{"name": "laptop"}).want(t, http.StatusCreated)
	if res.header.Get("Cache-Control") != "no-store" {
		t.Fatal("token secret without no-store")
	}
	var created tokenCreated
	res.decode(t, &created)
	if !strings.HasPrefix(created.Secret, "kga_") || created.Token.User != "carol" {
		t.Fatalf("token %+v", created)
	}
	fx.doToken(created.Secret, "GET", "/v1/me", nil).want(t, http.StatusOK)

	var list tokenList
	res = fx.do(tenantAdmin, "GET", "/v1/tenants/acme/users/carol/tokens", nil).want(t, http.StatusOK)
	if bytes.Contains(res.body, []byte(created.Secret)) {
		t.Fatal("token list leaks the secret")
	}
	res.decode(t, &list)
	if len(list.Tokens) != 1 || list.Tokens[0].Hint == "" || list.NextCursor != nil {
		t.Fatalf("tokens %s", res.body)
	}
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/users/carol/tokens/"+created.Token.ID, nil).want(t, http.StatusNoContent)
	fx.doToken(created.Secret, "GET", "/v1/me", nil).want(t, http.StatusUnauthorized)
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/users/carol/tokens/"+created.Token.ID, nil).want(t, http.StatusConflict)
	// Another user's token id under carol is unknown.
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/users/carol/tokens/"+fx.devTokenID, nil).want(t, http.StatusNotFound)

	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/users/dev", nil).want(t, http.StatusNoContent)
	fx.do(developer, "GET", "/v1/me", nil).want(t, http.StatusUnauthorized)
	var users userList
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/users", nil).want(t, http.StatusOK).decode(t, &users)
	var ids []string
	for _, u := range users.Users {
		ids = append(ids, u.ID)
	}
	if fmt.Sprint(ids) != "[admin carol dev2]" {
		t.Fatalf("users %v", ids)
	}
}

// TestTenantsAndSettings: the operator creates a tenant, which starts with
// API keys disabled; its admin enables them; key creation then works.
func TestTenantsAndSettings(t *testing.T) {
	fx := newFixture(t)
	var tenant store.Tenant
	fx.do(operator, "POST", "/v1/tenants", map[string]any{"id": "globex", "name": "Globex", "key_limit": 10}).
		want(t, http.StatusCreated).decode(t, &tenant)
	if tenant.ID != "globex" || tenant.KeyLimit == nil || *tenant.KeyLimit != 10 || tenant.KeyCount != 0 {
		t.Fatalf("tenant %+v", tenant)
	}
	var settings store.Settings
	fx.do(operator, "GET", "/v1/tenants/globex/settings", nil).want(t, http.StatusOK).decode(t, &settings)
	if settings.APIKeysEnabled || settings.MaxKeysPerUser != store.DefaultMaxKeysPerUser {
		t.Fatalf("new tenant settings %+v", settings)
	}
	fx.do(operator, "POST", "/v1/tenants/globex/keys", map[string]any{"name": "early", "owner": "x"}).want(t, http.StatusForbidden)
	fx.do(operator, "PATCH", "/v1/tenants/globex/settings", map[string]any{"api_keys_enabled": true, "max_expiration": "720h"}).
		want(t, http.StatusOK).decode(t, &settings)
	if !settings.APIKeysEnabled || settings.MaxExpiration == nil || time.Duration(*settings.MaxExpiration) != 720*time.Hour {
		t.Fatalf("settings %+v", settings)
	}
	var created keySecret
	fx.do(operator, "POST", "/v1/tenants/globex/keys", map[string]any{"name": "first", "owner": "svc"}).want(t, http.StatusCreated).decode(t, &created)
	// Without expires_at, max_expiration sets the default expiry.
	if created.Key.ExpiresAt == nil || time.Until(*created.Key.ExpiresAt) < 719*time.Hour {
		t.Fatalf("default expiry %v", created.Key.ExpiresAt)
	}
	var tenants tenantList
	fx.do(operator, "GET", "/v1/tenants?limit=2", nil).want(t, http.StatusOK).decode(t, &tenants)
	if len(tenants.Tenants) != 2 || tenants.NextCursor == nil {
		t.Fatalf("tenants page %+v", tenants)
	}
	fx.do(operator, "GET", "/v1/tenants?limit=2&cursor="+*tenants.NextCursor, nil).want(t, http.StatusOK).decode(t, &tenants)
	if len(tenants.Tenants) != 2 || tenants.NextCursor != nil { // acme default | globex other
		t.Fatalf("tenants last page %+v", tenants)
	}
	// Operator requests about a tenant that does not exist are 404.
	fx.do(operator, "GET", "/v1/tenants/nope/keys", nil).want(t, http.StatusNotFound)
	fx.do(operator, "GET", "/v1/tenants/nope/keys/"+fx.devKey.ID, nil).want(t, http.StatusNotFound)
	// A key id asked for under the wrong tenant is 404, even for the operator.
	fx.do(operator, "GET", "/v1/tenants/other/keys/"+fx.devKey.ID, nil).want(t, http.StatusNotFound)
}

// TestKeyUsage: the usage endpoint reports what the gateway recorded.
func TestKeyUsage(t *testing.T) {
	fx := newFixture(t)
	view, verdict, err := fx.st.Verify("acme", fx.devSecret, time.Now())
	if err != nil || verdict != store.VerdictValid {
		t.Fatal(verdict, err)
	}
	fx.st.RecordUse(view, netip.MustParseAddr("192.0.2.1"), store.OutcomeOK, time.Now())
	fx.st.RecordUse(view, netip.MustParseAddr("192.0.2.1"), store.OutcomeIPNotAllowed, time.Now())
	var u store.KeyUsage
	fx.do(developer, "GET", "/v1/tenants/acme/keys/"+fx.devKey.ID+"/usage", nil).want(t, http.StatusOK).decode(t, &u)
	if u.Total != 2 || u.Outcomes["ok"] != 1 || u.Outcomes["ip_not_allowed"] != 1 || len(u.PerMinute) == 0 || u.LastUsedAt == nil {
		t.Fatalf("usage %+v", u)
	}
}

// TestExpiredTokenIsUnauthorized: a user token stops working when it
// expires.
func TestExpiredTokenIsUnauthorized(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st, err := store.Open(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	fx := &fixture{t: t, st: st, h: New(st, Config{OperatorTokens: []string{testOperatorToken}})}
	fx.tokens[operator] = testOperatorToken
	fx.do(operator, "PUT", "/v1/tenants/default/users/temp", map[string]any{"roles": []string{"developer"}}).want(t, http.StatusCreated)
	var created tokenCreated
	fx.do(operator, "POST", "/v1/tenants/default/users/temp/tokens", map[string]any{"expires_at": now.Add(time.Hour)}).
		want(t, http.StatusCreated).decode(t, &created)
	fx.doToken(created.Secret, "GET", "/v1/me", nil).want(t, http.StatusOK)
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	res := fx.doToken(created.Secret, "GET", "/v1/me", nil).want(t, http.StatusUnauthorized)
	if res.header.Get("WWW-Authenticate") == "" || res.apiErr(t).Code != "unauthorized" {
		t.Fatalf("expired token: %v %s", res.header, res.body)
	}
}

// TestDeveloperGroup: a developer can neither choose nor change (nor clear)
// a key's group, so it cannot widen what its key may call; its keys get the
// tenant's default_group; a tenant_admin still sets groups, and the
// key.updated event records the values before and after (issue #9 item 11).
func TestDeveloperGroup(t *testing.T) {
	fx := newFixture(t)
	const keys = "/v1/tenants/acme/keys"
	var settings store.Settings
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/settings", nil).want(t, http.StatusOK).decode(t, &settings)
	if settings.DefaultGroup != nil {
		t.Fatalf("default_group %q", *settings.DefaultGroup)
	}
	// No default group: a developer's key has none.
	var created keySecret
	fx.do(developer, "POST", keys, map[string]any{"name": "plain"}).want(t, http.StatusCreated).decode(t, &created)
	if created.Key.Group != "" {
		t.Fatalf("group %q", created.Key.Group)
	}
	fx.do(tenantAdmin, "PATCH", "/v1/tenants/acme/settings", map[string]any{"default_group": "g1"}).want(t, http.StatusOK).decode(t, &settings)
	if settings.DefaultGroup == nil || *settings.DefaultGroup != "g1" {
		t.Fatalf("default_group %v", settings.DefaultGroup)
	}
	fx.do(developer, "POST", keys, map[string]any{"name": "grouped"}).want(t, http.StatusCreated).decode(t, &created)
	if created.Key.Group != "g1" {
		t.Fatalf("developer's key group %q, want the default g1", created.Key.Group)
	}
	// A tenant_admin creating a key without a group: unchanged, no group.
	var adminKey keySecret
	fx.do(tenantAdmin, "POST", keys, map[string]any{"name": "admin's"}).want(t, http.StatusCreated).decode(t, &adminKey)
	if adminKey.Key.Group != "" {
		t.Fatalf("admin's key group %q", adminKey.Key.Group)
	}
	// The developer tries to widen its key: refused, nothing changes.
	for _, body := range []map[string]any{{"group": nil}, {"group": ""}, {"group": "g1"}, {"name": "renamed", "group": nil}} {
		res := fx.do(developer, "PATCH", keys+"/"+created.Key.ID, body).want(t, http.StatusForbidden)
		if e := res.apiErr(t); e.Fields["group"] == "" {
			t.Fatalf("%v: 403 does not name group: %+v", body, e)
		}
	}
	var got store.Key
	fx.do(developer, "GET", keys+"/"+created.Key.ID, nil).want(t, http.StatusOK).decode(t, &got)
	if got.Group != "g1" || got.Name != "grouped" {
		t.Fatalf("key after refused edits %+v", got)
	}
	// What a developer may edit.
	fx.do(developer, "PATCH", keys+"/"+created.Key.ID, map[string]any{"name": "renamed", "description": "d", "ip_allowlist": []string{"10.0.0.0/8"}}).
		want(t, http.StatusOK)
	// A tenant_admin may clear the group; the event has before and after.
	fx.do(tenantAdmin, "PATCH", keys+"/"+created.Key.ID, map[string]any{"group": nil}).want(t, http.StatusOK).decode(t, &got)
	if got.Group != "" {
		t.Fatalf("group after admin cleared it: %q", got.Group)
	}
	var events eventList
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/events?type=key.updated&key_id="+created.Key.ID, nil).want(t, http.StatusOK).decode(t, &events)
	if len(events.Events) != 2 {
		t.Fatalf("%d key.updated events", len(events.Events))
	}
	last := events.Events[1].Detail
	if fmt.Sprint(last["fields"]) != "[group]" || fmt.Sprint(last["before"]) != "map[group:g1]" || fmt.Sprint(last["after"]) != "map[group:<nil>]" {
		t.Fatalf("key.updated detail %v", last)
	}
	// The default group cannot be deleted; cleared, it can.
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/groups/g1", nil).want(t, http.StatusConflict)
	fx.do(tenantAdmin, "PATCH", "/v1/tenants/acme/settings", map[string]any{"default_group": nil}).want(t, http.StatusOK).decode(t, &settings)
	if settings.DefaultGroup != nil {
		t.Fatalf("default_group after null %v", *settings.DefaultGroup)
	}
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/groups/g1", nil).want(t, http.StatusNoContent)
}

// TestDeleteUserRevokesKeys: DELETE of a user revokes its tokens and its
// active keys at once, and the events name them (issue #9 item 12).
func TestDeleteUserRevokesKeys(t *testing.T) {
	fx := newFixture(t)
	if _, verdict, _ := fx.st.Verify("acme", fx.devSecret, time.Now()); verdict != store.VerdictValid {
		t.Fatalf("before: %v", verdict)
	}
	fx.do(tenantAdmin, "DELETE", "/v1/tenants/acme/users/dev", nil).want(t, http.StatusNoContent)
	if _, verdict, _ := fx.st.Verify("acme", fx.devSecret, time.Now()); verdict != store.VerdictRevoked {
		t.Fatalf("key of a deleted user: %v", verdict)
	}
	fx.do(developer, "GET", "/v1/me", nil).want(t, http.StatusUnauthorized)
	var key store.Key
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/keys/"+fx.devKey.ID, nil).want(t, http.StatusOK).decode(t, &key)
	if key.Status != "revoked" || key.RevokedBy == nil || *key.RevokedBy != "user:admin" {
		t.Fatalf("key %+v", key)
	}
	var events eventList
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/events?type=user.deleted", nil).want(t, http.StatusOK).decode(t, &events)
	if len(events.Events) != 1 || fmt.Sprint(events.Events[0].Detail["keys_revoked"]) != fmt.Sprint([]any{fx.devKey.ID}) ||
		fmt.Sprint(events.Events[0].Detail["tokens_revoked"]) != fmt.Sprint([]any{fx.devTokenID}) {
		t.Fatalf("user.deleted %+v", events.Events)
	}
	fx.do(tenantAdmin, "GET", "/v1/tenants/acme/events?type=key.revoked&key_id="+fx.devKey.ID, nil).want(t, http.StatusOK).decode(t, &events)
	if len(events.Events) != 1 || events.Events[0].Actor != "user:admin" {
		t.Fatalf("key.revoked %+v", events.Events)
	}
}

// TestRotateExpiredKeyOverHTTP: rotating an expired key is held to the
// owner's max_keys_per_user (409 key_limit_reached) and to max_expiration,
// and never answers with a silently null expiry (issue #9 item 4).
func TestRotateExpiredKeyOverHTTP(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st, err := store.Open(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	fx := &fixture{t: t, st: st, h: New(st, Config{OperatorTokens: []string{testOperatorToken}, Now: clock})}
	fx.tokens[operator] = testOperatorToken
	const keys = "/v1/tenants/default/keys"
	fx.do(operator, "PATCH", "/v1/tenants/default/settings", map[string]any{"api_keys_enabled": true, "max_keys_per_user": 2}).want(t, http.StatusOK)
	var expired keySecret
	fx.do(operator, "POST", keys, map[string]any{"name": "expiring", "owner": "alice", "expires_at": now.Add(time.Hour)}).
		want(t, http.StatusCreated).decode(t, &expired)
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	for i := range 2 {
		fx.do(operator, "POST", keys, map[string]any{"name": fmt.Sprintf("active %d", i), "owner": "alice"}).want(t, http.StatusCreated)
	}
	if e := fx.do(operator, "POST", keys, map[string]any{"name": "third", "owner": "alice"}).want(t, http.StatusConflict).apiErr(t); e.Code != "key_limit_reached" {
		t.Fatalf("third create: %+v", e)
	}
	rotate := keys + "/" + expired.Key.ID + "/rotate"
	if e := fx.do(operator, "POST", rotate, map[string]any{"expires_at": now.Add(time.Hour)}).want(t, http.StatusConflict).apiErr(t); e.Code != "key_limit_reached" {
		t.Fatalf("rotate at the limit: %+v", e)
	}
	if e := fx.do(operator, "POST", rotate, nil).want(t, http.StatusBadRequest).apiErr(t); e.Fields["expires_at"] == "" {
		t.Fatalf("rotate without expires_at or max_expiration: %+v", e)
	}
	fx.do(operator, "PATCH", "/v1/tenants/default/settings", map[string]any{"max_keys_per_user": 3, "max_expiration": "720h"}).want(t, http.StatusOK)
	var back keySecret
	fx.do(operator, "POST", rotate, nil).want(t, http.StatusOK).decode(t, &back)
	if back.Key.Status != "active" || back.Key.ExpiresAt == nil || !back.Key.ExpiresAt.Equal(now.Add(720*time.Hour)) {
		t.Fatalf("reactivated key %+v", back.Key)
	}
}
