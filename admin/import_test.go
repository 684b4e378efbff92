package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

const importPath = "/v1/tenants/acme/keys/import"

func importEntries(n int, secret func(i int) string) []map[string]any {
	keys := make([]map[string]any, n)
	for i := range keys {
		keys[i] = map[string]any{"name": fmt.Sprintf("moved %d", i), "owner": fmt.Sprintf("user%d", i%20), "secret": secret(i)}
	}
	return keys
}

// TestImportKeysEndpoint: foreign secrets are imported and verify, every
// entry gets a result in order, skipped entries say why without quoting
// their secret, and no answer carries a secret.
func TestImportKeysEndpoint(t *testing.T) {
	fx := newFixture(t)
	uuid := "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"
	hex40 := "0123456789abcdef0123456789abcdef01234567"
	body := map[string]any{"keys": []map[string]any{
		{"name": "from kong", "secret": uuid, "group": "g1", "ip_allowlist": []string{"10.0.0.0/8"}},
		{"name": "from apisix", "owner": "dev", "secret": hex40, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
		{"name": "again", "owner": "dev", "secret": uuid},
		{"name": "tiny", "owner": "me", "secret": "tiny-secret"},
	}}
	var out importResults
	r := fx.do(tenantAdmin, "POST", importPath, body).want(t, http.StatusOK)
	r.decode(t, &out)
	for _, sec := range []string{uuid, hex40, "tiny-secret"} {
		if bytes.Contains(r.body, []byte(sec)) {
			t.Fatalf("the answer holds a secret: %s", r.body)
		}
	}
	if out.Imported != 2 || len(out.Results) != 4 {
		t.Fatalf("answer %s", r.body)
	}
	for i, want := range []string{"", "", "the same as entry 0", "secret"} {
		res := out.Results[i]
		if res.Index != i || (want == "") != (res.ID != nil) || want != "" && (res.Error == nil || !strings.Contains(*res.Error, want)) {
			t.Fatalf("result %d: %s", i, r.body)
		}
	}
	key := must[*store.Key](t)(fx.st.GetKey("acme", *out.Results[0].ID))
	if key.Owner != "admin" || key.Group != "g1" || key.Hint != "3f2b…8b9a" {
		t.Fatalf("imported key %+v", key)
	}
	for _, sec := range []string{uuid, hex40} {
		if _, v, err := fx.st.Verify("acme", sec, time.Now()); err != nil || v != store.VerdictValid {
			t.Fatalf("imported secret verifies as %v (%v)", v, err)
		}
	}
	// Stored secrets are duplicates on the next call.
	fx.do(tenantAdmin, "POST", importPath, map[string]any{"keys": []map[string]any{{"name": "later", "secret": hex40}}}).
		want(t, http.StatusOK).decode(t, &out)
	if out.Imported != 0 || out.Results[0].Error == nil || !strings.Contains(*out.Results[0].Error, "already in use") {
		t.Fatalf("stored duplicate: %+v", out)
	}
	// The operator imports on behalf of users only.
	fx.do(operator, "POST", importPath, map[string]any{"keys": []map[string]any{{"name": "no owner", "secret": "operator-import-1234"}}}).
		want(t, http.StatusOK).decode(t, &out)
	if out.Imported != 0 || out.Results[0].Error == nil || !strings.Contains(*out.Results[0].Error, "owner") {
		t.Fatalf("operator without owner: %+v", out)
	}
}

// TestImportKeysLimits: the call's limits are 400s and 413s naming them;
// nothing of a refused call is stored. 10,000 keys (well over the 1 MiB of
// other bodies) are one call.
func TestImportKeysLimits(t *testing.T) {
	fx := newFixture(t)
	secret := func(i int) string { return fmt.Sprintf("legacy-secret-%08d", i) }

	r := fx.do(tenantAdmin, "POST", importPath, map[string]any{"keys": importEntries(store.MaxImport+1, secret)}).want(t, http.StatusBadRequest)
	if e := r.apiErr(t); e.Fields["keys"] == "" || !strings.Contains(e.Fields["keys"], "10000") {
		t.Fatalf("10,001 keys: %s", r.body)
	}
	r = fx.do(tenantAdmin, "POST", importPath, map[string]any{}).want(t, http.StatusBadRequest)
	if e := r.apiErr(t); e.Fields["keys"] == "" {
		t.Fatalf("no keys: %s", r.body)
	}
	// A type mismatch names the entry's field and does not quote the body.
	r = fx.do(tenantAdmin, "POST", importPath, `{"keys":[{"name":"x1","secret":"ok-secret-0000000"},{"name":"x2","secret":["secret-in-array-1234"]}]}`).want(t, http.StatusBadRequest)
	if e := r.apiErr(t); e.Fields["keys[1].secret"] == "" || bytes.Contains(r.body, []byte("secret-in-array")) {
		t.Fatalf("type mismatch: %s", r.body)
	}
	r = fx.do(tenantAdmin, "POST", importPath, `{"keys":[{"name":"x1","secret":"secret-unknown-field","sekret":"leak-me-please-1234"}]}`).want(t, http.StatusBadRequest)
	if bytes.Contains(r.body, []byte("leak-me")) {
		t.Fatalf("unknown field: %s", r.body)
	}
	// Over 16 MiB: 413 naming the limit.
	big := append([]byte(`{"keys":[]}`), bytes.Repeat([]byte(" "), maxImportBodyBytes)...)
	r = fx.do(tenantAdmin, "POST", importPath, big).want(t, http.StatusRequestEntityTooLarge)
	if e := r.apiErr(t); !strings.Contains(e.Message, fmt.Sprint(maxImportBodyBytes)) {
		t.Fatalf("413: %s", r.body)
	}
	// Other endpoints keep 1 MiB.
	fx.do(tenantAdmin, "POST", "/v1/tenants/acme/keys/revoke", append([]byte(`{"ids":["x"]}`), bytes.Repeat([]byte(" "), maxBodyBytes)...)).
		want(t, http.StatusRequestEntityTooLarge)
	page := must[*store.KeyPage](t)(fx.st.ListKeys("acme", store.KeyQuery{}))
	if page.Total != 1 {
		t.Fatalf("refused calls stored keys: %d", page.Total)
	}

	// 10,000 keys with long secrets: one call, one answer.
	long := func(i int) string { return fmt.Sprintf("%s-%08d", strings.Repeat("s", 120), i) }
	raw, _ := json.Marshal(map[string]any{"keys": importEntries(store.MaxImport, long)})
	if len(raw) <= maxBodyBytes {
		t.Fatalf("the body is only %d bytes", len(raw))
	}
	var out importResults
	fx.do(tenantAdmin, "POST", importPath, raw).want(t, http.StatusOK).decode(t, &out)
	if out.Imported != store.MaxImport || len(out.Results) != store.MaxImport {
		t.Fatalf("imported %d of %d", out.Imported, store.MaxImport)
	}
	if _, v, _ := fx.st.Verify("acme", long(9999), time.Now()); v != store.VerdictValid {
		t.Fatalf("the last imported key: %v", v)
	}
}
