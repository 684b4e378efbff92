package store

import (
	"net/netip"
	"strconv"
	"sync"
	"testing"
)

// tableViews returns the views in the hit table.
func tableViews(s *Store) []*KeyView {
	var out []*KeyView
	for i := range s.vcache.table.slots {
		if v := s.vcache.table.slots[i].Load(); v != nil {
			out = append(out, v)
		}
	}
	return out
}

// TestHitTableFollowsRistretto: with far more keys than cache entries, the
// table holds only views that ristretto holds too (what ristretto evicts or
// rejects leaves the table), so it never keeps more than the cache bound;
// and a key found in ristretto is answered from the table afterwards.
func TestHitTableFollowsRistretto(t *testing.T) {
	clk := newClock()
	const entries = 64
	s := memStore(t, clk, func(o *Options) { o.CacheEntries = entries })
	enable(t, s, DefaultTenant)
	var secrets []string
	for i := range 600 {
		_, sec := mustKey(t, s, DefaultTenant, "owner"+strconv.Itoa(i%100), KeyInput{})
		secrets = append(secrets, sec)
	}
	check := func(stage string) []*KeyView {
		t.Helper()
		views := tableViews(s)
		if len(views) > entries {
			t.Fatalf("%s: %d views in the table of a %d-entry cache", stage, len(views), entries)
		}
		for _, v := range views {
			if got, ok := s.vcache.pos.Get(v.hash.cacheKey()); !ok || got != v {
				t.Fatalf("%s: the table holds a view ristretto does not (found %v)", stage, ok)
			}
		}
		return views
	}
	for round := range 3 { // fills, admissions, rejections and evictions
		for _, sec := range secrets {
			if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
				t.Fatal(vname(v))
			}
		}
		s.Wait()
		check("round " + strconv.Itoa(round))
	}
	// The keys ristretto holds now are hits: each goes into the table.
	var held []string
	for _, sec := range secrets {
		if _, ok := s.vcache.pos.Get(s.hasher.hash(sec).cacheKey()); ok {
			held = append(held, sec)
		}
	}
	for _, sec := range held {
		if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
			t.Fatal(vname(v))
		}
	}
	s.Wait()
	if views := check("after hits"); len(held) == 0 || len(views) == 0 {
		t.Fatalf("%d keys held by ristretto, %d of them in the table after a hit", len(held), len(views))
	}
	h0, _ := s.CacheMetrics()
	for _, sec := range held {
		verdict(t, s, DefaultTenant, sec, clk.Now())
	}
	if h1, _ := s.CacheMetrics(); h1-h0 != uint64(len(held)) {
		t.Fatalf("%d hits of %d cached keys", h1-h0, len(held))
	}
}

// TestHitTableStaleViewIgnored: a view in the table whose generation is no
// longer its secret's (a fill that raced a revoke, PITFALLS 14) never
// admits, and a revoke clears its secret's slots.
func TestHitTableStaleViewIgnored(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	h := s.hasher.hash(secret)
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictValid {
		t.Fatal(vname(v))
	}
	cached := s.vcache.table.get(h, h.cacheKey(), s.vcache.gen(h).Load())
	if cached == nil {
		t.Fatal("setup: the view is not in the table after a fill")
	}
	gen := s.vcache.gen(h).Load() // the reader's generation, before its read
	stale, err := s.loadView(h)   // the reader's read: active
	mustNil(t, err)
	_, err = s.RevokeKey("op", DefaultTenant, key.ID)
	mustNil(t, err)
	if len(tableViews(s)) != 0 {
		t.Fatal("the revoke left the secret's view in the table")
	}
	stale.hash, stale.gen = h, gen
	s.vcache.table.put(h.cacheKey(), stale, true) // the stale fill lands
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictRevoked {
		t.Fatalf("stale table entry admitted: %s", vname(v))
	}
}

// TestRecordUseConcurrentFlushes: requests counting on shared cached views
// while flushes take their deltas lose no request and count none twice:
// a request that finds its view's delta taken counts in the next one.
func TestRecordUseConcurrentFlushes(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	const keys, workers, perWorker = 4, 4, 3000
	ids := make([]string, keys)
	views := make([]*KeyView, keys)
	for i := range ids {
		key, sec := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
		v, verd, err := s.Verify(DefaultTenant, sec, clk.Now())
		if err != nil || verd != VerdictValid {
			t.Fatal(verd, err)
		}
		ids[i], views[i] = key.ID, v
	}
	ip := netip.MustParseAddr("192.0.2.1")
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				s.RecordUse(views[(w+i)%keys], ip, OutcomeOK, clk.Now())
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	flushes := 0
	for running := true; running; flushes++ {
		select {
		case <-done:
			running = false
		default:
		}
		mustNil(t, s.Flush())
	}
	var total uint64
	for _, id := range ids {
		u, err := s.Usage(DefaultTenant, id)
		mustNil(t, err)
		total += u.Total
	}
	if total != workers*perWorker {
		t.Fatalf("%d requests counted over %d flushes, want %d", total, flushes, workers*perWorker)
	}
	for _, v := range views {
		if v.use.Load() != nil {
			t.Fatal("a flush left a cached view pointing to a taken delta")
		}
	}
}

// TestUsageDeltaOnlyOnTableViews: only a view in the hit table points to
// its usage delta; one that leaves the table (evicted, replaced, removed)
// drops the pointer and counts through the usage map, so that no view a
// flush cannot reach keeps a taken delta alive. Nothing is lost either way.
func TestUsageDeltaOnlyOnTableViews(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	v, verd, err := s.Verify(DefaultTenant, secret, clk.Now())
	if err != nil || verd != VerdictValid {
		t.Fatal(verd, err)
	}
	ip := netip.MustParseAddr("192.0.2.1")
	s.RecordUse(v, ip, OutcomeOK, clk.Now())
	if v.use.Load() == nil {
		t.Fatal("a view in the table does not point to its delta")
	}
	s.vcache.table.remove(v.hash.cacheKey(), v) // as ristretto's OnEvict does
	if v.use.Load() != nil {
		t.Fatal("a view that left the table still points to its delta")
	}
	s.RecordUse(v, ip, OutcomeOK, clk.Now())
	if v.use.Load() != nil {
		t.Fatal("a view outside the table was pointed to its delta")
	}
	mustNil(t, s.Flush())
	u, err := s.Usage(DefaultTenant, key.ID)
	mustNil(t, err)
	if u.Total != 2 {
		t.Fatalf("%d requests counted, want 2", u.Total)
	}
}
