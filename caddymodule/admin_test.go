package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestAdminThroughCaddy drives the admin API mounted with api_key_admin and
// checks that its changes reach the gateway at once, and that /metrics
// counts outcomes.
func TestAdminThroughCaddy(t *testing.T) {
	up := echoUpstream(t)
	dir := t.TempDir()
	gw, adm, caddyAdmin := freePort(t), freePort(t), freePort(t)
	const op = "test-operator-token-0123456789"
	t.Setenv("KEYGATE_TEST_OP", op)
	startCaddy(t, fmt.Sprintf(`{
	admin 127.0.0.1:%[4]d
	persist_config off
	storage file_system %[1]s/caddy
	log {
		level error
	}
	api_keys {
		storage %[1]s
	}
}
http://127.0.0.1:%[2]d {
	bind 127.0.0.1
	api_key
	reverse_proxy %[5]s
}
http://127.0.0.1:%[3]d {
	bind 127.0.0.1
	api_key_admin {
		operator_token {env.KEYGATE_TEST_OP}
		operator_token {env.KEYGATE_UNSET_VARIABLE}
	}
}`, dir, gw, adm, caddyAdmin, up.Listener.Addr()))
	api := fmt.Sprintf("http://127.0.0.1:%d", adm)
	call := func(method, path, token, body string) (int, map[string]any) {
		t.Helper()
		return adminRequest(t, api, method, path, token, body)
	}
	if code, _ := call("GET", "/v1/me", "", ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := call("GET", "/v1/me", " ", ""); code != 401 {
		t.Fatalf("blank token (unset variable must not match): %d", code)
	}
	if code, _ := call("PATCH", "/v1/tenants/default/settings", op, `{"api_keys_enabled": true}`); code != 200 {
		t.Fatalf("enable: %d", code)
	}
	code, created := call("POST", "/v1/tenants/default/keys", op, `{"name": "through caddy", "owner": "svc"}`)
	if code != 201 {
		t.Fatalf("create: %d %v", code, created)
	}
	secret := created["secret"].(string)
	id := created["key"].(map[string]any)["id"].(string)
	gwURL := fmt.Sprintf("http://127.0.0.1:%d/", gw)
	if r := get(t, gwURL, map[string]string{"X-API-Key": secret}); r.status != 200 {
		t.Fatalf("new key: %d %s", r.status, r.body)
	}
	if code, _ := call("POST", "/v1/tenants/default/keys/"+id+"/revoke", op, ""); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if r := get(t, gwURL, map[string]string{"X-API-Key": secret}); r.status != 401 || r.code() != "key_revoked" {
		t.Fatalf("after revoke: %d %s", r.status, r.body)
	}
	if r := get(t, gwURL, nil); r.status != 401 {
		t.Fatalf("no key: %d", r.status)
	}
	// A gateway key is not an admin token.
	if code, _ := call("GET", "/v1/me", secret, ""); code != 401 {
		t.Fatalf("gateway key as admin token: %d", code)
	}

	// Deleting a user revokes its keys: the gateway rejects them at once
	// (issue #9 item 12).
	if code, _ := call("PUT", "/v1/tenants/default/users/dora", op, `{"roles": ["developer"]}`); code != 201 {
		t.Fatalf("put user: %d", code)
	}
	code, tok := call("POST", "/v1/tenants/default/users/dora/tokens", op, `{"name": "laptop"}`)
	if code != 201 {
		t.Fatalf("token: %d", code)
	}
	doraToken := tok["secret"].(string)
	code, created = call("POST", "/v1/tenants/default/keys", doraToken, `{"name": "dora's key"}`)
	if code != 201 {
		t.Fatalf("dora's key: %d %v", code, created)
	}
	doraKey := created["secret"].(string)
	if r := get(t, gwURL, map[string]string{"X-API-Key": doraKey}); r.status != 200 {
		t.Fatalf("dora's key: %d %s", r.status, r.body)
	}
	if code, _ := call("DELETE", "/v1/tenants/default/users/dora", op, ""); code != 204 {
		t.Fatalf("delete user: %d", code)
	}
	if r := get(t, gwURL, map[string]string{"X-API-Key": doraKey}); r.status != 401 || r.code() != "key_revoked" {
		t.Fatalf("key of a deleted user: %d %s", r.status, r.body)
	}

	// Failed authentications are counted, and the address is slowed down
	// after the default burst of 10 (one so far: the gateway key above).
	// A spoofed X-Forwarded-For from this untrusted peer changes nothing.
	for i := range 9 {
		req, _ := http.NewRequest("GET", api+"/v1/me", nil)
		req.Header.Set("Authorization", "Bearer kga_wrong-token-"+fmt.Sprint(i))
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("192.0.2.%d", i))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("bad token %d: %d", i, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", api+"/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+op)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("throttled address: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	m := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", caddyAdmin), nil)
	for _, want := range []string{
		`keygate_requests_total{outcome="ok"} 2`,
		`keygate_requests_total{outcome="key_revoked"} 2`,
		`keygate_requests_total{outcome="missing_key"} 1`,
		`keygate_cache_hits_total`,
		`keygate_usage_flushes_total`,
		"keygate_admin_auth_failures_total 10\n",
		"keygate_admin_auth_throttled_total 1\n",
		`keygate_store_writes_refused_total 0`,
		`keygate_usage_dropped_total 0`,
		`keygate_usage_flush_failures_total 0`,
		`keygate_store_failed 0`,
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(m.body), id) {
		t.Error("/metrics has a per-key label")
	}
}
