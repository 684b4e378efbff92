package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/keygate/keygate/store"
)

// dialEchoWS opens a WebSocket through the gateway and returns the connection
// and what the upstream saw of the handshake, or the HTTP status of a
// refused upgrade.
func dialEchoWS(t *testing.T, ctx context.Context, url string, hdr http.Header) (*websocket.Conn, echoed, int) {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		if resp == nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		return nil, echoed{}, resp.StatusCode
	}
	_, first, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	var e echoed
	if err := json.Unmarshal(first, &e); err != nil {
		t.Fatalf("first message %s: %v", first, err)
	}
	return c, e, resp.StatusCode
}

// echoOnce checks the socket is live end to end.
func echoOnce(t *testing.T, ctx context.Context, c *websocket.Conn) {
	t.Helper()
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "ping" {
		t.Fatalf("echo: %q %v", msg, err)
	}
}

// TestWebSocket: a WebSocket through api_key and reverse_proxy, admitted
// with the key header or with the query parameter; the upstream sees
// neither the header nor the parameter (the other parameters as sent), a
// duplicate parameter is invalid_key, and no line of a plain `log`
// directive's output carries the key, a foreign-looking key included.
func TestWebSocket(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	const app = "http://app.example"
	g := startGateway(t, "{\n\t\tquery api_key\n\t\tcors "+app+"\n\t}",
		// 0: a plain log directive
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	log {
		output file `+logFile+`
	}
	api_key {
		query api_key
	}
	reverse_proxy {{UPSTREAM}}
}`,
		// 1: the parameter is left for the upstream, and still not logged
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	log {
		output file `+logFile+`
	}
	api_key {
		query api_key
		strip_credentials off
	}
	reverse_proxy {{UPSTREAM}}
}`,
		// 2: the upstream is down and handle_errors proxies elsewhere
		`http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key {
		query api_key
	}
	reverse_proxy 127.0.0.1:`+fmt.Sprint(freePort(t))+`
	handle_errors {
		reverse_proxy {{UPSTREAM}}
	}
}`)
	enable(t, g.st, store.DefaultTenant)
	_, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws := func(base string) string { return "ws" + strings.TrimPrefix(base, "http") }

	t.Run("key header", func(t *testing.T) {
		c, e, status := dialEchoWS(t, ctx, ws(g.url)+"/ws?x=1", http.Header{"X-Api-Key": {secret}})
		if c == nil {
			t.Fatalf("upgrade refused: %d", status)
		}
		defer c.CloseNow()
		if _, ok := e.Headers["X-Api-Key"]; ok || e.RawQuery != "x=1" || e.Path != "/ws" {
			t.Errorf("upstream saw %+v", e)
		}
		echoOnce(t, ctx, c)
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("query parameter, stripped", func(t *testing.T) {
		c, e, status := dialEchoWS(t, ctx, ws(g.url)+"/ws?b=2&api_key="+secret+"&a=%41&c=x+y", nil)
		if c == nil {
			t.Fatalf("upgrade refused: %d", status)
		}
		defer c.CloseNow()
		if e.RawQuery != "b=2&a=%41&c=x+y" {
			t.Errorf("upstream query %q, want the other parameters as sent", e.RawQuery)
		}
		if raw, _ := json.Marshal(e); strings.Contains(string(raw), secret) {
			t.Errorf("the upstream saw the key: %s", raw)
		}
		echoOnce(t, ctx, c)
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("from an allowed CORS origin", func(t *testing.T) {
		// The answer's writer is wrapped for CORS: the upgrade must still
		// reach the connection underneath.
		c, e, status := dialEchoWS(t, ctx, ws(g.url)+"/ws?api_key="+secret, http.Header{"Origin": {app}})
		if c == nil {
			t.Fatalf("upgrade refused: %d", status)
		}
		defer c.CloseNow()
		if e.RawQuery != "" || e.Headers["Origin"][0] != app {
			t.Errorf("upstream saw %+v", e)
		}
		echoOnce(t, ctx, c)
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("handle_errors routes do not get it back", func(t *testing.T) {
		// Caddy restores the original URL for handle_errors: an error
		// route that proxies must not forward the key.
		r := get(t, g.extra["2"]+"/x?b=1&api_key="+secret, nil)
		if r.status != 200 {
			t.Fatalf("error route: %d %s", r.status, r.body)
		}
		if e := r.echo(t); e.RawQuery != "b=1" {
			t.Errorf("the error route's upstream saw query %q", e.RawQuery)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		for _, c := range []struct {
			query string
			code  string
		}{
			{"", "missing_key"},
			{"?api_key=" + secret + "&api_key=" + secret, "invalid_key"},
			{"?api_key=foreign-secret-0123456789", "invalid_key"},
		} {
			if conn, _, status := dialEchoWS(t, ctx, ws(g.url)+"/ws"+c.query, nil); conn != nil || status != 401 {
				t.Errorf("%s: status %d, want 401", c.query, status)
			}
			if r := get(t, g.url+"/ws"+c.query, nil); r.status != 401 || r.code() != c.code {
				t.Errorf("%s: %d %s, want %s", c.query, r.status, r.body, c.code)
			}
		}
	})

	// The logged sites: admitted and refused, with a kg_ key and with a
	// value that does not look like one (a key imported from elsewhere).
	const foreign = "foreign-secret-0123456789"
	logged := 0
	for _, site := range []string{g.extra["0"], g.extra["1"]} {
		c, e, status := dialEchoWS(t, ctx, ws(site)+"/ws?api_key="+secret+"&z=1", nil)
		if c == nil {
			t.Fatalf("%s: upgrade refused: %d", site, status)
		}
		if strip := site == g.extra["0"]; strip != !strings.Contains(e.RawQuery, secret) {
			t.Errorf("%s: upstream query %q", site, e.RawQuery)
		}
		echoOnce(t, ctx, c)
		c.Close(websocket.StatusNormalClosure, "")
		if conn, _, status := dialEchoWS(t, ctx, ws(site)+"/ws?api_key="+foreign, nil); conn != nil || status != 401 {
			t.Fatalf("foreign key: %d", status)
		}
		get(t, site+"/x?a=1&api%5Fkey="+foreign, nil)
		logged += 3
	}
	var text string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logFile)
		text = string(b)
		if strings.Count(text, "\n") >= logged || time.Now().After(deadline) {
			break
		}
	}
	if n := strings.Count(text, "\n"); n < logged {
		t.Fatalf("access log has %d lines, want %d: the test would prove nothing", n, logged)
	}
	if !strings.Contains(text, "api_key=REDACTED") {
		t.Error("no logged URI shows the redacted parameter")
	}
	for _, s := range []string{secret, secret[3:], foreign} {
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, s) {
				t.Errorf("the access log has the key %.6s…: %s", s, line)
			}
		}
	}
}
