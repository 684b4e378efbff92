package store

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/yl2chen/cidranger"
)

// Verdict of Verify.
type Verdict uint8

const (
	VerdictValid   Verdict = iota
	VerdictInvalid         // malformed, bad checksum, unknown, or another tenant's
	VerdictRevoked
	VerdictExpired
)

// KeyView is what the gateway needs about a key, built once when the record
// is loaded and shared read-only by every request that hits the cache.
//
// The fields are ordered by use: what Verify reads of a cache hit comes
// first, in the view's first two cache lines, then what the gateway reads
// of an admitted request; with many keys each view is cold in the CPU
// caches, and every line it spans costs a miss.
type KeyView struct {
	// The secret hash and stripe generation the view was cached under (see
	// verifyCache). They live in the view rather than in a wrapper so that
	// a cached key is one heap object less for the collector to mark.
	hash    SecretHash
	gen     uint64
	Tenant  string
	Revoked bool
	// graceUntil is set for a rotated-out secret: from then on the secret
	// is no longer one of the key's (Verify answers VerdictInvalid).
	graceUntil time.Time
	// ValidUntil is the expiry (zero: none); for a rotated-out secret in its
	// grace period, the earlier of the key's expiry and the grace end.
	ValidUntil time.Time
	// Allow is nil when every client IP is allowed.
	Allow *Allowlist
	// use is the key's buffered usage that requests verified with this
	// view count in (usage.go); nil until one does.
	use atomic.Pointer[usageDelta]
	ID  string
	// Extra is what Options.Decorate returned for this view (the gateway
	// precomputes its placeholders there, once per cache fill).
	Extra              any
	Group, Name, Owner string
}

// Allowlist is an immutable set of client networks.
type Allowlist struct {
	prefixes []netip.Prefix   // linear scan: fastest for short lists
	ranger   cidranger.Ranger // for long lists; built once, never mutated
}

// allowlistRangerMin is where a trie beats scanning a slice.
const allowlistRangerMin = 16

func newAllowlist(entries []string) (*Allowlist, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	a := &Allowlist{}
	if len(entries) >= allowlistRangerMin {
		a.ranger = cidranger.NewPCTrieRanger()
	}
	for _, e := range entries {
		p, err := parsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("allowlist entry %q: %w", e, err)
		}
		if a.ranger != nil {
			_, n, _ := net.ParseCIDR(p.String())
			if err := a.ranger.Insert(cidranger.NewBasicRangerEntry(*n)); err != nil {
				return nil, err
			}
		} else {
			a.prefixes = append(a.prefixes, p)
		}
	}
	return a, nil
}

