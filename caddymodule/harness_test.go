package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	_ "github.com/caddyserver/caddy/v2/modules/logging"
	_ "github.com/caddyserver/caddy/v2/modules/metrics"
	"github.com/coder/websocket"

	"github.com/keygate/keygate/store"
)

// The end-to-end tests run a real Caddy in this process (one at a time:
// Caddy's config is global, so these tests are not parallel), listening on
// loopback only.

var caddyMu sync.Mutex

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// loadCaddyfile adapts and loads a Caddyfile, replacing the running config.
func loadCaddyfile(t testing.TB, cfg string) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	js, warns, err := adapter.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, cfg)
	}
	for _, w := range warns {
		if !strings.Contains(w.Message, "formatted") {
			t.Logf("caddyfile warning: %s", w.Message)
		}
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("load: %v\n%s", err, js)
	}
}

// startCaddy loads cfg and stops Caddy when the test ends, before t.TempDir
// is removed (cleanups run last-in first-out).
func startCaddy(t testing.TB, cfg string) {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(func() {
		defer caddyMu.Unlock()
		if err := caddy.Stop(); err != nil {
			t.Errorf("stop caddy: %v", err)
		}
	})
	loadCaddyfile(t, cfg)
}

// sharedStore returns the store the running config opened at dir.
func sharedStore(t testing.TB, dir string) *store.Store {
	t.Helper()
	path, err := canonicalPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	var sh *shared
	stores.Range(func(k, v any) bool {
		if k == path {
			sh = v.(*shared)
			return false
		}
		return true
	})
	if sh == nil {
		t.Fatalf("no store open at %s", path)
	}
	st, err := sh.store()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// upstream is the echo server behind the gateways in tests.
type upstream struct {
	*httptest.Server
	options atomic.Int64 // OPTIONS requests it received
}

// echoUpstream answers every request with what it received (method, path,
// raw query, headers), as JSON, and counts OPTIONS requests. A WebSocket
// upgrade is accepted: the first message is the same JSON, then every
// message is echoed back. With ?upstream_cors=1 it adds its own
// Access-Control-Allow-Origin: *, as an API doing CORS itself would.
func echoUpstream(t testing.TB) *upstream {
	t.Helper()
	up := new(upstream)
	up.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			up.options.Add(1)
		}
		seen := echoed{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Headers: r.Header}
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			echoWebSocket(w, r, seen)
			return
		}
		if r.URL.Query().Get("upstream_cors") == "1" {
			w.Header().Set("Access-Control-Allow-Origin", "*")
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(seen)
	}))
	t.Cleanup(up.Close)
	return up
}

// echoWebSocket accepts the upgrade, sends what the handshake carried, then
// echoes messages until the client goes away.
func echoWebSocket(w http.ResponseWriter, r *http.Request, seen echoed) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := r.Context()
	first, _ := json.Marshal(seen)
	if err := c.Write(ctx, websocket.MessageText, first); err != nil {
		return
	}
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}

type echoed struct {
	Method   string              `json:"method"`
	Path     string              `json:"path"`
	RawQuery string              `json:"raw_query"`
	Headers  map[string][]string `json:"headers"`
}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) code() string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (r result) echo(t testing.TB) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("upstream body: %v: %s", err, r.body)
	}
	return e
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func do(t testing.TB, method, url string, hdr map[string]string) result {
	t.Helper()
	return doBody(t, method, url, hdr, "")
}

// doBody sends a request with a JSON body ("" for none).
func doBody(t testing.TB, method, url string, hdr map[string]string, body string) result {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

func get(t testing.TB, url string, hdr map[string]string) result { return do(t, "GET", url, hdr) }

// gateway is a running Caddy with one api_key site in front of an echo
// upstream, and the store it opened.
type gateway struct {
	url   string
	cfg   string // the Caddyfile it runs
	dir   string
	st    *store.Store
	up    *upstream
	extra map[string]string // named extra site URLs
}

// gatewayConfig returns the global options and gateway sites used by most
// tests; extraSites are appended verbatim (they may use {{UPSTREAM}} and
// {{PORTn}}).
func startGateway(t testing.TB, handlerBlock string, extraSites ...string) *gateway {
	t.Helper()
	up := echoUpstream(t)
	dir := t.TempDir()
	port := freePort(t)
	var sites strings.Builder
	g := &gateway{url: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir, up: up, extra: map[string]string{}}
	for i, s := range extraSites {
		p := freePort(t)
		s = strings.ReplaceAll(s, "{{PORT}}", fmt.Sprint(p))
		s = strings.ReplaceAll(s, "{{UPSTREAM}}", up.Listener.Addr().String())
		sites.WriteString(s + "\n")
		g.extra[fmt.Sprint(i)] = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s/caddy
	log {
		level error
	}
	api_keys {
		storage %s
		flush_interval 200ms
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key %s
	reverse_proxy %s {
		header_up X-Api-Key-Id {http.auth.api_key.id}
		header_up X-Api-Key-Owner {http.auth.api_key.owner}
	}
}
%s`, dir, dir, port, handlerBlock, up.Listener.Addr().String(), sites.String())
	startCaddy(t, cfg)
	g.cfg = cfg
	g.st = sharedStore(t, dir)
	return g
}

// enable turns on API keys for the tenant.
func enable(t testing.TB, st *store.Store, tenant string) {
	t.Helper()
	if _, err := st.GetTenant(tenant); err != nil {
		if _, err := st.CreateTenant("test", store.TenantInput{ID: tenant}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.UpdateSettings("test", tenant, store.SettingsPatch{APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(1000)}); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB, st *store.Store, tenant string, in store.KeyInput) (*store.Key, string) {
	t.Helper()
	if in.Name == "" {
		in.Name = "test key"
	}
	k, secret, err := st.CreateKey("test", tenant, "alice", in)
	if err != nil {
		t.Fatal(err)
	}
	return k, secret
}

// adminRequest calls the admin REST API at base with token (none when "")
// and returns the status and the decoded JSON answer (nil when it is not).
func adminRequest(t testing.TB, base, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	hdr := map[string]string{}
	if token != "" {
		hdr["Authorization"] = "Bearer " + token
	}
	r := doBody(t, method, base+path, hdr, body)
	var out map[string]any
	_ = json.Unmarshal(r.body, &out)
	return r.status, out
}
