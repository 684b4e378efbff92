package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/store"
)

// grpcUpstream is a gRPC server with the standard health service on
// loopback (cleartext HTTP/2), recording the metadata of the last call.
type grpcUpstream struct {
	addr string
	mu   sync.Mutex
	md   metadata.MD
}

func startGRPCUpstream(t *testing.T) *grpcUpstream {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &grpcUpstream{addr: l.Addr().String()}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		up.mu.Lock()
		up.md = md
		up.mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return up
}

func (u *grpcUpstream) lastMD() metadata.MD {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.md
}

// TestGRPC: grpc-go client and server over h2c through Caddy. A call with
// a key is admitted (the upstream never sees the key); each rejection is
// a trailers-only answer that grpc-go reads as the spec's status, with
// grpc-message the code.
func TestGRPC(t *testing.T) {
	up := startGRPCUpstream(t)
	dir := t.TempDir()
	port := freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %[1]s/caddy
	log {
		level error
	}
	api_keys {
		storage %[1]s
	}
	servers {
		protocols h1 h2c
	}
}
http://127.0.0.1:%[2]d {
	bind 127.0.0.1
	api_key
	reverse_proxy h2c://%[3]s
}`, dir, port, up.addr))
	st := sharedStore(t, dir)
	enable(t, st, store.DefaultTenant)
	if _, err := st.PutGroup("test", store.DefaultTenant, "slow", store.GroupInput{RateLimit: &store.RateLimit{RequestsPerSecond: 0.01, Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	_, secret := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	_, revoked := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	if _, err := st.RevokeKey("test", store.DefaultTenant, mustID(t, st, revoked)); err != nil {
		t.Fatal(err)
	}
	_, fenced := newKey(t, st, store.DefaultTenant, store.KeyInput{IPAllowlist: []string{"10.0.0.0/8"}})
	_, slow := newKey(t, st, store.DefaultTenant, store.KeyInput{Group: "slow"})

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	check := func(md ...string) (*healthpb.HealthCheckResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if len(md) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, md...)
		}
		return hc.Check(ctx, &healthpb.HealthCheckRequest{})
	}

	t.Run("admitted", func(t *testing.T) {
		for _, md := range [][]string{{"x-api-key", secret}, {"authorization", "Bearer " + secret}} {
			resp, err := check(md...)
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("%s: %v %v", md[0], resp, err)
			}
			got := up.lastMD()
			if len(got.Get("x-api-key")) > 0 || len(got.Get("authorization")) > 0 {
				t.Errorf("the upstream saw the key: %v", got)
			}
		}
	})
	wantStatus := func(t *testing.T, err error, code codes.Code, msg string) {
		t.Helper()
		s, ok := status.FromError(err)
		if !ok || s.Code() != code || s.Message() != msg {
			t.Errorf("got %v, want %v %q", err, code, msg)
		}
	}
	t.Run("rejections", func(t *testing.T) {
		_, err := check()
		wantStatus(t, err, codes.Unauthenticated, "missing_key")
		_, err = check("x-api-key", "kg_nonsense")
		wantStatus(t, err, codes.Unauthenticated, "invalid_key")
		_, err = check("x-api-key", revoked)
		wantStatus(t, err, codes.Unauthenticated, "key_revoked")
		_, err = check("x-api-key", fenced)
		wantStatus(t, err, codes.PermissionDenied, "ip_not_allowed")
		if _, err := check("x-api-key", slow); err != nil {
			t.Fatalf("first call of the slow key: %v", err)
		}
		_, err = check("x-api-key", slow)
		wantStatus(t, err, codes.ResourceExhausted, "rate_limited")
		if _, err := st.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(false)}); err != nil {
			t.Fatal(err)
		}
		_, err = check("x-api-key", secret)
		wantStatus(t, err, codes.PermissionDenied, "api_keys_disabled")
		enable(t, st, store.DefaultTenant)
		if _, err := check("x-api-key", secret); err != nil {
			t.Fatalf("the connection survives rejections: %v", err)
		}
	})
	t.Run("trailers-only on the wire", func(t *testing.T) {
		// Raw h2c: one HEADERS frame, status 200, grpc-status in it, no body.
		var h2c http.Protocols
		h2c.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &h2c}
		defer tr.CloseIdleConnections()
		for _, c := range []struct {
			contentType string
			grpc        bool
		}{
			{"application/grpc", true},
			{"application/grpc+proto", true},
			{"application/GRPC+json", true},
			{"application/grpc-web", false},
			{"application/grpc-web+proto", false},
			{"application/grpcx", false},
		} {
			req, _ := http.NewRequest("POST", "http://"+addr+"/grpc.health.v1.Health/Check", strings.NewReader(""))
			req.Header.Set("Content-Type", c.contentType)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			var body [64]byte
			n, _ := resp.Body.Read(body[:])
			resp.Body.Close()
			if !c.grpc {
				if resp.StatusCode != 401 || resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("%s: %d %s, want keygate's JSON 401", c.contentType, resp.StatusCode, resp.Header.Get("Content-Type"))
				}
				continue
			}
			if resp.ProtoMajor != 2 {
				t.Fatalf("%s: answered over %s, want h2c", c.contentType, resp.Proto)
			}
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/grpc" ||
				resp.Header.Get("Grpc-Status") != "16" || resp.Header.Get("Grpc-Message") != "missing_key" || n != 0 {
				t.Errorf("%s: %d %v body %q", c.contentType, resp.StatusCode, resp.Header, body[:n])
			}
		}
	})
	t.Run("store unavailable", func(t *testing.T) {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := check("x-api-key", secret)
		wantStatus(t, err, codes.Unavailable, "unavailable")
	})
}
