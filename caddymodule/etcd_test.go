package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/keygate/keygate/store"
	"github.com/keygate/keygate/store/etcdtest"
)

// TestAppEtcdConfig: the etcd block and node_id, in the Caddyfile and in
// JSON (Validate).
func TestAppEtcdConfig(t *testing.T) {
	parse := func(body string) (*App, error) {
		a := new(App)
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_keys {\n" + body + "\n}"))
		return a, err
	}
	a, err := parse(`etcd {
		endpoints 10.0.0.1:2379 https://etcd-2.example:2379
		prefix /kg/
		max_staleness 3s
		username keygate
		password {env.ETCD_PASSWORD}
		tls {
			ca /etc/etcd/ca.pem
			cert /etc/etcd/client.pem
			key /etc/etcd/client-key.pem
		}
	}
	node_id gw-1`)
	if err != nil {
		t.Fatal(err)
	}
	want := &EtcdConfig{Endpoints: []string{"10.0.0.1:2379", "https://etcd-2.example:2379"}, Prefix: "/kg/",
		MaxStaleness: caddy.Duration(3 * time.Second), Username: "keygate", Password: "{env.ETCD_PASSWORD}",
		TLS: &EtcdTLS{CA: "/etc/etcd/ca.pem", Cert: "/etc/etcd/client.pem", Key: "/etc/etcd/client-key.pem"}}
	got, _ := json.Marshal(a.Etcd)
	exp, _ := json.Marshal(want)
	if !bytes.Equal(got, exp) || a.NodeID != "gw-1" {
		t.Fatalf("parsed %s node %q, want %s", got, a.NodeID, exp)
	}
	mustValid := func(a *App) {
		t.Helper()
		if err := a.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	mustValid(a)
	a, err = parse("etcd {\n endpoints 127.0.0.1:2379\n}")
	if err != nil {
		t.Fatal(err)
	}
	mustValid(a)
	t.Setenv("ETCD_PASSWORD", "s3cret")
	if c := a.Etcd.storeConfig(caddy.NewReplacer()); c.Prefix != store.DefaultEtcdPrefix || c.Timeout != DefaultMaxStaleness {
		t.Fatalf("defaults: prefix %q timeout %v", c.Prefix, c.Timeout)
	}
	for _, c := range []struct{ body, want string }{
		{"etcd {\n}", "endpoints"},
		{"etcd {\n endpoints\n}", "endpoints"},
		{"etcd {\n endpoints localhost\n}", "host:port"},
		{"etcd {\n endpoints ftp://x:1\n}", "host:port"},
		{"etcd {\n endpoints 127.0.0.1:2379\n prefix keygate\n}", "prefix"},
		{"etcd {\n endpoints 127.0.0.1:2379\n max_staleness 1ms\n}", "max_staleness"},
		{"etcd {\n endpoints 127.0.0.1:2379\n password x\n}", "username"},
		{"etcd {\n endpoints 127.0.0.1:2379\n tls {\n cert a.pem\n }\n}", "cert and key"},
		{"etcd {\n endpoints 127.0.0.1:2379\n tls {\n pin x\n }\n}", "tls option"},
		{"etcd {\n endpoints 127.0.0.1:2379\n lease 1s\n}", "unknown etcd option"},
		{"node_id a/b", "node_id"},
	} {
		if _, err := parse(c.body); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error about %s", c.body, err, c.want)
		}
	}
	// JSON configs: Validate has the same checks.
	for _, c := range []struct {
		app  App
		want string
	}{
		{App{Etcd: &EtcdConfig{}}, "endpoints"},
		{App{Etcd: &EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "x"}}, "prefix"},
		{App{Etcd: &EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}}, Storage: "/var/lib/keygate"}, "exclude"},
		{App{NodeID: "gw-1"}, "needs an etcd"},
		{App{Etcd: &EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}}, NodeID: "a b"}, "node_id"},
	} {
		if err := c.app.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: Validate %v, want an error about %s", c.app, err, c.want)
		}
	}
}

