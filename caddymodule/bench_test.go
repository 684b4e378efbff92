package caddymodule

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/keygate/keygate/store"
)

// benchHandler is an api_key handler over an in-memory store with one key,
// provisioned by hand (no Caddy running), with the key's view cached.
func benchHandler(b *testing.B, in store.KeyInput) (*Handler, string) {
	b.Helper()
	opts := store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, Decorate: decorate}
	sh := newShared(opts)
	st, err := sh.open()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sh.Destruct() })
	if _, err := st.UpdateSettings("b", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(true)}); err != nil {
		b.Fatal(err)
	}
	in.Name = "bench"
	_, secret, err := st.CreateKey("b", store.DefaultTenant, "alice", in)
	if err != nil {
		b.Fatal(err)
	}
	h := &Handler{shared: sh}
	h.logger = caddy.Log()
	if err := h.provisionDefaults(); err != nil {
		b.Fatal(err)
	}
	st.Verify(store.DefaultTenant, secret, h.now())
	st.Wait()
	return h, secret
}

type nopHandler struct{}

func (nopHandler) ServeHTTP(http.ResponseWriter, *http.Request) error { return nil }

// runBench serves one request per iteration the way Caddy's server does
// (fresh replacer, PrepareRequest), through h or, with h nil, straight to
// the next handler: the difference between the two is the gateway's cost.
func runBench(b *testing.B, h *Handler, secret string) { runBenchProto(b, h, secret, 1) }

func runBenchProto(b *testing.B, h *Handler, secret string, major int) {
	srv := new(caddyhttp.Server)
	req := httptest.NewRequest("GET", "http://gw/orders/1", nil)
	req.ProtoMajor = major
	req.RemoteAddr = "192.0.2.10:4000"
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req.Header.Set("X-API-Key", secret)
		r := caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, srv)
		var err error
		if h == nil {
			err = nopHandler{}.ServeHTTP(w, r)
		} else {
			err = h.ServeHTTP(w, r, nopHandler{})
		}
		if err != nil || w.Code != 200 {
			b.Fatalf("status %d, %v", w.Code, err)
		}
	}
}

// BenchmarkHandlerBaseline is the per-request setup alone.
func BenchmarkHandlerBaseline(b *testing.B) {
	_, secret := benchHandler(b, store.KeyInput{})
	runBench(b, nil, secret)
}

// BenchmarkHandlerHit is a cached key admitted: subtract the baseline.
func BenchmarkHandlerHit(b *testing.B) {
	h, secret := benchHandler(b, store.KeyInput{})
	runBench(b, h, secret)
}

// BenchmarkHandlerUnknownKey is the 401 of a well-formed unknown key from
// the negative cache, answered with the spec's JSON body; compare with
// BenchmarkHandlerRespond401 (what Caddy's plain `respond 401` costs on
// top of the same setup).
func BenchmarkHandlerUnknownKey(b *testing.B) {
	h, _ := benchHandler(b, store.KeyInput{})
	secret := wellFormedUnknown(b, h)
	run401(b, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, nopHandler{}) }, secret)
}

// BenchmarkHandlerRespond401 is Caddy's static_response answering 401.
func BenchmarkHandlerRespond401(b *testing.B) {
	sr := caddyhttp.StaticResponse{StatusCode: caddyhttp.WeakString("401")}
	run401(b, func(w http.ResponseWriter, r *http.Request) error { return sr.ServeHTTP(w, r, nopHandler{}) }, "")
}

// wellFormedUnknown returns a key of the right layout and checksum that no
// key has, verified once so that the negative cache holds it.
func wellFormedUnknown(b *testing.B, h *Handler) string {
	st, _ := h.shared.store()
	secret := store.NewSecret(store.KeyPrefix)
	if _, v, err := st.Verify(store.DefaultTenant, secret, time.Now()); err != nil || v != store.VerdictInvalid {
		b.Fatalf("verdict %v, %v", v, err)
	}
	st.Wait()
	return secret
}

func run401(b *testing.B, serve func(http.ResponseWriter, *http.Request) error, secret string) {
	srv := new(caddyhttp.Server)
	req := httptest.NewRequest("GET", "http://gw/orders/1", nil)
	req.RemoteAddr = "192.0.2.10:4000"
	w := &discardWriter{hdr: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.hdr)
		if secret != "" {
			req.Header.Set("X-API-Key", secret)
		}
		r := caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, srv)
		if err := serve(w, r); err != nil || w.code != 401 {
			b.Fatalf("status %d, %v", w.code, err)
		}
	}
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	hdr  http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkHandlerHitAllowlist adds a CIDR allowlist check.
func BenchmarkHandlerHitAllowlist(b *testing.B) {
	h, secret := benchHandler(b, store.KeyInput{IPAllowlist: []string{"198.51.100.0/24", "192.0.2.0/24"}})
	runBench(b, h, secret)
}