// Contains reports whether ip (IPv4-mapped addresses are unmapped, an IPv6
// zone is ignored) is allowed, the same way for short and long lists.
// A nil Allowlist allows every address.
func (a *Allowlist) Contains(ip netip.Addr) bool {
	if a == nil {
		return true
	}
	ip = ip.Unmap().WithZone("") // entries have no zone; fe80::1%eth0 is in fe80::/10
	if a.ranger != nil {
		ok, err := a.ranger.Contains(net.IP(ip.AsSlice()))
		return ok && err == nil
	}
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// verifyCache holds verified records (positive) and unknown secrets
// (negative, small, short TTL, so garbage cannot evict good keys).
//
// Stale fills are prevented by generations, not by ristretto's ordering
// (PITFALLS 13, 14): every entry records the generation of its hash's stripe
// read BEFORE the store read that produced it, and every committed write to a
// hash bumps that stripe's generation AFTER the commit and before the writer
// returns (Store.commit; commit.go states the whole guarantee). A fill that raced a write therefore carries an old generation and
// is ignored on hit; a fill whose generation is current read after the write.
//
// Hits are answered from table (hittable.go), in front of pos, without a
// lock; everything else goes through ristretto under a guard stripe. The
// table holds the same views as pos and its hits are checked the same way
// (hash and generation), so the argument above covers it.
type verifyCache struct {
	pos   *ristretto.Cache[uint64, *KeyView]
	neg   *ristretto.Cache[uint64, *negEntry]
	table *hitTable
	negs  *negTable // the lock-free front of neg
	count cacheCounters
	ttl   time.Duration
	gens  [genStripes]atomic.Uint64
}

const genStripes = 4096

type negEntry struct {
	hash    SecretHash
	gen     uint64
	expires int64 // unix nanos, by the clock Verify is given (negTable)
}

func newVerifyCache(entries, negEntries int64, ttl time.Duration) (*verifyCache, error) {
	table := newHitTable(entries)
	cfg := ristrettoConfig[*KeyView](entries)
	// What ristretto drops leaves the table too (hittable.go).
	cfg.OnEvict = func(it *ristretto.Item[*KeyView]) { table.remove(it.Key, it.Value) }
	cfg.OnReject = cfg.OnEvict
	pos, err := ristretto.NewCache(cfg)
	if err != nil {
		return nil, fmt.Errorf("verify cache: %w", err)
	}
	negCfg := ristrettoConfig[*negEntry](negEntries)
	// The negative cache is small and flooded by garbage: its admission
	// policy must learn of a repeated unknown secret quickly, so its access
	// batches stay at ristretto's recommended 64.
	negCfg.BufferItems = 64
	neg, err := ristretto.NewCache(negCfg)
	if err != nil {
		pos.Close()
		return nil, fmt.Errorf("negative cache: %w", err)
	}
	return &verifyCache{pos: pos, neg: neg, table: table, negs: newNegTable(negEntries), ttl: ttl}, nil
}

// stripeOf is the store's one striping function: the generation stripe of
// a secret, and (its low bits) the guard stripe that keeps Close out while
// the caches are used for it. Its hash is uniform, so any of its bits do.
func stripeOf(h SecretHash) uint32 { return uint32(h.cacheKey() % genStripes) }

func (c *verifyCache) gen(h SecretHash) *atomic.Uint64 {
	return &c.gens[stripeOf(h)]
}

// invalidate runs after a write to h has committed (commit.go). Bumping the
// generation is what makes it correct; the deletes only free the entries
// early. Once the store is closing the caches are left alone (ristretto
// must not be used while it closes).
func (s *Store) invalidate(h SecretHash) {
	c := s.vcache
	c.gen(h).Add(1)
	c.table.removeHash(h)
	c.negs.remove(h, h.cacheKey())
	g := s.guard(h)
	g.RLock()
	defer g.RUnlock()
	if s.closed.Load() {
		return
	}
	c.pos.Del(h.cacheKey())
	c.neg.Del(h.cacheKey())
}

// guardStripes lock out Close while the caches are in use: Verify holds a
// stripe for reading (its own, chosen by the hash, so cores verifying
// different keys do not share a lock word), Close takes every stripe for
// writing once before it closes the caches.
const guardStripes = 16

type guardStripe struct {
	sync.RWMutex
	_ [64 - 24]byte // one cache line each
}

func (s *Store) guard(h SecretHash) *guardStripe {
	return &s.guards[stripeOf(h)%guardStripes] // genStripes is a multiple of guardStripes
}

// drainGuards waits for every Verify that saw the store open to finish.
func (s *Store) drainGuards() {
	for i := range s.guards {
		s.guards[i].Lock()
		//lint:ignore SA2001 empty on purpose: taking the write lock only waits for readers
		s.guards[i].Unlock()
	}
}

func (c *verifyCache) close() {
	c.pos.Close()
	c.neg.Close()
}

// Wait blocks until pending cache writes are applied (tests and benchmarks).
func (s *Store) Wait() {
	g := &s.guards[0]
	g.RLock()
	defer g.RUnlock()
	if s.closed.Load() {
		return
	}
	s.vcache.pos.Wait()
	s.vcache.neg.Wait()
}

// CacheMetrics returns hits and misses of the positive cache: lookups
// answered with a cached view, and lookups that found none (an unknown
// secret answered by the negative cache counts as a miss).
func (s *Store) CacheMetrics() (hits, misses uint64) { return s.vcache.count.load() }

// Verify checks a presented secret for the tenant. It rejects malformed
// secrets before any lookup (for a tenant with imported keys: secrets that
// can be no key's, see import.go), answers from the cache when it can, and reads
// the store at most once on a miss. The error is non-nil only when the store
// failed: the caller must fail closed.
func (s *Store) Verify(tenant, secret string, now time.Time) (*KeyView, Verdict, error) {
	if s.live != nil && !s.live.admitting() {
		return nil, VerdictInvalid, errStale // cut off from etcd (liveness.go)
	}
	var h SecretHash
	if WellFormed(KeyPrefix, secret) {
		h = s.hasher.hash(secret)
	} else {
		// A secret of a foreign format is looked up only for a tenant
		// with imported keys (import.go); for every other tenant it is
		// turned away here, before any hashing or cache.
		if !s.HasImportedKeys(tenant) || !importableSecret(secret) {
			return nil, VerdictInvalid, nil
		}
		h = s.hasher.hashImported(tenant, secret)
	}
	if s.closed.Load() {
		return nil, VerdictInvalid, ErrClosed
	}
	view, err := s.lookup(h, now)
	if err != nil {
		return nil, VerdictInvalid, err
	}
	if view == nil || view.Tenant != tenant {
		return nil, VerdictInvalid, nil
	}
	if !view.graceUntil.IsZero() && !now.Before(view.graceUntil) {
		return nil, VerdictInvalid, nil // rotated out, grace period over
	}
	if view.Revoked {
		return view, VerdictRevoked, nil
	}
	if !view.ValidUntil.IsZero() && !now.Before(view.ValidUntil) {
		return view, VerdictExpired, nil
	}
	return view, VerdictValid, nil
}

// lookup returns the view for a hash, or nil when no key has it. A hit in
// either table takes no lock: the tables are plain memory, which Close
// leaves alone; everything that uses ristretto holds the hash's guard
// stripe. now dates negative entries.
func (s *Store) lookup(h SecretHash, now time.Time) (*KeyView, error) {
	c := s.vcache
	ck := h.cacheKey()
	gen := c.gen(h).Load() // before any read that may fill the cache
	nowNano := now.UnixNano()
	// Unknown secrets first, as below: the negative table is small and
	// warm, the hit table's slot for an unknown secret a cold line.
	if c.negs.known(h, ck, gen, nowNano) {
		c.count.miss()
		return nil, nil
	}
	if v := c.table.get(h, ck, gen); v != nil {
		c.count.hit()
		if sampled() {
			s.touchPolicy(h, ck)
		}
		return v, nil
	}
	g := s.guard(h)
	g.RLock()
	defer g.RUnlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	// The negative cache first: an unknown secret (the 401 path) is then
	// answered without a probe of ristretto's positive shards, while a
	// known one is nearly always a table hit. Entries of both with the
	// current generation coexist only while a write to the secret commits,
	// before its bump makes both stale: either answer is then one the
	// guarantee allows (commit.go), so the order changes nothing it says.
	if e, ok := c.neg.Get(ck); ok && e.gen == gen && e.hash == h {
		c.count.miss()
		c.negs.put(ck, e)
		return nil, nil
	}
	if v, ok := c.pos.Get(ck); ok && v.gen == gen && v.hash == h {
		c.count.hit()
		c.table.put(ck, v, true)
		// Ristretto may have evicted v between the Get and the put, its
		// OnEvict finding nothing to remove: look again (without telling
		// its policy), so the table never keeps a view ristretto dropped.
		if _, still := c.pos.GetTTL(ck); !still {
			c.table.remove(ck, v)
		}
		return v, nil
	}
	c.count.miss()
	view, err := s.loadView(h)
	if err != nil {
		return nil, err
	}
	if view == nil {
		e := &negEntry{hash: h, gen: gen, expires: nowNano + int64(c.ttl)}
		c.negs.put(ck, e)
		c.neg.SetWithTTL(ck, e, 1, c.ttl)
		return nil, nil
	}
	view.hash, view.gen = h, gen
	c.table.put(ck, view, false) // before Set: a rejection comes after it
	if !c.pos.Set(ck, view, 1) {
		c.table.remove(ck, view) // dropped: ristretto's buffer was full
	}
	return view, nil
}

// touchPolicy reports a table hit to ristretto's admission policy.
func (s *Store) touchPolicy(h SecretHash, ck uint64) {
	g := s.guard(h)
	g.RLock()
	if !s.closed.Load() {
		s.vcache.pos.Get(ck)
	}
	g.RUnlock()
}

// loadView reads the record for h (one store read; a rotated-out secret in
// its grace period costs a second one).
func (s *Store) loadView(h SecretHash) (*KeyView, error) {
	var rec keyRecord
	if err := s.getKeyRecord(h, &rec); err != nil {
		if errors.Is(err, errKVNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("verify: %w", err)
	}
	var graceUntil time.Time
	if rec.isGrace() {
		graceUntil = *rec.GraceUntil
		if rec.GraceOf == nil {
			return nil, nil
		}
		var cur keyRecord
		if err := s.getKeyRecord(*rec.GraceOf, &cur); err != nil {
			if errors.Is(err, errKVNotFound) {
				return nil, nil
			}
			return nil, fmt.Errorf("verify: %w", err)
		}
		rec = cur
	}
	allow, err := newAllowlist(rec.IPAllowlist)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", rec.ID, err)
	}
	// Tenant and group names are shared by many views: interned, the
	// tenant compare of every hit reads memory that stays in the CPU
	// caches instead of each view's own copy.
	v := &KeyView{
		ID: rec.ID, Tenant: unique.Make(rec.Tenant).Value(), Name: rec.Name, Owner: rec.Owner,
		Group: unique.Make(rec.Group).Value(), Revoked: rec.RevokedAt != nil, Allow: allow,
	}
	if rec.ExpiresAt != nil {
		v.ValidUntil = *rec.ExpiresAt
	}
	if !graceUntil.IsZero() && (v.ValidUntil.IsZero() || graceUntil.Before(v.ValidUntil)) {
		v.ValidUntil = graceUntil
	}
	v.graceUntil = graceUntil
	if s.decorate != nil {
		v.Extra = s.decorate(v)
	}
	return v, nil
}