// TestCaddyOnEtcd runs Caddy with api_keys on etcd: a key created through
// its admin site is admitted by its gateway; a key created and revoked
// through another node (a store on the same etcd) is admitted, then
// rejected on the first request after the revoke answered; usage written by
// the node is read back; with etcd stopped an admin write, an unknown key
// and, within max_staleness + 1s, a cached key answer 503, and the gateway
// admits again once etcd is back.
func TestCaddyOnEtcd(t *testing.T) {
	srv, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	up := echoUpstream(t)
	gw, adm, caddyAdmin := freePort(t), freePort(t), freePort(t)
	const op = "test-operator-token-0123456789"
	t.Setenv("KEYGATE_TEST_OP", op)
	dir := t.TempDir()
	startCaddy(t, fmt.Sprintf(`{
	admin 127.0.0.1:%[4]d
	persist_config off
	storage file_system %[1]s/caddy
	log {
		level error
	}
	api_keys {
		etcd {
			endpoints %[6]s
			prefix /e2e/
			max_staleness 1s
		}
		node_id node-1
		flush_interval 100ms
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
	}
}`, dir, gw, adm, caddyAdmin, up.Listener.Addr(), srv.Endpoint))
	api := fmt.Sprintf("http://127.0.0.1:%d", adm)
	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		return adminRequest(t, api, method, path, op, body)
	}
	if code, out := call("PATCH", "/v1/tenants/default/settings", `{"api_keys_enabled": true}`); code != 200 {
		t.Fatalf("enable: %d %v", code, out)
	}
	code, created := call("POST", "/v1/tenants/default/keys", `{"name": "through caddy", "owner": "svc"}`)
	if code != 201 {
		t.Fatalf("create: %d %v", code, created)
	}
	secret := created["secret"].(string)
	id := created["key"].(map[string]any)["id"].(string)
	gwURL := fmt.Sprintf("http://127.0.0.1:%d/", gw)
	for range 3 {
		if r := get(t, gwURL, map[string]string{"X-API-Key": secret}); r.status != 200 {
			t.Fatalf("key created on etcd: %d %s", r.status, r.body)
		}
	}

	// Another node on the same etcd and prefix.
	kv, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: "/e2e/",
		MaxStaleness: time.Second, NodeID: "node-2"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(store.Options{KV: kv, NodeID: "node-2", FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	k2, s2, err := other.CreateKey("op", "default", "svc", store.KeyInput{Name: "through node 2"})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus := func(secret string, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			r := get(t, gwURL, map[string]string{"X-API-Key": secret})
			if r.status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway answers %d %s, want %d", r.status, r.body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStatus(s2, 200)
	if _, err := other.RevokeKey("op", "default", k2.ID); err != nil {
		t.Fatal(err)
	}
	// The revoke answered once node-1 had applied it: rejected at once.
	if r := get(t, gwURL, map[string]string{"X-API-Key": s2}); r.status != 401 {
		t.Fatalf("key revoked through node 2, first request to node 1 right after: %d %s", r.status, r.body)
	}

	// Usage: node-1's flusher writes its own record; the usage endpoint
	// reads it (and would sum other nodes').
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, u := call("GET", "/v1/tenants/default/keys/"+id+"/usage", "")
		if code != 200 {
			t.Fatalf("usage: %d %v", code, u)
		}
		if n, _ := u["total"].(float64); n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage never counted the 3 requests: %v", u)
		}
		time.Sleep(50 * time.Millisecond)
	}

	srv.Pause()
	start := time.Now()
	if code, out := call("POST", "/v1/tenants/default/keys", `{"name": "while etcd is down", "owner": "svc"}`); code != 503 {
		t.Fatalf("admin write with etcd stopped: %d %v", code, out)
	}
	if r := get(t, gwURL, map[string]string{"X-API-Key": store.NewSecret(store.KeyPrefix)}); r.status != 503 || r.code() != "unavailable" {
		t.Fatalf("unknown key with etcd stopped: %d %s", r.status, r.body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("answers with etcd stopped took %v", took)
	}
	// A cached key too, within max_staleness (1s) + 1s of etcd stopping.
	for {
		begin := time.Now()
		r := get(t, gwURL, map[string]string{"X-API-Key": secret})
		if r.status == 503 && r.code() == "unavailable" {
			break
		}
		if late := begin.Sub(start); r.status != 200 || late > 2*time.Second {
			t.Fatalf("cached key %v after etcd stopped: %d %s", late, r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		code, _ := call("POST", "/v1/tenants/default/keys", `{"name": "etcd is back", "owner": "svc"}`)
		if code == 201 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd back, admin write still %d", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitStatus(secret, 200) // admits again
}