// BenchmarkHandlerHitH2 is BenchmarkHandlerHit over HTTP/2: such a request
// can only be ended from its own handler, so it gets a cancellable context
// and a wrapped writer (streams.go); compare with BenchmarkHandlerHit.
func BenchmarkHandlerHitH2(b *testing.B) {
	h, secret := benchHandler(b, store.KeyInput{})
	runBenchProto(b, h, secret, 2)
}

// BenchmarkStreamsTrack is what tracking adds to an admitted HTTP/1.1
// request: join the live set, recheck, leave (streams.go).
func BenchmarkStreamsTrack(b *testing.B) {
	h, secret := benchHandler(b, store.KeyInput{})
	st, _ := h.shared.store()
	view, _, _ := st.Verify(store.DefaultTenant, secret, time.Now())
	req := httptest.NewRequest("GET", "http://gw/orders/1", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		if err := h.shared.streams.serve(w, req, nopHandler{}, st, view); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandlerHitSpread is BenchmarkHandlerHit cycling through 10k
// (100k) distinct cached keys in a shuffled order, with a usage flush (not
// timed) after every six requests per key, as the load benchmark's uniform
// scenario does (~12k requests/s over 10k keys, a flush every 5 s): the
// single-key benchmarks keep every cache line the request touches warm.
// Compare with BenchmarkHandlerBaseline.
func BenchmarkHandlerHitSpread(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			h, secrets := spreadHandler(b, n)
			st, _ := h.shared.store()
			srv := new(caddyhttp.Server)
			req := httptest.NewRequest("GET", "http://gw/orders/1", nil)
			req.RemoteAddr = "192.0.2.10:4000"
			w := httptest.NewRecorder()
			b.ReportAllocs()
			b.ResetTimer()
			i, calls := 0, 0
			for b.Loop() {
				req.Header.Set("X-API-Key", secrets[i])
				r := caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, srv)
				if err := h.ServeHTTP(w, r, nopHandler{}); err != nil || w.Code != 200 {
					b.Fatalf("status %d, %v", w.Code, err)
				}
				if i++; i == len(secrets) {
					i = 0
				}
				if calls++; calls == 6*n {
					b.StopTimer()
					if err := st.Flush(); err != nil {
						b.Fatal(err)
					}
					calls = 0
					b.StartTimer()
				}
			}
			b.StopTimer()
			if hits, misses := st.CacheMetrics(); misses > uint64(n)+hits/100 {
				b.Fatalf("not a hit benchmark: %d hits, %d misses", hits, misses)
			}
		})
	}
}

// spreadHandler is benchHandler with n keys (bulk created, 1,000 per
// owner), all cached, their secrets in a fixed shuffled order.
func spreadHandler(b *testing.B, n int) (*Handler, []string) {
	b.Helper()
	opts := store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, Decorate: decorate, CacheEntries: int64(2 * n)}
	sh := newShared(opts)
	st, err := sh.open()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sh.Destruct() })
	if _, err := st.UpdateSettings("b", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(store.MaxKeysPerUserMax)}); err != nil {
		b.Fatal(err)
	}
	secrets := make([]string, 0, n)
	in := make([]store.KeyInput, store.MaxKeysPerUserMax)
	for i := range in {
		in[i].Name = "bench"
	}
	for len(secrets) < n {
		_, sec, err := st.CreateKeys("b", store.DefaultTenant, "owner"+strconv.Itoa(len(secrets)), in[:min(len(in), n-len(secrets))])
		if err != nil {
			b.Fatal(err)
		}
		secrets = append(secrets, sec...)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(secrets), func(i, j int) { secrets[i], secrets[j] = secrets[j], secrets[i] })
	h := &Handler{shared: sh}
	h.logger = caddy.Log()
	if err := h.provisionDefaults(); err != nil {
		b.Fatal(err)
	}
	for range 3 { // fill the cache and let ristretto admit every entry
		for _, sec := range secrets {
			if _, v, err := st.Verify(store.DefaultTenant, sec, h.now()); err != nil || v != store.VerdictValid {
				b.Fatal(v, err)
			}
		}
		st.Wait()
	}
	return h, secrets
}
