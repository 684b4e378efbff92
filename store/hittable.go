package store

import (
	"math/rand/v2"
	"sync/atomic"
)

// hitTable is the lock-free front of the positive cache: a fixed array of
// view pointers indexed by the secret hash, two slots per bucket. A hit is
// two atomic loads (the stripe's generation and the slot) and the view's
// own fields: no lock, no write to memory another core uses. Ristretto's
// Get, on the other hand, takes a shard's read lock (a write to a cache
// line both cores share), probes a Go map, bumps its admission counters and
// queues the access for its policy goroutine: measured in the load profile
// at ~2 µs per request with 10k keys spread uniformly, against ~0.2 µs with
// one hot key, as each of those lines is cold.
//
// Ristretto remains the bounded cache that decides what stays: a view goes
// into the table when it is set in ristretto (before the Set, so that the
// rejection, which ristretto reports asynchronously, always comes after)
// or found there (and is looked up again after the put, in case it was
// evicted in between), and leaves it when ristretto evicts or rejects it
// (OnEvict, OnReject) or its secret is invalidated: the table holds no view
// that ristretto does not. Its policy learns of table hits by sampling: one
// hit in policySample also calls ristretto's Get, so hot keys keep counting
// as hot when the cache is full and must choose victims. Under churn (more
// keys than entries) the table holds only part of what ristretto does: a
// fill is put only into a free slot, and the slot its admission frees comes
// after; such views are answered by ristretto, and put on their first hit.
//
// The table decides nothing about admission: a view is used only when its
// secret hash and generation are current, exactly as for a ristretto hit
// (verifyCache, commit.go), so a stale or evicted view in a slot is a miss.
type hitTable struct {
	slots []atomic.Pointer[KeyView]
	mask  uint64 // buckets - 1
}

// policySample: one table hit in this many is also reported to ristretto's
// policy. A power of two.
const policySample = 16

// newHitTable sizes the table for a cache of entries views: buckets of two
// slots, at least as many buckets as entries (one pointer a slot: 2 MiB for
// the default 100k entries). With one bucket per entry a full cache leaves
// about 7 % of its views without a slot (Poisson, 0.76 views a bucket),
// answered by ristretto; with one bucket per two entries it was a fifth.
func newHitTable(entries int64) *hitTable {
	buckets := uint64(1)
	for int64(buckets) < entries {
		buckets <<= 1
	}
	return &hitTable{slots: make([]atomic.Pointer[KeyView], 2*buckets), mask: buckets - 1}
}

func (t *hitTable) bucket(ck uint64) *[2]atomic.Pointer[KeyView] {
	i := (ck & t.mask) * 2
	return (*[2]atomic.Pointer[KeyView])(t.slots[i : i+2])
}

// get returns the view cached for h under generation gen, or nil.
func (t *hitTable) get(h SecretHash, ck, gen uint64) *KeyView {
	b := t.bucket(ck)
	for i := range b {
		if v := b[i].Load(); v != nil && v.gen == gen && v.hash == h {
			return v
		}
	}
	return nil
}

// put stores v (cached under ck): in the slot of an older view of the same
// secret, or an empty one, or else, with evict, in one chosen by a bit of
// the hash that the index does not use. A fill does not evict: with more
// keys than cache entries most fills are rejected by ristretto's admission
// policy, and would only push out views that ristretto holds; a view found
// in ristretto does. Concurrent puts may overwrite each other's views: each
// is then a miss that ristretto answers.
func (t *hitTable) put(ck uint64, v *KeyView, evict bool) {
	b := t.bucket(ck)
	for i := range b {
		if o := b[i].Load(); o == nil || o.hash == v.hash {
			leave(b[i].Swap(v), v)
			return
		}
	}
	if evict {
		leave(b[ck>>63].Swap(v), v)
	}
}

// leave is called for a view o that left the table (replaced by v, or
// removed with v nil): it drops o's pointer to its usage delta. Only views
// in the table keep one (usage.go), so that dropTaken, which walks the
// table, reaches every view whose delta a flush took, and no view outside
// keeps a taken delta alive. A request that still holds o re-attaches
// through the usage map.
func leave(o, v *KeyView) {
	if o != nil && o != v {
		o.use.Store(nil)
	}
}

// holds reports whether v is in the table (cached under ck).
func (t *hitTable) holds(ck uint64, v *KeyView) bool {
	b := t.bucket(ck)
	return b[0].Load() == v || b[1].Load() == v
}

// remove clears the slots holding v (a newer view of its secret stays).
func (t *hitTable) remove(ck uint64, v *KeyView) {
	b := t.bucket(ck)
	for i := range b {
		if b[i].CompareAndSwap(v, nil) {
			leave(v, nil)
		}
	}
}

// removeHash clears the slots holding any view of h.
func (t *hitTable) removeHash(h SecretHash) {
	b := t.bucket(h.cacheKey())
	for i := range b {
		if v := b[i].Load(); v != nil && v.hash == h && b[i].CompareAndSwap(v, nil) {
			leave(v, nil)
		}
	}
}

// sampled reports whether this table hit is one reported to ristretto's
// policy (rand's per-thread generator: no shared state).
func sampled() bool { return rand.Uint32()%policySample == 0 }

// cacheCounters count positive-cache hits and misses for CacheMetrics,
// striped so that the two cores seldom add to one cache line.
type cacheCounters [counterStripes]struct {
	hits, misses atomic.Uint64
	_            [64 - 16]byte
}

const counterStripes = 8

func (c *cacheCounters) hit()  { c[rand.Uint32()%counterStripes].hits.Add(1) }
func (c *cacheCounters) miss() { c[rand.Uint32()%counterStripes].misses.Add(1) }

func (c *cacheCounters) load() (hits, misses uint64) {
	for i := range c {
		hits += c[i].hits.Load()
		misses += c[i].misses.Load()
	}
	return hits, misses
}

// dropTaken points the views in the table whose usage delta a flush has
// taken (usage.go) away from it, so that a view idle since does not keep
// the delta alive. Views outside the table hold no delta (see leave), but
// for one that left the table between a request's check and its attach.
func (t *hitTable) dropTaken() {
	for i := range t.slots {
		if v := t.slots[i].Load(); v != nil {
			if d := v.use.Load(); d != nil && d.taken.Load() {
				v.use.CompareAndSwap(d, nil)
			}
		}
	}
}
