package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

func TestGatewayOutcomes(t *testing.T) {
	g := startGateway(t, "",
		// 0: only keys of group "ops"
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		allow_groups ops
	}
	reverse_proxy {{UPSTREAM}}
}`,
		// 1: upstream sees the credential; custom header; no bearer
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		header X-Custom-Key
		bearer off
		strip_credentials off
	}
	reverse_proxy {{UPSTREAM}}
}`)
	st := g.st
	enable(t, st, store.DefaultTenant)
	mustGroup := func(name string, in store.GroupInput) {
		if _, err := st.PutGroup("test", store.DefaultTenant, name, in); err != nil {
			t.Fatal(err)
		}
	}
	mustGroup("readers", store.GroupInput{Rules: []store.Rule{{Methods: []string{"GET"}, Paths: []string{"/orders/*"}}}})
	mustGroup("ops", store.GroupInput{})
	mustGroup("slow", store.GroupInput{RateLimit: &store.RateLimit{RequestsPerSecond: 0.5, Burst: 2}})

	key, secret := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	_, revoked := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	revokedKey, _ := st.GetKey(store.DefaultTenant, mustID(t, st, revoked))
	if _, err := st.RevokeKey("test", store.DefaultTenant, revokedKey.ID); err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(1200 * time.Millisecond)
	_, expiring := newKey(t, st, store.DefaultTenant, store.KeyInput{ExpiresAt: &soon})
	_, fenced := newKey(t, st, store.DefaultTenant, store.KeyInput{IPAllowlist: []string{"10.0.0.0/8"}})
	_, reader := newKey(t, st, store.DefaultTenant, store.KeyInput{Group: "readers"})
	_, opsKey := newKey(t, st, store.DefaultTenant, store.KeyInput{Group: "ops"})
	_, slow := newKey(t, st, store.DefaultTenant, store.KeyInput{Group: "slow"})
	enable(t, st, "other")
	_, otherTenant := newKey(t, st, "other", store.KeyInput{})

	badChecksum := secret[:len(secret)-1] + "A"
	if strings.HasSuffix(secret, "A") {
		badChecksum = secret[:len(secret)-1] + "B"
	}

	cases := []struct {
		name   string
		url    string
		method string
		hdr    map[string]string
		status int
		code   string
	}{
		{"no credential", g.url + "/x", "GET", nil, 401, "missing_key"},
		{"empty header", g.url + "/x", "GET", map[string]string{"X-API-Key": " "}, 401, "missing_key"},
		{"malformed", g.url + "/x", "GET", map[string]string{"X-API-Key": "hello"}, 401, "invalid_key"},
		{"huge", g.url + "/x", "GET", map[string]string{"X-API-Key": strings.Repeat("k", 4000)}, 401, "invalid_key"},
		{"bad checksum", g.url + "/x", "GET", map[string]string{"X-API-Key": badChecksum}, 401, "invalid_key"},
		{"unknown", g.url + "/x", "GET", map[string]string{"X-API-Key": store.NewSecret(store.KeyPrefix)}, 401, "invalid_key"},
		{"admin token is not a key", g.url + "/x", "GET", map[string]string{"X-API-Key": store.NewSecret(store.TokenPrefix)}, 401, "invalid_key"},
		{"other tenant's key", g.url + "/x", "GET", map[string]string{"X-API-Key": otherTenant}, 401, "invalid_key"},
		{"valid header", g.url + "/x", "GET", map[string]string{"X-API-Key": secret}, 200, ""},
		{"blank header falls back to bearer", g.url + "/x", "GET", map[string]string{"X-API-Key": " ", "Authorization": "Bearer " + secret}, 200, ""},
		{"valid bearer", g.url + "/x", "GET", map[string]string{"Authorization": "Bearer " + secret}, 200, ""},
		{"bearer lower-case scheme", g.url + "/x", "GET", map[string]string{"Authorization": "bearer " + secret}, 200, ""},
		{"basic auth is no key", g.url + "/x", "GET", map[string]string{"Authorization": "Basic " + secret}, 401, "missing_key"},
		{"revoked", g.url + "/x", "GET", map[string]string{"X-API-Key": revoked}, 401, "key_revoked"},
		{"ip not allowed", g.url + "/x", "GET", map[string]string{"X-API-Key": fenced}, 403, "ip_not_allowed"},
		{"group rule allows", g.url + "/orders/7", "GET", map[string]string{"X-API-Key": reader}, 200, ""},
		{"group rule denies method", g.url + "/orders/7", "POST", map[string]string{"X-API-Key": reader}, 403, "forbidden"},
		{"group rule denies path", g.url + "/admin", "GET", map[string]string{"X-API-Key": reader}, 403, "forbidden"},
		{"dot-dot does not escape", g.url + "/orders/../admin", "GET", map[string]string{"X-API-Key": reader}, 403, "forbidden"},
		{"allow_groups denies other group", g.extra["0"] + "/x", "GET", map[string]string{"X-API-Key": reader}, 403, "forbidden"},
		{"allow_groups denies no group", g.extra["0"] + "/x", "GET", map[string]string{"X-API-Key": secret}, 403, "forbidden"},
		{"allow_groups admits group", g.extra["0"] + "/x", "GET", map[string]string{"X-API-Key": opsKey}, 200, ""},
		{"custom header", g.extra["1"] + "/x", "GET", map[string]string{"X-Custom-Key": secret}, 200, ""},
		{"bearer off", g.extra["1"] + "/x", "GET", map[string]string{"Authorization": "Bearer " + secret}, 401, "missing_key"},
		{"rate limit 1", g.url + "/x", "GET", map[string]string{"X-API-Key": slow}, 200, ""},
		{"rate limit 2", g.url + "/x", "GET", map[string]string{"X-API-Key": slow}, 200, ""},
		{"rate limit 3", g.url + "/x", "GET", map[string]string{"X-API-Key": slow}, 429, "rate_limited"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, c.url, c.hdr)
			if r.status != c.status || r.code() != c.code {
				t.Fatalf("got %d %q (%s), want %d %q", r.status, r.code(), r.body, c.status, c.code)
			}
			if c.status >= 400 && r.header.Get("Content-Type") != "application/json" {
				t.Errorf("error content type %q", r.header.Get("Content-Type"))
			}
			switch c.code {
			case "missing_key":
				if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="keygate"` {
					t.Errorf("WWW-Authenticate = %q", got)
				}
			case "rate_limited":
				ra, err := strconv.Atoi(r.header.Get("Retry-After"))
				if err != nil || ra < 1 || ra > 2 {
					t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
				}
				if r.header.Get("RateLimit-Limit") != "2" || r.header.Get("RateLimit-Remaining") != "0" || r.header.Get("RateLimit-Reset") == "" {
					t.Errorf("RateLimit headers: %v", r.header)
				}
			}
			if c.status >= 400 && strings.Contains(string(r.body), secret) {
				t.Errorf("response body contains the secret")
			}
		})
	}

	t.Run("upstream sees identity, not the secret", func(t *testing.T) {
		for _, hdr := range []map[string]string{{"X-API-Key": secret}, {"Authorization": "Bearer " + secret}} {
			e := get(t, g.url+"/x", hdr).echo(t)
			if got := e.Headers["X-Api-Key-Id"]; len(got) != 1 || got[0] != key.ID {
				t.Errorf("X-Api-Key-Id = %v, want %s", got, key.ID)
			}
			if got := e.Headers["X-Api-Key-Owner"]; len(got) != 1 || got[0] != "alice" {
				t.Errorf("X-Api-Key-Owner = %v", got)
			}
			if _, ok := e.Headers["X-Api-Key"]; ok {
				t.Error("X-Api-Key reached the upstream")
			}
			if _, ok := e.Headers["Authorization"]; ok {
				t.Error("Authorization reached the upstream")
			}
		}
	})
	t.Run("strip_credentials off", func(t *testing.T) {
		e := get(t, g.extra["1"]+"/x", map[string]string{"X-Custom-Key": secret}).echo(t)
		if got := e.Headers["X-Custom-Key"]; len(got) != 1 || got[0] != secret {
			t.Errorf("upstream got X-Custom-Key %v", got)
		}
	})
	t.Run("expired", func(t *testing.T) {
		time.Sleep(time.Until(soon) + 50*time.Millisecond)
		r := get(t, g.url+"/x", map[string]string{"X-API-Key": expiring})
		if r.status != 401 || r.code() != "key_expired" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
	})
	t.Run("tenant disabled at once", func(t *testing.T) {
		if _, err := st.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(false)}); err != nil {
			t.Fatal(err)
		}
		r := get(t, g.url+"/x", map[string]string{"X-API-Key": secret})
		if r.status != 403 || r.code() != "api_keys_disabled" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		enable(t, st, store.DefaultTenant)
		if r := get(t, g.url+"/x", map[string]string{"X-API-Key": secret}); r.status != 200 {
			t.Fatalf("re-enabled: got %d %s", r.status, r.body)
		}
	})
	t.Run("store unavailable fails closed", func(t *testing.T) {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		r := get(t, g.url+"/x", map[string]string{"X-API-Key": secret})
		if r.status != 503 || r.code() != "unavailable" {
			t.Fatalf("got %d %s", r.status, r.body)
		}
	})
}

func mustID(t testing.TB, st *store.Store, secret string) string {
	t.Helper()
	v, verdict, err := st.Verify(store.DefaultTenant, secret, time.Now())
	if err != nil || v == nil {
		t.Fatalf("verify: %v %v", verdict, err)
	}
	return v.ID
}

func TestHandleErrorsOverrides(t *testing.T) {
	up := echoUpstream(t)
	port := freePort(t)
	dir := t.TempDir()
	startCaddy(t, fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %s/caddy
	log {
		level error
	}
	api_keys {
		storage %s
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key
	reverse_proxy %s
	handle_errors {
		respond "custom {err.status_code} {http.auth.api_key.error}" 
	}
}`, dir, dir, port, up.Listener.Addr()))
	r := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if r.status != http.StatusUnauthorized || string(r.body) != "custom 401 missing_key" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	if r.header.Get("WWW-Authenticate") == "" {
		t.Error("WWW-Authenticate lost under handle_errors")
	}
}
