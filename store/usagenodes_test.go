package store

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestUsageSummedAcrossNodes: two nodes on one etcd count the same key's
// requests in their own records; the usage endpoint and last_used_at of
// either node merge both.
func TestUsageSummedAcrossNodes(t *testing.T) {
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	clk := newClock()
	a := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-a" })
	b := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-b" })
	enable(t, a, "acme")
	key, secret := mustKey(t, a, "acme", "alice", KeyInput{})
	now := clk.Now()
	va, _, err := a.Verify("acme", secret, now)
	mustNil(t, err)
	vb := va
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if vb, _, err = b.Verify("acme", secret, now); err == nil && vb != nil || time.Now().After(deadline) {
			break
		}
	}
	if vb == nil {
		t.Fatalf("node b does not know the key: %v", err)
	}
	for range 3 {
		a.RecordUse(va, netip.MustParseAddr("192.0.2.1"), OutcomeOK, now)
	}
	b.RecordUse(vb, netip.MustParseAddr("192.0.2.2"), OutcomeOK, now.Add(time.Second))
	b.RecordUse(vb, netip.MustParseAddr("192.0.2.2"), OutcomeRateLimited, now.Add(2*time.Second))
	mustNil(t, a.Flush())
	mustNil(t, b.Flush())
	for name, s := range map[string]*Store{"a": a, "b": b} {
		u, err := s.Usage("acme", key.ID)
		mustNil(t, err)
		if u.Total != 5 || u.Outcomes["ok"] != 4 || u.Outcomes["rate_limited"] != 1 || len(u.PerMinute) != 1 {
			t.Errorf("node %s: usage %d %v, %d minutes", name, u.Total, u.Outcomes, len(u.PerMinute))
		}
		if u.LastUsedIP == nil || *u.LastUsedIP != "192.0.2.2" {
			t.Errorf("node %s: last used ip %v, want node b's (the later)", name, u.LastUsedIP)
		}
		k, err := s.GetKey("acme", key.ID)
		mustNil(t, err)
		if k.LastUsedAt == nil || !k.LastUsedAt.Equal(now.Add(time.Second)) {
			t.Errorf("node %s: last_used_at %v", name, k.LastUsedAt)
		}
	}
	// Each node wrote only under its own name.
	n := 0
	mustNil(t, a.kv.Scan([]byte(pKeyUsage), nil, func(k, _ []byte) bool {
		if !bytes.Contains(k, []byte("/node-a")) && !bytes.Contains(k, []byte("/node-b")) {
			t.Errorf("usage record %q names no node", k)
		}
		n++
		return true
	}))
	if n != 4 { // each node: totals + one hour
		t.Errorf("%d usage records, want 4", n)
	}
	// Deleting the key deletes every node's records.
	mustNil(t, a.DeleteKey("op", "acme", key.ID))
	mustNil(t, a.kv.Scan([]byte(pKeyUsage), nil, func(k, _ []byte) bool { t.Errorf("left after delete: %q", k); return true }))
}

// TestNodeUsageRecordsBounded: a key used every hour for 30 hours keeps at
// most usageSlots+1 small records on a node, and reads the same usage as
// on a single Pebble node.
func TestNodeUsageRecordsBounded(t *testing.T) {
	run := func(s *Store, clk *clock) (*KeyUsage, string) {
		enable(t, s, "acme")
		key, secret := mustKey(t, s, "acme", "alice", KeyInput{})
		for range 30 {
			now := clk.Now()
			v, _, err := s.Verify("acme", secret, now)
			mustNil(t, err)
			for m := range 5 {
				s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeOK, now.Add(time.Duration(m)*time.Minute))
			}
			mustNil(t, s.Flush())
			clk.Advance(time.Hour)
		}
		clk.Advance(-time.Hour)
		u, err := s.Usage("acme", key.ID)
		mustNil(t, err)
		return u, key.ID
	}
	clkP, clkE := newClock(), newClock()
	want, _ := run(memStore(t, clkP), clkP)
	e := memStore(t, clkE, func(o *Options) { o.KV, o.NodeID = newEtcdKV(t), "node-1" })
	got, id := run(e, clkE)
	// The usage endpoint covers the last 24 hours: 24 of the 30 hours.
	if got.Total != 120 || want.Total != 120 || len(got.PerMinute) != len(want.PerMinute) || len(got.PerMinute) != 24*5 {
		t.Fatalf("etcd node: total %d, %d minutes; pebble: total %d, %d minutes", got.Total, len(got.PerMinute), want.Total, len(want.PerMinute))
	}
	for i := range got.PerMinute {
		if !got.PerMinute[i].Time.Equal(want.PerMinute[i].Time) || got.PerMinute[i].Total != want.PerMinute[i].Total {
			t.Fatalf("minute %d: %+v, pebble %+v", i, got.PerMinute[i], want.PerMinute[i])
		}
	}
	if rec, err := e.usageRecord(id); err != nil || rec.Totals[OutcomeOK] != 150 {
		t.Fatalf("lifetime total on the etcd node: %+v %v, want 150", rec, err)
	}
	records, largest := 0, 0
	mustNil(t, e.kv.Scan(k(pKeyUsage+id, ""), nil, func(_, v []byte) bool {
		records++
		largest = max(largest, len(v))
		return true
	}))
	if records > int(usageSlots)+1 || records < int(usageSlots) {
		t.Errorf("%d usage records after 30 hours, want at most %d", records, usageSlots+1)
	}
	if largest > 1024 {
		t.Errorf("a usage record of %d bytes: a flush rewrites more than an hour", largest)
	}
}

// TestFlushSplitOnEtcd: a flush with more used keys than one etcd
// transaction takes is written in parts, all of it.
func TestFlushSplitOnEtcd(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = newEtcdKV(t), "node-1" })
	enable(t, s, "acme")
	ids := make([]string, etcdDefaultMaxTxnOps+50) // 2 usage records each: 3 transactions
	for i := range ids {
		ids[i] = fmt.Sprintf("key_%04d", i)
		v := &KeyView{ID: ids[i], Tenant: "acme"}
		s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
		s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeForbidden, clk.Now())
	}
	mustNil(t, s.Flush())
	for _, id := range ids {
		u, err := s.usageRecord(id)
		mustNil(t, err)
		if u == nil || u.Totals[OutcomeOK] != 1 || u.Totals[OutcomeForbidden] != 1 {
			t.Fatalf("%s after a split flush: %+v", id, u)
		}
	}
	if s.PendingUsage() != 0 {
		t.Fatalf("%d keys' usage still pending", s.PendingUsage())
	}
}
