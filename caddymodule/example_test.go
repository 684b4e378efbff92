package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCaddyfileExample: the config `make run` starts keeps Caddy's admin
// endpoint on a unix socket only its owner may use (no TCP admin
// listener), binds every site to loopback, and works as README's "First
// key" says (with its ports moved to free ones).
func TestCaddyfileExample(t *testing.T) {
	text, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	const token = "example-operator-token-0123"
	t.Setenv("KEYGATE_ADMIN_SOCKET", sock)
	t.Setenv("KEYGATE_STORAGE", filepath.Join(dir, "data"))
	t.Setenv("KEYGATE_OPERATOR_TOKEN", token)
	gw, api, demo := freePort(t), freePort(t), freePort(t)
	cfg := strings.NewReplacer("http://:8080", fmt.Sprintf("http://:%d", gw), "http://:8081", fmt.Sprintf("http://:%d", api),
		"127.0.0.1:9000", fmt.Sprintf("127.0.0.1:%d", demo)).Replace(string(text))

	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	var loaded struct {
		Admin caddy.AdminConfig `json:"admin"`
		Apps  struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(js, &loaded); err != nil {
		t.Fatal(err)
	}
	addr, err := caddy.ParseNetworkAddress(loaded.Admin.Listen)
	if err != nil || !addr.IsUnixNetwork() || loaded.Admin.Listen != "unix/"+sock+"|0600" {
		t.Fatalf("admin listens on %q (%v), want the unix socket %s with mode 0600", loaded.Admin.Listen, err, sock)
	}
	for name, srv := range loaded.Apps.HTTP.Servers {
		for _, l := range srv.Listen {
			if !strings.HasPrefix(l, "tcp/127.0.0.1:") && !strings.HasPrefix(l, "127.0.0.1:") {
				t.Errorf("server %s listens on %q, want loopback only", name, l)
			}
		}
	}

	caddyMu.Lock()
	t.Cleanup(func() {
		defer caddyMu.Unlock()
		// Stop the apps, then replace the admin endpoint by none.
		if err := caddy.Stop(); err != nil {
			t.Error(err)
		}
		if err := caddy.Load([]byte(`{"admin":{"disabled":true}}`), true); err != nil {
			t.Error(err)
		}
		if err := caddy.Stop(); err != nil {
			t.Error(err)
		}
	})
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("load: %v", err)
	}

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket %s: %v, %v; want a socket with mode 0600", sock, fi.Mode(), err)
	}
	admin := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := admin.Get("http://127.0.0.1/config/admin")
	if err != nil {
		t.Fatalf("admin socket: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "unix/") {
		t.Fatalf("GET /config/admin over the socket: %d %s", resp.StatusCode, body)
	}

	// README's "First key", against the example.
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", api)
	op := map[string]string{"Authorization": "Bearer " + token}
	if r := doBody(t, "PATCH", apiURL+"/v1/tenants/default/settings", op, `{"api_keys_enabled": true}`); r.status != 200 {
		t.Fatalf("enable: %d %s", r.status, r.body)
	}
	r := doBody(t, "POST", apiURL+"/v1/tenants/default/keys", op, `{"name": "my first key", "owner": "demo"}`)
	var created struct {
		Secret string `json:"secret"`
		Key    struct {
			ID string `json:"id"`
		} `json:"key"`
		ID string `json:"id"`
	}
	if err := json.Unmarshal(r.body, &created); err != nil || created.Secret == "" {
		t.Fatalf("create key: %d %s", r.status, r.body)
	}
	gwURL := fmt.Sprintf("http://127.0.0.1:%d/", gw)
	got := get(t, gwURL, map[string]string{"X-API-Key": created.Secret, "X-Api-Key-Owner": "mallory"})
	if got.status != 200 || !strings.Contains(string(got.body), "hello from the demo upstream, key key_") ||
		!strings.Contains(string(got.body), " of demo") {
		t.Fatalf("gateway: %d %q", got.status, got.body)
	}
	if got := get(t, gwURL, nil); got.status != 401 || got.code() != "missing_key" {
		t.Fatalf("no key: %d %s", got.status, got.body)
	}
}
