package store

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome of a gateway request made with an identified key.
type Outcome uint8

const (
	OutcomeOK Outcome = iota
	OutcomeRevoked
	OutcomeExpired
	OutcomeDisabled
	OutcomeIPNotAllowed
	OutcomeForbidden
	OutcomeRateLimited
	numOutcomes
)

// OutcomeNames are the spec's codes ("ok" for admitted requests).
var OutcomeNames = [numOutcomes]string{"ok", "key_revoked", "key_expired", "api_keys_disabled", "ip_not_allowed", "forbidden", "rate_limited"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return OutcomeNames[o]
	}
	return "unknown"
}

// usageWindow is how far back per-minute counts are kept.
const usageWindow = 24 * time.Hour

type minuteCount struct {
	Minute int64               `json:"m"` // unix minutes
	Counts [numOutcomes]uint64 `json:"c"`
}

// usageRecord is what ku/<id> holds.
type usageRecord struct {
	LastUsedAt *time.Time          `json:"last_used_at,omitempty"`
	LastUsedIP string              `json:"last_used_ip,omitempty"`
	Totals     [numOutcomes]uint64 `json:"totals"`
	Minutes    []minuteCount       `json:"minutes"`
}

// usageBuffer collects last-used and counters in memory; the request path
// never writes to the store. A key's buffered usage is one usageDelta, found
// by key id in a sharded map; the cached view a request was verified with
// keeps a pointer to it (KeyView.use), so a request counts with one lock of
// its own delta and no map lookup, hashing or string compare (each of
// which missed the CPU caches with 10k keys spread uniformly). The map is
// looked up once per view and flush: when a view has no delta yet, or the
// one it points to was taken by a flush (or its key deleted), in which case
// the view is pointed at the map's current one (attach).
//
// While the store cannot be written (disk full) failed flushes put their
// deltas back, so the buffer grows: by one last use per used key (bounded by
// the key set) and one per-minute count per key and minute. The per-minute
// counts are bounded by limit; beyond it a request still counts in its
// key's totals and last use but its per-minute count is dropped (dropped
// counts them).
type usageBuffer struct {
	shards [64]usageShard
	seed   maphash.Seed

	limit   int64
	minutes atomic.Int64  // per-minute counts buffered
	dropped atomic.Uint64 // requests whose per-minute count was dropped
	// inFlight counts keys a flush has taken and not yet written or put
	// back (PendingUsage counts them).
	inFlight atomic.Int64

	// deleted holds keys deleted recently, with the flush count at the
	// time: Flush writes usage blindly (Batch.Merge), so without this a use
	// recorded by a request that verified just before the delete would
	// recreate the key's usage record (see also Store.sweepDeleted). Its
	// own lock: local deletes forget under Store.wmu, another node's (the
	// KV's watch goroutine) without it.
	dmu     sync.Mutex
	deleted map[string]uint64
	flushes uint64
}

type usageShard struct {
	mu sync.Mutex // guards m; taken before a delta's own mu
	m  map[string]*usageDelta
	_  [64 - 16]byte // one cache line each: both cores write shards on every request
}

type usageDelta struct {
	// mu guards the fields below while the delta is in a shard's map (or
	// a view points to it); whoever removes it from the map (take, forget)
	// sets taken under mu, and owns it from then on.
	mu      sync.Mutex
	taken   atomic.Bool // also read without mu, to drop views' stale pointers
	used    bool
	minutes []minuteCount // starts as first[:0]: one allocation per delta
	at      time.Time
	ip      netip.Addr
	first   [1]minuteCount
	tenant  string
	// unbucketed counts requests that have no per-minute count (the buffer
	// was full, or the minute left the usage window while it waited): they
	// still add to the key's totals and denied-request events.
	unbucketed [numOutcomes]uint64
}

// defaultUsageBufferLimit is the default bound of buffered per-minute
// counts: about 100 bytes each, a day of a 700 keys used every minute.
const defaultUsageBufferLimit = 1_000_000

func newUsageBuffer(limit int) *usageBuffer {
	u := &usageBuffer{deleted: map[string]uint64{}, seed: maphash.MakeSeed(), limit: int64(limit)}
	for i := range u.shards {
		u.shards[i].m = map[string]*usageDelta{}
	}
	return u
}

