package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/store"
)

// TestReloadUnderTraffic: reloading with the same storage path keeps the
// store open (no lock error) and fails no request; reloading to another
// path releases the old store.
func TestReloadUnderTraffic(t *testing.T) {
	g := startGateway(t, "")
	enable(t, g.st, store.DefaultTenant)
	_, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})

	var failed, total, connClosed atomic.Int64
	var lastFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", g.url+"/", nil)
				req.Header.Set("X-API-Key", secret)
				resp, err := client.Do(req)
				if err != nil {
					// A keep-alive connection the old server closed as the
					// reload retired it (HTTP/1.1, as with any server's
					// graceful reload): a client retries. The pool may hold
					// more such connections, so a retry can meet one too.
					// Any HTTP answer but 200 counts as a failure.
					for try := 0; err != nil && try < 3; try++ {
						connClosed.Add(1)
						resp, err = client.Do(req)
					}
				}
				total.Add(1)
				if err != nil {
					failed.Add(1)
					lastFailure.Store(err.Error())
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					lastFailure.Store(resp.Status)
				}
			}
		}()
	}
	for i := range 8 {
		time.Sleep(30 * time.Millisecond)
		cfg := strings.Replace(g.cfg, "header_up X-Api-Key-Owner", fmt.Sprintf("header_up X-Reload %d\n\t\theader_up X-Api-Key-Owner", i), 1)
		loadCaddyfile(t, cfg)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d requests, %d connections closed by reloads and retried", total.Load(), connClosed.Load())
	if failed.Load() != 0 || total.Load() < 20 {
		t.Fatalf("%d of %d requests failed across reloads (last: %v)", failed.Load(), total.Load(), lastFailure.Load())
	}
	if sharedStore(t, g.dir) != g.st {
		t.Fatal("reload with the same path opened a second store")
	}

	// Reload to a new path: the old store is flushed, closed and unlocked.
	newDir := t.TempDir()
	loadCaddyfile(t, strings.Replace(g.cfg, "storage "+g.dir+"\n", "storage "+newDir+"\n", 1))
	old, err := store.Open(store.Options{Dir: g.dir, FlushInterval: -1})
	if err != nil {
		t.Fatalf("old store still held after reload to a new path: %v", err)
	}
	old.Close()
	if r := get(t, g.url+"/", map[string]string{"X-API-Key": secret}); r.status != 401 {
		t.Fatalf("key of the old store on the new one: %d", r.status)
	}
}

// TestLastUsedFlushed: last use reaches the store within a flush interval
// with nothing written on the request path, and a graceful stop loses none.
func TestLastUsedFlushed(t *testing.T) {
	g := startGateway(t, "")
	enable(t, g.st, store.DefaultTenant)
	key, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})
	if r := get(t, g.url+"/", map[string]string{"X-API-Key": secret}); r.status != 200 {
		t.Fatalf("got %d", r.status)
	}
	if g.st.PendingUsage() != 1 {
		t.Fatalf("pending usage = %d, want the request buffered", g.st.PendingUsage())
	}
	deadline := time.Now().Add(2 * time.Second) // flush_interval is 200ms
	for g.st.PendingUsage() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	k, err := g.st.GetKey(store.DefaultTenant, key.ID)
	if err != nil || g.st.PendingUsage() != 0 || k.LastUsedAt == nil || k.LastUsedIP == nil || *k.LastUsedIP != "127.0.0.1" {
		t.Fatalf("after a flush interval: pending %d, key %+v, %v", g.st.PendingUsage(), k, err)
	}

	// A use just before a graceful stop is flushed by the stop.
	_, secret2 := newKey(t, g.st, store.DefaultTenant, store.KeyInput{Name: "second"})
	id2 := mustID(t, g.st, secret2)
	if r := get(t, g.url+"/", map[string]string{"X-API-Key": secret2}); r.status != 200 {
		t.Fatalf("got %d", r.status)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Dir: g.dir, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k2, err := st.GetKey(store.DefaultTenant, id2)
	if err != nil || k2.LastUsedAt == nil {
		t.Fatalf("after graceful stop: %+v %v", k2, err)
	}
	u, err := st.Usage(store.DefaultTenant, id2)
	if err != nil || u.Outcomes["ok"] != 1 {
		t.Fatalf("usage after stop: %+v %v", u, err)
	}
}
