package caddymodule

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

// rawGet sends a request line exactly as given (no client-side cleaning or
// escaping), as an attacker's tool would.
func rawGet(t *testing.T, base, target, key string) result {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nX-API-Key: %s\r\nConnection: close\r\n\r\n", target, u.Host, key); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %q: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: body}
}

// Issue #9: a group allowed GET /orders/* reached /admin on the upstream
// through "..;", "..\" and "..%5c", and was refused /orders/.
func TestGroupPathRulesThroughCaddy(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string // request URIs the upstream received
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.RequestURI)
		mu.Unlock()
		_, _ = io.WriteString(w, r.RequestURI)
	}))
	t.Cleanup(up.Close)
	g := startGateway(t, "", `http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key
	reverse_proxy `+up.Listener.Addr().String()+`
}`)
	site := g.extra["0"]
	enable(t, g.st, store.DefaultTenant)
	if _, err := g.st.PutGroup("test", store.DefaultTenant, "readers", store.GroupInput{
		Rules: []store.Rule{{Methods: []string{"GET"}, Paths: []string{"/orders/*"}}},
	}); err != nil {
		t.Fatal(err)
	}
	_, reader := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Group: "readers"})

	for _, target := range []string{
		"/orders/..;/admin",
		"/orders/1/..;/..;/admin",
		"/orders/..%5cadmin",
		`/orders/..\admin`,
		"/orders/%2e%2e/admin",
		"/orders/%2E%2E/admin",
		"/orders/..",
		"/orders/x%2F..%2F..%2Fadmin",
		"/orders/%252e%252e/admin",
		"/orders/x%00",
		"/orders%2Fx",
		"/orders;x/1",
		"//orders/1",
		"/orders",
		"/admin",
		"/orders/" + strings.Repeat("a", store.MaxMatchPathLen),
	} {
		r := rawGet(t, site, target, reader)
		// 403 from keygate; Go's server may refuse some request lines with
		// 400 before any handler runs. Never the upstream.
		if r.status != http.StatusForbidden && r.status != http.StatusBadRequest {
			t.Errorf("GET %.80q: %d %s", target, r.status, r.body)
		}
		if r.status == http.StatusForbidden && r.code() != "forbidden" {
			t.Errorf("GET %.80q: code %q", target, r.code())
		}
	}
	mu.Lock()
	if len(seen) != 0 {
		t.Errorf("the upstream received %q", seen)
	}
	mu.Unlock()

	for _, target := range []string{
		"/orders/",
		"/orders/1",
		"/orders/1/items/2",
		"/orders/1;jsessionid=abc",
		"/orders/caf%C3%A9",
	} {
		r := rawGet(t, site, target, reader)
		if r.status != http.StatusOK || string(r.body) != target {
			t.Errorf("GET %q: %d, upstream saw %q", target, r.status, r.body)
		}
	}
}