func (u *usageBuffer) shard(id string) *usageShard {
	// maphash is the runtime's AES-based string hash: a byte-at-a-time
	// FNV loop over the id was most of RecordUse's cost.
	return &u.shards[maphash.String(u.seed, id)%uint64(len(u.shards))]
}

func newUsageDelta(tenant string) *usageDelta {
	d := &usageDelta{tenant: tenant}
	d.minutes = d.first[:0]
	return d
}

// RecordUse counts a request of an identified key; an admitted one also
// sets last-used time and client IP. Memory only: Flush writes it.
func (s *Store) RecordUse(v *KeyView, ip netip.Addr, o Outcome, now time.Time) {
	u := s.usage
	for {
		d := v.use.Load()
		if d == nil {
			d = u.attach(v, s.vcache.table.holds(v.hash.cacheKey(), v))
		}
		d.mu.Lock()
		if d.taken.Load() {
			// Flushed (or the key deleted) since v pointed to it: count in
			// the map's current delta.
			d.mu.Unlock()
			v.use.CompareAndSwap(d, nil)
			continue
		}
		u.count(d, ip, o, now)
		d.mu.Unlock()
		return
	}
}

// attach returns the delta of v's key in the map (a new one if none) and,
// for a view in the hit table (keep), points v to it, unless another
// request did meanwhile. Views outside the table are not pointed to their
// delta: a flush could not reach them to point them away from it again
// (hittable.go, dropTaken), and each would keep a taken delta alive; they
// look the map up on every request, as every view did before.
func (u *usageBuffer) attach(v *KeyView, keep bool) *usageDelta {
	sh := u.shard(v.ID)
	sh.mu.Lock()
	d := sh.m[v.ID]
	if d == nil {
		d = newUsageDelta(v.Tenant)
		sh.m[v.ID] = d
	}
	sh.mu.Unlock()
	if keep {
		v.use.CompareAndSwap(nil, d)
	}
	return d
}

// count adds one request to d; the caller holds d.mu.
func (u *usageBuffer) count(d *usageDelta, ip netip.Addr, o Outcome, now time.Time) {
	minute := now.Unix() / 60
	n := len(d.minutes)
	switch {
	case n > 0 && d.minutes[n-1].Minute == minute:
		d.minutes[n-1].Counts[o]++
	case u.minutes.Load() < u.limit:
		u.minutes.Add(1)
		d.minutes = append(d.minutes, minuteCount{Minute: minute})
		d.minutes[n].Counts[o]++
	default: // full: the store has not been writable for a long while
		d.unbucketed[o]++
		u.dropped.Add(1)
	}
	if o == OutcomeOK {
		d.used, d.at, d.ip = true, now, ip
	}
}

// release marks d, just removed from its shard's map by the caller, as
// taken: requests no longer count in it, and the views that point to it
// move to the map's current delta on their next request.
func (d *usageDelta) release() {
	d.mu.Lock()
	d.taken.Store(true)
	d.mu.Unlock()
}

type lastUse struct {
	at time.Time
	ip string
}

// lastUse is the pending (not yet flushed) last use of a key, or nil.
func (u *usageBuffer) lastUse(id string) *lastUse {
	sh := u.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if d := sh.m[id]; d != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.used {
			return &lastUse{at: d.at, ip: d.ip.String()}
		}
	}
	return nil
}

func (u *usageBuffer) pending(id string) []minuteCount {
	sh := u.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if d := sh.m[id]; d != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		return append([]minuteCount(nil), d.minutes...)
	}
	return nil
}

// forget drops a deleted key's buffered usage and keeps the next two
// flushes from writing any for it.
func (u *usageBuffer) forget(id string) {
	sh := u.shard(id)
	sh.mu.Lock()
	if d := sh.m[id]; d != nil {
		delete(sh.m, id)
		d.release()
		u.minutes.Add(-int64(len(d.minutes)))
	}
	sh.mu.Unlock()
	u.dmu.Lock()
	u.deleted[id] = u.flushes
	u.dmu.Unlock()
}

// skipDeleted removes keys deleted recently from deltas and forgets the
// deletions old enough that no request can still record a use: the one
// that verified just before a delete records it right after, long before
// two flush intervals pass. The caller holds Store.fmu.
func (u *usageBuffer) skipDeleted(deltas map[string]*usageDelta) {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	u.flushes++
	for id, at := range u.deleted {
		delete(deltas, id)
		if u.flushes > at+2 {
			delete(u.deleted, id)
		}
	}
}

