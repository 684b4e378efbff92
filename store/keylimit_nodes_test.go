package store

import (
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestKeyLimitAcrossNodes: a tenant's key_limit counts the keys created
// through every node, and so does its key_count.
func TestKeyLimitAcrossNodes(t *testing.T) {
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	clk := newClock()
	a := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-a" })
	b := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-b" })
	_, err := a.CreateTenant("op", TenantInput{ID: "acme", KeyLimit: ptr(3)})
	mustNil(t, err)
	enable(t, a, "acme")
	mustKey(t, a, "acme", "alice", KeyInput{})
	mustKey(t, a, "acme", "alice", KeyInput{})
	if ten, err := a.GetTenant("acme"); err != nil || ten.KeyCount != 2 { // a's count is now in memory
		t.Fatalf("node a: %+v %v", ten, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := b.GetTenant("acme"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	mustKey(t, b, "acme", "bob", KeyInput{})
	var count int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ten, err := a.GetTenant("acme")
		mustNil(t, err)
		if count = ten.KeyCount; count == 3 || time.Now().After(deadline) {
			break
		}
	}
	if count != 3 {
		t.Fatalf("node a counts %d keys after node b created one, want 3", count)
	}
	if _, _, err := a.CreateKey("op", "acme", "alice", KeyInput{Name: "fourth"}); KindOf(err) != KindLimit {
		t.Fatalf("node a created a fourth key under a limit of 3: %v", err)
	}
}
