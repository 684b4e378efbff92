package caddymodule

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/store"
)

// endBound is SPEC section 3's bound from the answer of the call that ended
// a key to the end of its streams.
const endBound = time.Second

// streamGateway is Caddy (h1 and h2c) with an api_key site of the default
// tenant and one of tenant "other", in front of an upstream serving a
// WebSocket echo (/ws), server-sent events (/sse) and gRPC health (h2c).
type streamGateway struct {
	url, otherURL string
	st            *store.Store
	health        *health.Server
}

func startStreamGateway(t *testing.T) *streamGateway {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, b); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		// 1 GiB with a length, as a file would be; written as fast as the
		// client reads.
		const size = 1 << 30
		w.Header().Set("Content-Length", fmt.Sprint(size))
		w.Header().Set("Content-Type", "application/octet-stream")
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	up := httptest.NewServer(mux)
	t.Cleanup(up.Close)

	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)

	dir := t.TempDir()
	port, port2 := freePort(t), freePort(t)
	site := func(port int, tenant string) string {
		return fmt.Sprintf(`http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key {
		tenant %s
	}
	@grpc path /grpc.health.v1.Health/*
	reverse_proxy @grpc h2c://%s
	reverse_proxy %s {
		flush_interval -1
	}
}
`, port, tenant, gl.Addr(), up.Listener.Addr())
	}
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s/caddy
	log {
		level error
	}
	servers {
		protocols h1 h2c
	}
	api_keys {
		storage %s
		flush_interval 200ms
	}
}
%s%s`, dir, dir, site(port, store.DefaultTenant), site(port2, "other"))
	startCaddy(t, cfg)
	g := &streamGateway{url: fmt.Sprintf("127.0.0.1:%d", port), otherURL: fmt.Sprintf("127.0.0.1:%d", port2), st: sharedStore(t, dir), health: hs}
	enable(t, g.st, store.DefaultTenant)
	enable(t, g.st, "other")
	return g
}

// wsConn is an open WebSocket through the gateway, read in the background.
type wsConn struct {
	c    *websocket.Conn
	msgs chan string
	done chan error // the read error that ended it
}

func dialWS(t *testing.T, addr, secret string) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{HTTPHeader: http.Header{"X-Api-Key": {secret}}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	w := &wsConn{c: c, msgs: make(chan string, 16), done: make(chan error, 1)}
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				w.done <- err
				return
			}
			w.msgs <- string(b)
		}
	}()
	w.echo(t, "hello")
	return w
}

// echo sends msg and waits for it to come back.
func (w *wsConn) echo(t *testing.T, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	select {
	case got := <-w.msgs:
		if got != msg {
			t.Fatalf("echoed %q, want %q", got, msg)
		}
	case err := <-w.done:
		t.Fatalf("connection ended: %v", err)
	case <-ctx.Done():
		t.Fatal("no echo")
	}
}

// waitEnd waits up to endBound for the connection to end and returns how
// long that took and the read error.
func waitEnd(t *testing.T, done <-chan error, since time.Time) (time.Duration, error) {
	t.Helper()
	select {
	case err := <-done:
		return time.Since(since), err
	case <-time.After(endBound):
		t.Fatalf("still open %s after the key stopped admitting", endBound)
		return 0, nil
	}
}

// ender makes a key stop admitting; it returns when the call has answered.
type ender struct {
	name string
	code string // the reason the client is given
	// rotate with grace and expiry end the key later: at is when.
	end func(t *testing.T, g *streamGateway, keyID string) (at time.Time)
	// make creates key A (default: a plain key of the default tenant).
	make func(t *testing.T, g *streamGateway) (*store.Key, string)
	// otherTenant puts key B in tenant "other" (for tenant disable).
	otherTenant bool
}

var enders = []ender{
	{name: "revoke", code: "key_revoked", end: func(t *testing.T, g *streamGateway, id string) time.Time {
		if _, err := g.st.RevokeKey("test", store.DefaultTenant, id); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}},
	{name: "delete", code: "invalid_key", end: func(t *testing.T, g *streamGateway, id string) time.Time {
		if err := g.st.DeleteKey("test", store.DefaultTenant, id); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}},
	{name: "rotate", code: "invalid_key", end: func(t *testing.T, g *streamGateway, id string) time.Time {
		if _, _, err := g.st.RotateKey("test", store.DefaultTenant, id, store.RotateInput{}); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}},
	{name: "rotate_grace", code: "invalid_key", end: func(t *testing.T, g *streamGateway, id string) time.Time {
		grace := store.Duration(700 * time.Millisecond)
		k, _, err := g.st.RotateKey("test", store.DefaultTenant, id, store.RotateInput{GracePeriod: &grace})
		if err != nil {
			t.Fatal(err)
		}
		return k.UpdatedAt.Add(time.Duration(grace))
	}},
	{name: "expiry", code: "key_expired",
		make: func(t *testing.T, g *streamGateway) (*store.Key, string) {
			exp := time.Now().Add(700 * time.Millisecond)
			return newKey(t, g.st, store.DefaultTenant, store.KeyInput{ExpiresAt: &exp})
		},
		end: func(t *testing.T, g *streamGateway, id string) time.Time {
			k, err := g.st.GetKey(store.DefaultTenant, id)
			if err != nil {
				t.Fatal(err)
			}
			return *k.ExpiresAt
		}},
	{name: "tenant_disable", code: "api_keys_disabled", otherTenant: true, end: func(t *testing.T, g *streamGateway, id string) time.Time {
		if _, err := g.st.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(false)}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { enable(t, g.st, store.DefaultTenant) })
		return time.Now()
	}},
}

// keysAB creates key A (the one that will stop admitting) and key B (the
// bystander) and returns their secrets and B's gateway address.
func (e ender) keysAB(t *testing.T, g *streamGateway) (idA, secA, secB, addrB string) {
	t.Helper()
	var a *store.Key
	if e.make != nil {
		a, secA = e.make(t, g)
	} else {
		a, secA = newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
	}
	addrB, tenantB := g.url, store.DefaultTenant
	if e.otherTenant {
		addrB, tenantB = g.otherURL, "other"
	}
	_, secB = newKey(t, g.st, tenantB, store.KeyInput{})
	return a.ID, secA, secB, addrB
}

// TestStreamsEndWebSocket: for every way a key stops admitting, its open
// WebSocket gets a close frame 1008 within a second of the call's answer
// (or of the expiry), and another key's socket still echoes.
func TestStreamsEndWebSocket(t *testing.T) {
	g := startStreamGateway(t)
	for _, e := range enders {
		t.Run(e.name, func(t *testing.T) {
			idA, secA, secB, addrB := e.keysAB(t, g)
			a, b := dialWS(t, g.url, secA), dialWS(t, addrB, secB)
			at := e.end(t, g, idA)
			if d := time.Until(at); d > 0 {
				// A grace or an expiry still running: A still works.
				a.echo(t, "before the end")
			}
			took, err := waitEnd(t, a.done, at)
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != e.code {
				t.Fatalf("A ended with %v, want close 1008 %s", err, e.code)
			}
			t.Logf("A closed %s after the end", took.Round(time.Millisecond))
			b.echo(t, "still here")
		})
	}
}

// TestStreamsRotationEndsOldSecretOnly: a rotation ends the streams of the
// rotated-out secret (at once, or when its grace ends) and never those of
// the key's new secret.
func TestStreamsRotationEndsOldSecretOnly(t *testing.T) {
	g := startStreamGateway(t)
	k, sec1 := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
	old := dialWS(t, g.url, sec1)
	grace := store.Duration(500 * time.Millisecond)
	_, sec2, err := g.st.RotateKey("test", store.DefaultTenant, k.ID, store.RotateInput{GracePeriod: &grace})
	if err != nil {
		t.Fatal(err)
	}
	graceEnd := time.Now().Add(time.Duration(grace))
	cur := dialWS(t, g.url, sec2)
	old.echo(t, "in the grace period")
	if _, err := waitEnd(t, old.done, graceEnd); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("old secret's socket ended with %v", err)
	}
	cur.echo(t, "new secret after the grace")
	// Rotating again without grace ends the second secret's socket only.
	_, sec3, err := g.st.RotateKey("test", store.DefaultTenant, k.ID, store.RotateInput{})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	newest := dialWS(t, g.url, sec3)
	if _, err := waitEnd(t, cur.done, at); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("second secret's socket ended with %v", err)
	}
	newest.echo(t, "newest secret")
}

// sseStream is an open event stream read in the background.
type sseStream struct {
	events chan string
	done   chan error
}

func openSSE(t *testing.T, c *http.Client, addr, secret string) *sseStream {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/sse", nil)
	req.Header.Set("X-API-Key", secret)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s := &sseStream{events: make(chan string, 1024), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") {
				select {
				case s.events <- line:
				default:
				}
			}
		}
		err := sc.Err()
		if err == nil {
			err = errors.New("clean end of stream")
		}
		s.done <- err
	}()
	s.next(t)
	return s
}

// next waits for a new event.
func (s *sseStream) next(t *testing.T) {
	t.Helper()
	for {
		select {
		case <-s.events:
			return
		case err := <-s.done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(2 * time.Second):
			t.Fatal("no event")
		}
	}
}

// fresh drains buffered events and waits for a new one.
func (s *sseStream) fresh(t *testing.T) {
	t.Helper()
	for len(s.events) > 0 {
		<-s.events
	}
	s.next(t)
}

// countingDialer counts the connections a client opens.
type countingDialer struct{ n atomic.Int32 }

func (d *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// TestStreamsEndSSE: an SSE stream of a key that stops admitting ends
// within a second — over HTTP/1.1 (its connection is closed) and over
// HTTP/2 sharing one connection with another key's stream, which goes on.
func TestStreamsEndSSE(t *testing.T) {
	g := startStreamGateway(t)
	for _, e := range enders {
		t.Run("h1_"+e.name, func(t *testing.T) {
			idA, secA, secB, addrB := e.keysAB(t, g)
			c := &http.Client{Transport: &http.Transport{}}
			defer c.CloseIdleConnections()
			a, b := openSSE(t, c, g.url, secA), openSSE(t, c, addrB, secB)
			at := e.end(t, g, idA)
			took, err := waitEnd(t, a.done, at)
			if err.Error() == "clean end of stream" {
				t.Fatal("A's stream ended as if complete; it must end as an error")
			}
			t.Logf("A ended %s after the end: %v", took.Round(time.Millisecond), err)
			b.fresh(t)
		})
	}
	t.Run("h2_revoke", func(t *testing.T) {
		idA, secA, secB, _ := enders[0].keysAB(t, g)
		var d countingDialer
		tr := &http.Transport{DialContext: d.dial, Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		c := &http.Client{Transport: tr}
		defer c.CloseIdleConnections()
		a, b := openSSE(t, c, g.url, secA), openSSE(t, c, g.url, secB)
		at := enders[0].end(t, g, idA)
		took, err := waitEnd(t, a.done, at)
		if err.Error() == "clean end of stream" {
			t.Fatal("A's stream ended as if complete")
		}
		t.Logf("A ended %s after the revoke: %v", took.Round(time.Millisecond), err)
		b.fresh(t)
		// A new stream still fits on the same connection.
		_, secC := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
		openSSE(t, c, g.url, secC).fresh(t)
		if n := d.n.Load(); n != 1 {
			t.Fatalf("%d connections: the revoke ended the shared one", n)
		}
	})
}

// TestStreamsEndDownload: a large download (a response with a length, not
// flushed) of a revoked key ends within a second, over HTTP/1.1 and HTTP/2,
// as an error (the client never takes the cut body for the whole file).
func TestStreamsEndDownload(t *testing.T) {
	g := startStreamGateway(t)
	tr2 := &http.Transport{Protocols: new(http.Protocols)}
	tr2.Protocols.SetUnencryptedHTTP2(true)
	for name, tr := range map[string]*http.Transport{"h1": {}, "h2": tr2} {
		t.Run(name, func(t *testing.T) {
			c := &http.Client{Transport: tr}
			defer c.CloseIdleConnections()
			k, sec := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
			req, _ := http.NewRequest("GET", "http://"+g.url+"/download", nil)
			req.Header.Set("X-API-Key", sec)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.ContentLength != 1<<30 {
				t.Fatalf("status %d, length %d", resp.StatusCode, resp.ContentLength)
			}
			done := make(chan error, 1)
			var got atomic.Int64
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := resp.Body.Read(buf)
					got.Add(int64(n))
					if err != nil {
						done <- err
						return
					}
					time.Sleep(time.Millisecond) // a client slower than loopback
				}
			}()
			for got.Load() < 1<<20 {
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := g.st.RevokeKey("test", store.DefaultTenant, k.ID); err != nil {
				t.Fatal(err)
			}
			took, err := waitEnd(t, done, time.Now())
			if errors.Is(err, io.EOF) {
				t.Fatal("the cut download ended as if complete")
			}
			t.Logf("ended %s after the revoke, %d MiB in: %v", took.Round(time.Millisecond), got.Load()>>20, err)
		})
	}
}

// healthWatch is an open gRPC health Watch stream, read in the background.
type healthWatch struct {
	updates chan healthpb.HealthCheckResponse_ServingStatus
	done    chan error
}

func watchHealth(t *testing.T, cc *grpc.ClientConn, secret string) *healthWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "x-api-key", secret))
	t.Cleanup(cancel)
	s, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w := &healthWatch{updates: make(chan healthpb.HealthCheckResponse_ServingStatus, 16), done: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				w.done <- err
				return
			}
			w.updates <- m.GetStatus()
		}
	}()
	w.next(t)
	return w
}

func (w *healthWatch) next(t *testing.T) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	select {
	case s := <-w.updates:
		return s
	case err := <-w.done:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(2 * time.Second):
		t.Fatal("no update")
	}
	return 0
}

// TestStreamsEndGRPC: a gRPC server stream of a key that stops admitting
// ends with Unauthenticated within a second; another key's stream on the
// same connection goes on receiving.
func TestStreamsEndGRPC(t *testing.T) {
	g := startStreamGateway(t)
	dial := func(t *testing.T, addr string, d *countingDialer) *grpc.ClientConn {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.dial(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return cc
	}
	for _, e := range enders {
		t.Run(e.name, func(t *testing.T) {
			g.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			var d countingDialer
			cc := dial(t, g.url, &d)
			idA, secA, secB, addrB := e.keysAB(t, g)
			ccB := cc // B shares A's connection, except across tenants (another site)
			if addrB != g.url {
				ccB = dial(t, addrB, new(countingDialer))
			}
			a, b := watchHealth(t, cc, secA), watchHealth(t, ccB, secB)
			at := e.end(t, g, idA)
			took, err := waitEnd(t, a.done, at)
			if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != e.code {
				t.Fatalf("A ended with %v, want Unauthenticated %s", err, e.code)
			}
			t.Logf("A ended %s after the end: %v", took.Round(time.Millisecond), err)
			g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
			if s := b.next(t); s != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("B got %v", s)
			}
			// A's connection is still the one in use: a call with A's key
			// is answered (rejected) on it without a new dial.
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", secA)
			if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
				t.Fatal("a call with A's key was admitted after its end")
			}
			if n := d.n.Load(); n != 1 {
				t.Fatalf("%d connections: the end reset the shared one", n)
			}
		})
	}
}

// TestStreamsEndLatency measures, over 60 streams of each kind, the time
// from the answer of RevokeKey to the end reaching the client: a WebSocket
// close 1008, the read error of an SSE stream over HTTP/1.1 and over HTTP/2,
// a gRPC stream's Unauthenticated.
func TestStreamsEndLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	g := startStreamGateway(t)
	g.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	h1 := &http.Client{Transport: &http.Transport{}}
	defer h1.CloseIdleConnections()
	tr2 := &http.Transport{Protocols: new(http.Protocols)}
	tr2.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: tr2}
	defer h2.CloseIdleConnections()
	cc, err := grpc.NewClient(g.url, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	kinds := []struct {
		name string
		open func(t *testing.T, secret string) <-chan error
		ok   func(error) bool
	}{
		{"websocket", func(t *testing.T, s string) <-chan error { return dialWS(t, g.url, s).done },
			func(err error) bool { return websocket.CloseStatus(err) == websocket.StatusPolicyViolation }},
		{"sse_h1", func(t *testing.T, s string) <-chan error { return openSSE(t, h1, g.url, s).done },
			func(err error) bool { return err.Error() != "clean end of stream" }},
		{"sse_h2", func(t *testing.T, s string) <-chan error { return openSSE(t, h2, g.url, s).done },
			func(err error) bool { return err.Error() != "clean end of stream" }},
		{"grpc", func(t *testing.T, s string) <-chan error { return watchHealth(t, cc, s).done },
			func(err error) bool { return status.Code(err) == codes.Unauthenticated }},
	}
	const trials = 60
	for _, kind := range kinds {
		var took []time.Duration
		for range trials {
			k, sec := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
			done := kind.open(t, sec)
			if _, err := g.st.RevokeKey("test", store.DefaultTenant, k.ID); err != nil {
				t.Fatal(err)
			}
			d, err := waitEnd(t, done, time.Now())
			if !kind.ok(err) {
				t.Fatalf("%s ended with %v", kind.name, err)
			}
			took = append(took, d)
		}
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		p50, p99 := took[trials/2], took[trials*99/100]
		t.Logf("%-9s revoke answer → end at the client, %d trials: p50 %s, p99 %s, max %s", kind.name, trials, p50, p99, took[trials-1])
		if p99 > endBound {
			t.Fatalf("%s: p99 %s over %s", kind.name, p99, endBound)
		}
	}
}

// TestFramingBoundaries: the WebSocket and gRPC framing trackers are at a
// boundary exactly between frames, however the bytes are split.
func TestFramingBoundaries(t *testing.T) {
	var ws []byte
	var wsEnds []int
	for _, n := range []int{0, 5, 125, 126, 300, 70000} {
		hdr := []byte{0x82}
		switch {
		case n < 126:
			hdr = append(hdr, byte(n))
		case n <= 0xffff:
			hdr = append(hdr, 126, byte(n>>8), byte(n))
		default:
			hdr = append(hdr, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		}
		ws = append(append(ws, hdr...), make([]byte, n)...)
		wsEnds = append(wsEnds, len(ws))
	}
	ws = append(ws, wsCloseFrame(1008, "key_revoked")...)
	wsEnds = append(wsEnds, len(ws))

	var g []byte
	var gEnds []int
	for _, n := range []int{0, 1, 4, 5, 1000} {
		g = append(g, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		g = append(g, make([]byte, n)...)
		gEnds = append(gEnds, len(g))
	}

	for _, chunk := range []int{1, 2, 3, 7, 64, 4096} {
		var f wsFraming
		checkSplit(t, "websocket", ws, wsEnds, chunk, f.feed, f.boundary)
		var gf grpcFraming
		checkSplit(t, "grpc", g, gEnds, chunk, gf.feed, gf.boundary)
	}
}

// checkSplit feeds b in chunks and checks boundary() after each chunk.
func checkSplit(t *testing.T, what string, b []byte, ends []int, chunk int, feed func([]byte), boundary func() bool) {
	t.Helper()
	isEnd := map[int]bool{0: true}
	for _, e := range ends {
		isEnd[e] = true
	}
	for off := 0; off < len(b); {
		n := min(chunk, len(b)-off)
		feed(b[off : off+n])
		off += n
		if got := boundary(); got != isEnd[off] {
			t.Fatalf("%s, chunks of %d: boundary at %d is %v, want %v", what, chunk, off, got, isEnd[off])
		}
	}
}

type countingNext struct{ n int }

func (c *countingNext) ServeHTTP(http.ResponseWriter, *http.Request) error { c.n++; return nil }

// TestStreamsRecheck: a request whose key was revoked between its
// verification and its tracking (when the invalidation could not find it)
// is refused before it reaches the next handler.
func TestStreamsRecheck(t *testing.T) {
	sh, st := memShared(t)
	for _, proto := range []int{1, 2} {
		k, sec := newKey(t, st, store.DefaultTenant, store.KeyInput{})
		view, verdict, err := st.Verify(store.DefaultTenant, sec, time.Now())
		if err != nil || verdict != store.VerdictValid {
			t.Fatal(verdict, err)
		}
		r := httptest.NewRequest("GET", "/", nil)
		r.ProtoMajor = proto
		var next countingNext
		if err := sh.streams.serve(httptest.NewRecorder(), r, &next, st, view); err != nil || next.n != 1 {
			t.Fatalf("HTTP/%d before the revoke: %v, next called %d times", proto, err, next.n)
		}
		if _, err := st.RevokeKey("test", store.DefaultTenant, k.ID); err != nil {
			t.Fatal(err)
		}
		err = sh.streams.serve(httptest.NewRecorder(), r, &next, st, view)
		if stopped, ok := err.(stoppedAdmitting); !ok || stopped.code != "key_revoked" || next.n != 1 {
			t.Fatalf("HTTP/%d after the revoke: %v, next called %d times", proto, err, next.n)
		}
	}
}

// TestHandlerStoppedAdmittingCountedOnce: a request whose key stops
// admitting between its verification and its admission (here it expires:
// the registry's clock is past the expiry, the handler's is not) is
// answered and counted as that rejection only: not as admitted too, in the
// outcome counters or in the key's usage.
func TestHandlerStoppedAdmittingCountedOnce(t *testing.T) {
	sh, st := memShared(t)
	verified := time.Now()
	expires := verified.Add(time.Hour)
	k, secret := newKey(t, st, store.DefaultTenant, store.KeyInput{ExpiresAt: &expires})
	h := &Handler{shared: sh, now: func() time.Time { return verified }}
	h.logger = caddy.Log()
	if err := h.provisionDefaults(); err != nil {
		t.Fatal(err)
	}
	sh.streams.now = func() time.Time { return expires.Add(time.Minute) }

	req := httptest.NewRequest("GET", "http://gw/orders/1", nil)
	req.Header.Set("X-API-Key", secret)
	w := httptest.NewRecorder()
	var next countingNext
	r := caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, new(caddyhttp.Server))
	if err := h.ServeHTTP(w, r, &next); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "key_expired") || next.n != 0 {
		t.Fatalf("answer %d %q, next called %d times; want 401 key_expired before next", w.Code, w.Body.String(), next.n)
	}
	if ok, expired := sh.outcomes.load(outcomeOK), sh.outcomes.load(outcomeExpired); ok != 0 || expired != 1 {
		t.Fatalf("outcome counters: ok %d, key_expired %d; want 0 and 1", ok, expired)
	}
	u, err := st.Usage(store.DefaultTenant, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if u.Outcomes["ok"] != 0 || u.Total != 1 {
		t.Fatalf("usage: total %d, outcomes %v; want the one request, not as ok", u.Total, u.Outcomes)
	}
}

// TestHijackedEndMidFrame: ended in the middle of a frame, a WebSocket
// connection lets that frame finish, writes the close frame 1008 right after
// it (nothing of the next frame) and closes; if the frame never finishes it
// closes without a close frame, within its bound.
func TestHijackedEndMidFrame(t *testing.T) {
	frame := append([]byte{0x82, 10}, []byte("0123456789")...)
	next := append([]byte{0x82, 3}, []byte("abc")...)
	for _, finish := range []bool{true, false} {
		srv, cli := net.Pipe()
		got := make(chan []byte, 1)
		go func() {
			var all []byte
			buf := make([]byte, 256)
			for {
				n, err := cli.Read(buf)
				all = append(all, buf[:n]...)
				if err != nil {
					got <- all
					return
				}
			}
		}()
		c := &hijacked{Conn: srv, websocket: true}
		if _, err := c.Write(frame[:6]); err != nil {
			t.Fatal(err)
		}
		ended := make(chan struct{})
		start := time.Now()
		go func() { c.end("key_revoked"); close(ended) }()
		for {
			c.mu.Lock()
			p := c.pending
			c.mu.Unlock()
			if p != "" {
				break
			}
			time.Sleep(time.Millisecond)
		}
		want := append([]byte{}, frame[:6]...)
		if finish {
			rest := append(append([]byte{}, frame[6:]...), next...)
			n, err := c.Write(rest)
			if n != len(frame)-6 || !errors.Is(err, net.ErrClosed) {
				t.Fatalf("write of the rest: %d, %v", n, err)
			}
			want = append(append(want, frame[6:]...), wsCloseFrame(1008, "key_revoked")...)
		}
		<-ended
		if d := time.Since(start); d > 3*wsEndWait {
			t.Fatalf("end took %s", d)
		}
		b := <-got
		if string(b) != string(want) {
			t.Fatalf("finish=%v: client read %q, want %q", finish, b, want)
		}
	}
}

type nextFunc func(http.ResponseWriter, *http.Request) error

func (f nextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// TestStreamsRevokeRace: requests verified concurrently with a revoke are
// either refused at tracking or ended by the invalidation — none runs on.
// (Without the recheck after joining, a request verified just before the
// revoke and joined just after it would stay open.)
func TestStreamsRevokeRace(t *testing.T) {
	sh, st := memShared(t)
	var stuck, served, refused atomic.Int32
	for round := range 30 {
		k, sec := newKey(t, st, store.DefaultTenant, store.KeyInput{})
		start := make(chan struct{})
		done := make(chan struct{})
		const workers = 8
		for range workers {
			go func() {
				defer func() { done <- struct{}{} }()
				<-start
				view, verdict, err := st.Verify(store.DefaultTenant, sec, time.Now())
				if err != nil || verdict != store.VerdictValid {
					return // the revoke came first
				}
				r := httptest.NewRequest("POST", "/", nil)
				r.ProtoMajor = 2
				r.Header.Set("Content-Type", "application/grpc")
				next := nextFunc(func(w http.ResponseWriter, r *http.Request) error {
					served.Add(1)
					select {
					case <-r.Context().Done():
						return r.Context().Err()
					case <-time.After(3 * time.Second):
						stuck.Add(1)
						return nil
					}
				})
				if err := sh.streams.serve(httptest.NewRecorder(), r, next, st, view); err != nil {
					refused.Add(1)
				}
			}()
		}
		close(start)
		time.Sleep(time.Duration(round%5) * 50 * time.Microsecond)
		if _, err := st.RevokeKey("test", store.DefaultTenant, k.ID); err != nil {
			t.Fatal(err)
		}
		for range workers {
			<-done
		}
	}
	t.Logf("served %d, refused at tracking %d", served.Load(), refused.Load())
	if n := stuck.Load(); n > 0 {
		t.Fatalf("%d requests ran on after the revoke", n)
	}
}

// TestStreamsBulkRevoke: one bulk revoke ends the requests of every key it
// names, and only those.
func TestStreamsBulkRevoke(t *testing.T) {
	sh, st := memShared(t)
	const keys = 40
	var ids []string
	ended := make([]chan struct{}, keys)
	running := make(chan struct{}, keys)
	release := make(chan struct{})
	defer close(release)
	for i := range keys {
		k, sec := newKey(t, st, store.DefaultTenant, store.KeyInput{Name: fmt.Sprintf("key %d", i)})
		if i%2 == 0 {
			ids = append(ids, k.ID)
		}
		view, _, _ := st.Verify(store.DefaultTenant, sec, time.Now())
		ended[i] = make(chan struct{})
		r := httptest.NewRequest("POST", "/", nil)
		r.ProtoMajor = 2
		r.Header.Set("Content-Type", "application/grpc")
		go func() {
			_ = sh.streams.serve(httptest.NewRecorder(), r, nextFunc(func(w http.ResponseWriter, r *http.Request) error {
				running <- struct{}{}
				select {
				case <-r.Context().Done():
					close(ended[i])
				case <-release:
				}
				return nil
			}), st, view)
		}()
	}
	for range keys {
		<-running
	}
	if _, err := st.RevokeKeys("test", store.DefaultTenant, ids); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(endBound)
	for i := 0; i < keys; i += 2 {
		select {
		case <-ended[i]:
		case <-deadline:
			t.Fatalf("key %d's request still runs after the bulk revoke", i)
		}
	}
	for i := 1; i < keys; i += 2 {
		select {
		case <-ended[i]:
			t.Fatalf("key %d was not revoked, but its request ended", i)
		default:
		}
	}
}

// TestStreamsRecheckAll: when the store loses track of what changed
// (Invalidation.All after ReloadAll, as when a watch has to start over),
// every live request is asked about again: one whose key was revoked
// meanwhile ends, another key's request goes on.
func TestStreamsRecheckAll(t *testing.T) {
	sh, st := memShared(t)
	type stream struct {
		key   *store.Key
		ended chan struct{}
	}
	start := func() stream {
		k, sec := newKey(t, st, store.DefaultTenant, store.KeyInput{})
		view, verdict, err := st.Verify(store.DefaultTenant, sec, time.Now())
		if err != nil || verdict != store.VerdictValid {
			t.Fatal(verdict, err)
		}
		s := stream{key: k, ended: make(chan struct{})}
		running := make(chan struct{})
		r := httptest.NewRequest("GET", "/events", nil)
		r.ProtoMajor = 2 // ended by cancelling its stream
		go func() {
			defer close(s.ended)
			defer func() { _ = recover() }() // http.ErrAbortHandler: the stream is reset
			_ = sh.streams.serve(httptest.NewRecorder(), r, caddyhttpHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				close(running)
				<-r.Context().Done()
				return nil
			}), st, view)
		}()
		<-running
		return s
	}
	a, b := start(), start()

	// Revoke a while nobody listens, as if the notification were lost.
	sh.unsubscribe()
	if _, err := st.RevokeKey("test", store.DefaultTenant, a.key.ID); err != nil {
		t.Fatal(err)
	}
	sh.unsubscribe = st.Subscribe(func(inv store.Invalidation) { sh.streams.invalidate(st, inv) })
	select {
	case <-a.ended:
		t.Fatal("ended without a notification")
	case <-time.After(50 * time.Millisecond):
	}
	st.ReloadAll()
	select {
	case <-a.ended:
	case <-time.After(time.Second):
		t.Fatal("the revoked key's stream still runs 1 s after ReloadAll")
	}
	select {
	case <-b.ended:
		t.Fatal("another key's stream ended")
	case <-time.After(50 * time.Millisecond):
	}
}

type caddyhttpHandlerFunc func(http.ResponseWriter, *http.Request) error

func (f caddyhttpHandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// memShared is the app's shared state over an in-memory store, opened (no
// Caddy running), with API keys enabled for the default tenant.
func memShared(t testing.TB) (*shared, *store.Store) {
	t.Helper()
	sh := newShared(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, Decorate: decorate})
	st, err := sh.open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.Destruct() })
	enable(t, st, store.DefaultTenant)
	return sh, st
}

// stoppedAdmitting is serve's error for a request admit refused.
type stoppedAdmitting struct{ code string }

func (e stoppedAdmitting) Error() string { return "the API key stopped admitting requests: " + e.code }

// serve is admit then run, as the handler does (without its counting).
func (s *streamRegistry) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, st *store.Store, view *store.KeyView) error {
	a, code := s.admit(w, r, st, view)
	if code != "" {
		return stoppedAdmitting{code}
	}
	return s.run(a, next)
}