// deletedOf returns those of ids that were deleted recently, each once.
func (u *usageBuffer) deletedOf(ids []string) []string {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	var out []string
	for i, id := range ids {
		if _, ok := u.deleted[id]; ok && (i == 0 || ids[i-1] != id) {
			out = append(out, id)
		}
	}
	return out
}

// take removes every buffered delta (released: see RecordUse) and counts
// them in inFlight, which the caller decreases once they are written or
// put back. The views that still point to one are pointed away by
// dropTaken.
func (u *usageBuffer) take() map[string]*usageDelta {
	out := map[string]*usageDelta{}
	for i := range u.shards {
		sh := &u.shards[i]
		sh.mu.Lock()
		if len(sh.m) > 0 {
			n := 0
			for id, d := range sh.m {
				d.release()
				out[id] = d
				n += len(d.minutes)
			}
			// The next period uses about as many keys: sized, the map
			// does not grow through every doubling again.
			u.inFlight.Add(int64(len(sh.m))) // before the map is out of sight
			sh.m = make(map[string]*usageDelta, len(sh.m))
			u.minutes.Add(-int64(n))
		}
		sh.mu.Unlock()
	}
	return out
}

// restore puts back the deltas of a flush that failed, merged with what was
// recorded since. Minutes that left the usage window keep counting only in
// the totals; beyond the buffer's limit the oldest minutes of the restored
// key are dropped the same way (and counted in dropped).
func (u *usageBuffer) restore(deltas map[string]*usageDelta, now time.Time) {
	for id, d := range deltas {
		kept := mergeMinutes(nil, d.minutes, now)
		unbucket(d, d.minutes, kept)
		d.minutes = kept
		sh := u.shard(id)
		sh.mu.Lock()
		cur := sh.m[id]
		if cur == nil {
			// d stays taken (views that point to it re-attach): its
			// counts go into a new delta, which requests count in too.
			cur = newUsageDelta(d.tenant)
			sh.m[id] = cur
		}
		cur.mu.Lock()
		before := len(cur.minutes)
		merged := mergeMinutes(d.minutes, cur.minutes, now)
		unbucket(cur, append(append([]minuteCount(nil), d.minutes...), cur.minutes...), merged)
		cur.minutes = merged
		for o, n := range d.unbucketed {
			cur.unbucketed[o] += n
		}
		if d.used && (!cur.used || d.at.After(cur.at)) {
			cur.used, cur.at, cur.ip = true, d.at, d.ip
		}
		total := u.minutes.Add(int64(len(cur.minutes) - before))
		for total > u.limit && len(cur.minutes) > 0 {
			for o, n := range cur.minutes[0].Counts {
				cur.unbucketed[o] += n
				u.dropped.Add(n)
			}
			cur.minutes = cur.minutes[1:]
			total = u.minutes.Add(-1)
		}
		cur.mu.Unlock()
		sh.mu.Unlock()
	}
}

// unbucket adds to d's unbucketed counts whatever mergeMinutes dropped from
// in (minutes older than the usage window) to make out.
func unbucket(d *usageDelta, in, out []minuteCount) {
	var diff [numOutcomes]uint64
	for _, m := range in {
		for o, n := range m.Counts {
			diff[o] += n
		}
	}
	for _, m := range out {
		for o, n := range m.Counts {
			diff[o] -= n
		}
	}
	for o, n := range diff {
		d.unbucketed[o] += n
	}
}

func (s *Store) flushLoop(every time.Duration) {
	defer close(s.flushDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.flushTick(every)
		}
	}
}

// flushLogPeriod is how often a flusher that keeps failing says so again.
const flushLogPeriod = time.Minute

// flushTick runs one background flush. A failure is logged once, then
// summarised at most every flushLogPeriod, and the recovery once; a panic
// (a bug) is logged, never raised: it would end the process.
func (s *Store) flushTick(every time.Duration) {
	defer func() {
		if r := recover(); r != nil {
			s.flushes.failures.Add(1)
			s.log.Errorf("usage flush panicked (recovered; the flusher goes on): %v", r)
		}
	}()
	err := s.Flush()
	if err == nil {
		if n := s.flushes.failing.Swap(0); n > 0 {
			s.flushLog.reset("flush")
			s.log.Infof("usage flush: written again after %d failed attempts; the buffered usage is stored", n)
		}
		return
	}
	n := s.flushes.failing.Add(1)
	ok, suppressed := s.flushLog.allow("flush")
	if !ok {
		return
	}
	if n == 1 {
		s.log.Errorf("usage flush: %v; usage and last-used times stay in memory and are retried every %v", err, every)
		return
	}
	s.log.Errorf("usage flush: still failing after %d attempts (%d since the last report): %v; "+
		"%d keys' usage in memory, per-minute counts of %d requests dropped so far (buffer limit %d)",
		n, suppressed+1, err, s.PendingUsage(), s.usage.dropped.Load(), s.usage.limit)
}

