package caddymodule

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

// hammer sends requests with secret from workers goroutines until stop is
// closed, and reports every admitted request that started after the time
// returned by cutoff() (zero: not yet set). A request whose connection
// fails is not admitted: the revocation ends the HTTP/1.1 connections of
// requests still running with the key (streams.go), so a request admitted
// just before the revoke may see its connection closed.
func hammer(t *testing.T, url, secret string, workers int, cutoff *atomic.Int64, stop <-chan struct{}) (admittedAfter, total *atomic.Int64, wait func()) {
	admittedAfter, total = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				started := time.Now().UnixNano()
				req, err := http.NewRequest("GET", url, nil)
				if err != nil {
					panic(err)
				}
				req.Header.Set("X-API-Key", secret)
				resp, err := client.Do(req)
				total.Add(1)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if c := cutoff.Load(); c != 0 && started > c && resp.StatusCode == 200 {
					admittedAfter.Add(1)
				}
			}
		}()
	}
	return admittedAfter, total, wg.Wait
}

// TestRevokeUnderTraffic: once RevokeKey (or a rotation without grace) has
// returned, no request that starts afterwards is admitted with the key —
// even while concurrent cache misses race the write (PITFALLS 14).
func TestRevokeUnderTraffic(t *testing.T) {
	g := startGateway(t, "")
	enable(t, g.st, store.DefaultTenant)
	for _, mode := range []string{"revoke", "rotate"} {
		t.Run(mode, func(t *testing.T) {
			for round := range 5 {
				key, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
				var cutoff atomic.Int64
				stop := make(chan struct{})
				bad, total, wait := hammer(t, g.url+"/", secret, 8, &cutoff, stop)
				time.Sleep(time.Duration(20+round*10) * time.Millisecond)
				var err error
				if mode == "revoke" {
					_, err = g.st.RevokeKey("test", store.DefaultTenant, key.ID)
				} else {
					_, _, err = g.st.RotateKey("test", store.DefaultTenant, key.ID, store.RotateInput{})
				}
				cutoff.Store(time.Now().UnixNano())
				if err != nil {
					close(stop)
					wait()
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
				close(stop)
				wait()
				if bad.Load() != 0 {
					t.Fatalf("round %d: %d requests admitted after %s returned (of %d)", round, bad.Load(), mode, total.Load())
				}
				if total.Load() < 5 {
					t.Fatalf("round %d: only %d requests ran", round, total.Load())
				}
			}
		})
	}
}
