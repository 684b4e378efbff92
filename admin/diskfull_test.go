package admin

import (
	"net/http"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/keygate/keygate/store"
)

// TestDiskFull507: while the store's filesystem has less free space than
// the disk reserve, admin writes answer 507 insufficient_storage (nothing is
// changed), reads answer as usual, and writes work again once space returns.
func TestDiskFull507(t *testing.T) {
	fs := vfs.NewMem()
	roomy := vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 2 << 30, UsedBytes: 1 << 30}
	fs.TestingSetDiskUsage(roomy)
	st, err := store.Open(store.Options{Dir: "db", FS: fs, FlushInterval: -1, DiskReserve: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	fx := &fixture{t: t, st: st, h: New(st, Config{OperatorTokens: []string{testOperatorToken}})}
	fx.tokens[operator] = testOperatorToken

	fx.do(operator, "POST", "/v1/tenants", map[string]any{"id": "acme", "name": "Acme"}).want(t, http.StatusCreated)

	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 20, TotalBytes: 2 << 30, UsedBytes: 2<<30 - 1<<20})
	r := fx.do(operator, "POST", "/v1/tenants", map[string]any{"id": "beta", "name": "Beta"}).want(t, http.StatusInsufficientStorage)
	if e := r.apiErr(t); e.Code != "insufficient_storage" || e.Message == "" {
		t.Fatalf("error answer %+v", e)
	}
	fx.do(operator, "PATCH", "/v1/tenants/acme/settings", map[string]any{"api_keys_enabled": true}).want(t, http.StatusInsufficientStorage)
	fx.do(operator, "GET", "/v1/tenants/acme", nil).want(t, http.StatusOK)
	fx.do(operator, "GET", "/v1/tenants/beta", nil).want(t, http.StatusNotFound) // refused, not half-made
	var settings store.Settings
	fx.do(operator, "GET", "/v1/tenants/acme/settings", nil).want(t, http.StatusOK).decode(t, &settings)
	if settings.APIKeysEnabled {
		t.Fatal("a refused settings change was applied")
	}

	fs.TestingSetDiskUsage(roomy)
	fx.do(operator, "POST", "/v1/tenants", map[string]any{"id": "beta", "name": "Beta"}).want(t, http.StatusCreated)
	fx.do(operator, "PATCH", "/v1/tenants/acme/settings", map[string]any{"api_keys_enabled": true}).want(t, http.StatusOK)
	if got := st.StorageStats().WritesRefused; got != 2 {
		t.Fatalf("WritesRefused = %d, want 2", got)
	}
}
