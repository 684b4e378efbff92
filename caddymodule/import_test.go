package caddymodule

import (
	"strings"
	"testing"

	"github.com/keygate/keygate/store"
)

// TestImportedKeysAtTheGateway: secrets imported from another gateway (a
// UUID, 40 hex characters) are admitted unchanged in X-API-Key and as a
// bearer token, and revoking one works at once. A secret of a foreign
// format on a tenant without imported keys is turned away before any
// lookup (the cache sees no miss), while on the importing tenant an
// unknown one is looked up (a miss) and still refused.
func TestImportedKeysAtTheGateway(t *testing.T) {
	g := startGateway(t, "",
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		tenant other
	}
	reverse_proxy {{UPSTREAM}}
}`)
	st := g.st
	enable(t, st, store.DefaultTenant)
	enable(t, st, "other")
	const (
		uuid  = "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"
		hex40 = "0123456789abcdef0123456789abcdef01234567"
	)
	res, n, err := st.ImportKeys("test", store.DefaultTenant, "", []store.ImportInput{
		{KeyInput: store.KeyInput{Name: "from kong"}, Owner: "alice", Secret: uuid},
		{KeyInput: store.KeyInput{Name: "from apisix"}, Owner: "bob", Secret: hex40},
	})
	if err != nil || n != 2 {
		t.Fatalf("import: %d, %v", n, err)
	}
	ids := map[string]string{uuid: *res[0].ID, hex40: *res[1].ID}
	_, native := newKey(t, st, "other", store.KeyInput{})

	for secret, id := range ids {
		for _, hdr := range []map[string]string{{"X-API-Key": secret}, {"Authorization": "Bearer " + secret}} {
			r := get(t, g.url+"/orders", hdr)
			if r.status != 200 {
				t.Fatalf("imported secret in %v: %d %s", hdr, r.status, r.body)
			}
			e := r.echo(t)
			if got := e.Headers["X-Api-Key-Id"]; len(got) != 1 || got[0] != id {
				t.Fatalf("upstream saw key id %v, want %s", got, id)
			}
			if _, ok := e.Headers["X-Api-Key"]; ok || e.Headers["Authorization"] != nil {
				t.Fatal("the imported secret reached the upstream")
			}
		}
	}

	// Tenant "other" has no imported keys: garbage and foreign secrets
	// never reach the cache (no miss), native keys still work.
	other := g.extra["0"]
	if r := get(t, other+"/x", map[string]string{"X-API-Key": native}); r.status != 200 {
		t.Fatalf("native key on the tenant without imports: %d %s", r.status, r.body)
	}
	st.Wait()
	_, misses := st.CacheMetrics()
	for _, garbage := range []string{uuid, hex40, "not-a-keygate-key-at-all", strings.Repeat("z", 200)} {
		for _, hdr := range []map[string]string{{"X-API-Key": garbage}, {"Authorization": "Bearer " + garbage}} {
			if r := get(t, other+"/x", hdr); r.status != 401 || r.code() != "invalid_key" {
				t.Fatalf("%v on the tenant without imports: %d %s", hdr, r.status, r.body)
			}
		}
	}
	st.Wait()
	if _, m := st.CacheMetrics(); m != misses {
		t.Fatalf("foreign secrets on a tenant without imports were looked up (%d cache misses)", m-misses)
	}
	// On the importing tenant an unknown foreign secret is looked up once.
	if r := get(t, g.url+"/x", map[string]string{"X-API-Key": "unknown-foreign-secret-1"}); r.status != 401 || r.code() != "invalid_key" {
		t.Fatalf("unknown foreign secret: %d %s", r.status, r.body)
	}
	st.Wait()
	if _, m := st.CacheMetrics(); m != misses+1 {
		t.Fatalf("an unknown foreign secret on the importing tenant: %d misses, want 1", m-misses)
	}

	// Revocation of an imported key takes effect at once.
	if _, err := st.RevokeKey("test", store.DefaultTenant, ids[uuid]); err != nil {
		t.Fatal(err)
	}
	if r := get(t, g.url+"/x", map[string]string{"X-API-Key": uuid}); r.status != 401 || r.code() != "key_revoked" {
		t.Fatalf("revoked imported key: %d %s", r.status, r.body)
	}
	if r := get(t, g.url+"/x", map[string]string{"Authorization": "Bearer " + hex40}); r.status != 200 {
		t.Fatalf("the other imported key after the revoke: %d %s", r.status, r.body)
	}
}