// Flush writes buffered last-used times and usage counters in one durable
// batch, plus "key.requests_denied" events that summarise denied requests
// (at most one per key per deniedSummaryInterval, see denied.go). Each key's
// usage is a blind merge (mergeUsage combines it with the stored record), so
// a flush reads nothing. Keys deleted meanwhile are skipped.
//
// A flush does not hold the domain write lock (wmu) while it writes: on
// etcd one takes seconds, and a revocation must not wait behind it. Keys
// deleted before the flush took its deltas are skipped (skipDeleted); a
// delete that runs while a part is being written is met by sweepDeleted,
// which takes wmu only to look the part's keys up.
func (s *Store) Flush() error { return s.flush(false) }

// flush is Flush; final (the flush of Close) also reports every denial
// still waiting for its summary interval.
func (s *Store) flush(final bool) error {
	// One flush at a time: the denied summaries and the deletion ages
	// change only here.
	s.fmu.Lock()
	defer s.fmu.Unlock()
	deltas := s.usage.take() // counted in inFlight until written or put back
	taken := int64(len(deltas))
	defer func() {
		s.usage.inFlight.Add(-taken)
		s.vcache.table.dropTaken()
	}()
	s.usage.skipDeleted(deltas)
	now := s.now().UTC()
	fresh := map[string]deniedReport{}
	var b Batch
	usageOps := make([]string, 0, len(deltas)) // the key id of each of b's usage ops
	for id, d := range deltas {
		var rec usageRecord
		if d.used {
			at := d.at.UTC()
			rec.LastUsedAt, rec.LastUsedIP = &at, d.ip.String()
		}
		var denied [numOutcomes]uint64
		for o, n := range d.unbucketed {
			rec.Totals[o] += n
			if Outcome(o) != OutcomeOK {
				denied[o] += n
			}
		}
		for _, m := range d.minutes {
			for o, n := range m.Counts {
				rec.Totals[o] += n
				if Outcome(o) != OutcomeOK {
					denied[o] += n
				}
			}
		}
		rec.Minutes = mergeMinutes(nil, d.minutes, now)
		s.usageInto(&b, &usageOps, id, &rec)
		if denied != ([numOutcomes]uint64{}) {
			fresh[id] = deniedReport{id: id, tenant: d.tenant, counts: denied}
		}
	}
	plan := s.denied.plan(fresh, now, final)
	// Event ids must commit in the order they are taken (nextEventID keeps
	// meta/last_event, and readers page events by id), as every other
	// event's do under wmu: a flush with events takes wmu for them and
	// holds it until the part that carries them is written (applyFlush).
	events := false
	for _, r := range plan {
		if r.due {
			if !events {
				s.wmu.Lock()
				events = true
			}
			s.event(&b, now, r.tenant, "key.requests_denied", "gateway", r.id, outcomeMap(r.counts))
		}
	}
	if b.Len() == 0 {
		s.denied.commit(plan, now) // nothing to write; forget quiet keys
		return nil
	}
	start := time.Now()
	if err := s.applyFlush(&b, usageOps, plan, deltas, now, events); err != nil {
		return err
	}
	s.flushObserved(time.Since(start))
	return nil
}

func outcomeMap(c [numOutcomes]uint64) map[string]any {
	m := map[string]any{}
	for o, n := range c {
		if n > 0 {
			m[OutcomeNames[o]] = n
		}
	}
	return m
}

// usageRecord reads a key's usage: its own record (a single node's, or one
// copied from one) merged with every node's (usagenodes.go); nil when there
// is none.
func (s *Store) usageRecord(id string) (*usageRecord, error) {
	raw, err := s.kv.Get(k(pKeyUsage + id))
	switch {
	case errors.Is(err, errKVNotFound):
		raw = nil
	case err != nil:
		return nil, fmt.Errorf("read usage: %w", err)
	}
	if raw != nil {
		var u usageRecord
		if err := decodeUsage(raw, &u); err != nil {
			return nil, fmt.Errorf("read usage of %s: %w", id, err)
		}
	}
	raw, err = s.nodeUsage(id, raw)
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, nil
	}
	var u usageRecord
	if err := decodeUsage(raw, &u); err != nil {
		return nil, fmt.Errorf("read usage of %s: %w", id, err)
	}
	return &u, nil
}

