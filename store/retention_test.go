package store

import (
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// batchKV records the size of every batch applied through it.
type batchKV struct {
	KV
	mu    sync.Mutex
	sizes []int
}

func (k *batchKV) Apply(b *Batch, sync bool) error {
	k.mu.Lock()
	k.sizes = append(k.sizes, b.Len())
	k.mu.Unlock()
	return k.KV.Apply(b, sync)
}

// addEvents writes n events of type typ for tenant at the clock's time.
func addEvents(t *testing.T, s *Store, now time.Time, tenant, typ string, n int) {
	t.Helper()
	var b Batch
	for range n {
		s.event(&b, now, tenant, typ, "gateway", "key_x", map[string]any{"forbidden": 1})
	}
	mustNil(t, s.kv.Apply(&b, true)) // a raw write: its effects are decoded from its keys
}

// TestEventRetention: with a fake clock, events older than the retention go
// (key.requests_denied summaries included), newer ones stay, in every
// tenant — also tenants whose ids sort around each other ("t", "t.x",
// "t0") — and the deletions come in bounded batches.
func TestEventRetention(t *testing.T) {
	kv := memPebble(t)
	bkv := &batchKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = bkv; o.EventPruneInterval = -1 })
	if s.retention != DefaultEventRetention {
		t.Fatalf("default retention %v", s.retention)
	}
	tenants := []string{DefaultTenant, "t", "t.x", "t0"}
	for _, id := range tenants[1:] {
		_, err := s.CreateTenant("op", TenantInput{ID: id})
		mustNil(t, err)
	}
	const manyOld = 2*pruneBatchSize + 17
	addEvents(t, s, clk.Now(), "t", "key.requests_denied", manyOld)
	addEvents(t, s, clk.Now(), "t0", "key.requests_denied", 3)
	old := map[string]int{}
	for _, id := range tenants {
		old[id] = len(allEvents(t, s, id, EventQuery{}))
	}

	clk.Advance(60 * 24 * time.Hour) // these stay: 31 days old at the end
	for _, id := range tenants {
		addEvents(t, s, clk.Now(), id, "key.requests_denied", 2)
	}
	clk.Advance(29 * 24 * time.Hour)
	// Nothing is due before the retention has passed.
	if n, err := s.PruneEvents(); err != nil || n != 0 {
		t.Fatalf("pruned %d (%v) at 89 days", n, err)
	}
	clk.Advance(2 * 24 * time.Hour) // the first ones are now 91 days old

	bkv.mu.Lock()
	bkv.sizes = nil
	bkv.mu.Unlock()
	n, err := s.PruneEvents()
	mustNil(t, err)
	want := 0
	for _, c := range old {
		want += c
	}
	if n != want {
		t.Fatalf("pruned %d events, want %d", n, want)
	}
	cutoff := clk.Now().Add(-DefaultEventRetention)
	for _, id := range tenants {
		evs := allEvents(t, s, id, EventQuery{})
		if len(evs) != 2 {
			t.Errorf("tenant %q: %d events left, want the 2 recent ones", id, len(evs))
		}
		for _, e := range evs {
			if e.Time.Before(cutoff) {
				t.Errorf("tenant %q: event of %v survived (cutoff %v)", id, e.Time, cutoff)
			}
		}
	}
	bkv.mu.Lock()
	sizes := bkv.sizes
	bkv.mu.Unlock()
	if len(sizes) < 3 {
		t.Errorf("%d events deleted in %d batches %v: want bounded batches", n, len(sizes), sizes)
	}
	for _, size := range sizes {
		if size > pruneBatchSize {
			t.Errorf("a batch of %d deletions (limit %d)", size, pruneBatchSize)
		}
	}
	// A second pass finds nothing.
	if n, err := s.PruneEvents(); err != nil || n != 0 {
		t.Fatalf("second pass pruned %d (%v)", n, err)
	}
}

// TestEventRetentionOptions: a negative retention keeps events forever,
// a retention under a day is refused, a configured one is used.
func TestEventRetentionOptions(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.EventRetention = -1; o.EventPruneInterval = -1 })
	addEvents(t, s, clk.Now(), DefaultTenant, "key.requests_denied", 5)
	clk.Advance(10 * 365 * 24 * time.Hour)
	if n, err := s.PruneEvents(); err != nil || n != 0 {
		t.Fatalf("kept-forever store pruned %d (%v)", n, err)
	}

	if _, err := Open(Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1, EventRetention: time.Hour}); err == nil {
		t.Fatal("a retention of 1h was accepted")
	}

	clk = newClock()
	s = memStore(t, clk, func(o *Options) { o.EventRetention = 2 * 24 * time.Hour; o.EventPruneInterval = -1 })
	addEvents(t, s, clk.Now(), DefaultTenant, "test.old", 5)
	clk.Advance(2*24*time.Hour + time.Second)
	if n, err := s.PruneEvents(); err != nil || n < 5 {
		t.Fatalf("pruned %d (%v), want at least the 5 old events", n, err)
	}
}

// TestEventRetentionBackground: the pass runs by itself, off the request
// path, and Close waits for it.
func TestEventRetentionBackground(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.EventPruneInterval = time.Millisecond })
	addEvents(t, s, clk.Now(), DefaultTenant, "key.requests_denied", 50)
	clk.Advance(DefaultEventRetention + time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for len(allEvents(t, s, DefaultTenant, EventQuery{})) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the background pass did not prune within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mustNil(t, s.Close())
}
