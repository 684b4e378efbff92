package store

import "sync/atomic"

// negTable is the lock-free front of the negative cache, as hitTable is of
// the positive one: the 401 path answers a repeated unknown secret with
// one atomic load instead of a guard stripe's read lock and ristretto's Get
// (its shard lock, map probe and access buffer), which the load profile
// put at ~0.45 µs of a ~2.4 µs rejection.
//
// A slot holds the last entry filled for its index and is overwritten by
// the next: the table bounds itself and admits nothing, so a flood of
// garbage only costs repeated unknown secrets their slots, and they are
// then answered by the ristretto negative cache behind it, whose admission
// policy keeps the frequent ones. An entry counts only with the secret's
// full hash, its stripe's current generation and before it expires: the
// same check as a ristretto entry (its TTL is the same too), so the
// argument of verifyCache and commit.go covers it.
type negTable struct {
	slots []atomic.Pointer[negEntry]
	mask  uint64
}

// negTableMax bounds the table (8 bytes a slot: 512 KiB).
const negTableMax = 1 << 16

// newNegTable sizes the table for a negative cache of entries: the next
// power of two, at most negTableMax.
func newNegTable(entries int64) *negTable {
	n := uint64(1)
	for int64(n) < entries && n < negTableMax {
		n <<= 1
	}
	return &negTable{slots: make([]atomic.Pointer[negEntry], n), mask: n - 1}
}

// known reports whether h is a cached unknown secret with generation gen
// at now (unix nanos).
func (t *negTable) known(h SecretHash, ck, gen uint64, now int64) bool {
	e := t.slots[ck&t.mask].Load()
	return e != nil && e.gen == gen && now < e.expires && e.hash == h
}

func (t *negTable) put(ck uint64, e *negEntry) { t.slots[ck&t.mask].Store(e) }

// remove drops h's entry, if its slot holds one (an invalidation frees it
// early; the generation already made it stale).
func (t *negTable) remove(h SecretHash, ck uint64) {
	s := &t.slots[ck&t.mask]
	if e := s.Load(); e != nil && e.hash == h {
		s.CompareAndSwap(e, nil)
	}
}
