package caddymodule

import (
	"fmt"
	"sync"
	"testing"
	"unsafe"

	"github.com/keygate/keygate/store"
)

func TestPlaceholderSet(t *testing.T) {
	v := &store.KeyView{ID: "key_1", Name: "ci ✓", Owner: "alice", Group: "", Tenant: "default"}
	var f func(string) (any, bool)
	// Building the set for a cached view costs two objects (the set and its
	// method value), not one per placeholder.
	if n := testing.AllocsPerRun(100, func() { v.Extra = decorate(v) }); n > 2 {
		t.Fatalf("decorate allocates %.0f objects", n)
	}
	// …and they are small: every cached view keeps them live.
	if size := unsafe.Sizeof(placeholderSet{}); size > 16 {
		t.Fatalf("a placeholder set takes %d bytes per cached view", size)
	}
	f = placeholdersOf(v)
	for key, want := range map[string]string{
		"http.auth.user.id": "key_1", "http.auth.api_key.id": "key_1", "http.auth.api_key.name": "ci ✓",
		"http.auth.api_key.owner": "alice", "http.auth.api_key.group": "", "http.auth.api_key.tenant": "default",
	} {
		got, ok := f(key)
		if s, isString := got.(string); !ok || !isString || s != want {
			t.Errorf("%s = %#v, %v; want %q", key, got, ok, want)
		}
	}
	for _, key := range []string{"http.auth.api_key", "http.auth.api_key.error", "http.request.uri", ""} {
		if got, ok := f(key); ok || got != nil {
			t.Errorf("%s answered %#v", key, got)
		}
	}
	// Once boxed, answering allocates nothing.
	if n := testing.AllocsPerRun(100, func() { _, _ = f("http.auth.api_key.owner") }); n != 0 {
		t.Fatalf("a lookup allocates %.0f objects", n)
	}
}

// TestPlaceholderSetConcurrentFirstUse: requests of one key racing on the
// first lookup all get the key's values (run with -race).
func TestPlaceholderSetConcurrentFirstUse(t *testing.T) {
	v := &store.KeyView{ID: "key_2", Name: "n", Owner: "bob", Tenant: "t"}
	f := placeholdersOf(v)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			if got, ok := f("http.auth.api_key.owner"); !ok || got != "bob" {
				errs <- fmt.Sprintf("owner = %#v, %v", got, ok)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