// MinuteUsage is one minute of a key's requests by outcome.
type MinuteUsage struct {
	Time     time.Time         `json:"time"`
	Total    uint64            `json:"total"`
	Outcomes map[string]uint64 `json:"outcomes"`
}

// KeyUsage is a key's requests over the last 24 hours.
type KeyUsage struct {
	KeyID      string            `json:"key_id"`
	From       time.Time         `json:"from"`
	To         time.Time         `json:"to"`
	Total      uint64            `json:"total"`
	Outcomes   map[string]uint64 `json:"outcomes"`
	PerMinute  []MinuteUsage     `json:"per_minute"`
	LastUsedAt *time.Time        `json:"last_used_at"`
	LastUsedIP *string           `json:"last_used_ip"`
}

// Usage returns a key's per-minute and per-outcome counts for the last 24
// hours, including what is still buffered.
func (s *Store) Usage(tenant, id string) (*KeyUsage, error) {
	key, err := s.GetKey(tenant, id)
	if err != nil {
		return nil, err
	}
	rec, err := s.usageRecord(id)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	var minutes []minuteCount
	if rec != nil {
		minutes = rec.Minutes
	}
	minutes = mergeMinutes(minutes, s.usage.pending(id), now)
	out := &KeyUsage{KeyID: id, From: now.Add(-usageWindow), To: now, Outcomes: map[string]uint64{},
		PerMinute: make([]MinuteUsage, 0, len(minutes)), LastUsedAt: key.LastUsedAt, LastUsedIP: key.LastUsedIP}
	for _, m := range minutes {
		mu := MinuteUsage{Time: time.Unix(m.Minute*60, 0).UTC(), Outcomes: map[string]uint64{}}
		for o, n := range m.Counts {
			if n > 0 {
				mu.Outcomes[OutcomeNames[o]] = n
				out.Outcomes[OutcomeNames[o]] += n
				mu.Total += n
			}
		}
		out.Total += mu.Total
		out.PerMinute = append(out.PerMinute, mu)
	}
	return out, nil
}

// mergeValues is the store's MergeFunc. Only usage records are merged.
func mergeValues(key, older, newer []byte) []byte {
	if bytes.HasPrefix(key, []byte(pKeyUsage)) {
		return mergeUsage(older, newer)
	}
	return bytes.Clone(newer) // nothing else is merged: the newer value wins
}

// mergeUsage adds two usage records: counts add up, the later last use
// wins, and minutes older than the usage window before the newest minute
// are dropped. It is associative and commutative. A side that does not
// decode counts as empty: merges also run inside Pebble's compactions, where
// an error would stop them, and such a record could not be read anyway.
func mergeUsage(older, newer []byte) []byte {
	if out, ok := mergeUsageEncoded(older, newer); ok {
		return out
	}
	return mergeUsageDecoded(older, newer)
}

// mergeUsageDecoded is mergeUsage through usageRecord: it takes every
// input (JSON records of earlier versions, undecodable ones), and gives the
// record mergeUsageEncoded must give.
func mergeUsageDecoded(older, newer []byte) []byte {
	var a, b usageRecord
	if len(older) > 0 && decodeUsage(older, &a) != nil {
		a = usageRecord{}
	}
	if decodeUsage(newer, &b) != nil {
		b = usageRecord{}
	}
	if b.LastUsedAt != nil && (a.LastUsedAt == nil || b.LastUsedAt.After(*a.LastUsedAt)) {
		a.LastUsedAt, a.LastUsedIP = b.LastUsedAt, b.LastUsedIP
	}
	for o := range a.Totals {
		a.Totals[o] += b.Totals[o]
	}
	var newest int64
	for _, m := range [][]minuteCount{a.Minutes, b.Minutes} {
		if n := len(m); n > 0 && m[n-1].Minute > newest {
			newest = m[n-1].Minute
		}
	}
	a.Minutes = mergeMinutes(a.Minutes, b.Minutes, time.Unix(newest*60, 0))
	return encodeUsage(&a)
}
