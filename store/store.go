// Package store is keygate's domain core: tenants, settings, users, tokens,
// groups, API keys and their audit events, kept in an ordered key-value
// store (Pebble by default) behind the small KV interface, with the hot-path
// verification cache in front. It imports nothing from Caddy.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/dgraph-io/ristretto/v2"
)

// SchemaVersion is the layout version written at meta/schema. Open refuses a
// store written by a newer layout rather than misreading it, and raises an
// older one's after checking it can read it.
//
//	1: JSON key records, usage rewritten in place
//	2: binary key records (keycodec.go; JSON ones still read), usage written
//	   as merge operands. A version-1 store needs no rewrite.
const SchemaVersion = 2

// Storage layout. Ids never contain '/', so prefixes never overlap.
//
//	meta/schema                  → SchemaVersion
//	meta/last_event              → id of the newest event
//	t/<tenant>                   → tenantRecord
//	u/<tenant>/<user>            → User
//	tk/<token id>                → tokenRecord
//	th/<token hash>              → token id
//	tu/<tenant>/<user>/<tok id>  → ""
//	g/<tenant>/<group>           → Group
//	k/<key id>                   → current secret hash (32 bytes)
//	kh/<secret hash>             → keyRecord or grace record, binary (keycodec.go)
//	kt/<tenant>/<key id>         → current secret hash
//	ku/<key id>                  → usageRecord, binary (usagecodec.go), written
//	                               as Pebble merge operands (mergeUsage)
//	e/<tenant>/<event id>        → Event (deleted after EventRetention)
//	ka/<tenant>                  → key-add sequence (keyadds.go)
//	gr/<tenant>/<group>          → reference mark (grouprefs.go)
//	ur/<tenant>/<user>           → tokens mark (users.go)
const (
	pMeta      = "meta/"
	pTenant    = "t/"
	pUser      = "u/"
	pToken     = "tk/"
	pTokenHash = "th/"
	pTokenUser = "tu/"
	pGroup     = "g/"
	pKeyID     = "k/"
	pKeyHash   = "kh/"
	pKeyTenant = "kt/"
	pKeyUsage  = "ku/"
	pEvent     = "e/"
)

func k(parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p) + 1
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, '/')
		}
		b = append(b, p...)
	}
	return b
}

func hashKey(prefix string, h SecretHash) []byte {
	return append([]byte(prefix), h[:]...)
}

// Options configure Open.
type Options struct {
	// Dir is the Pebble directory. The caller canonicalises it.
	Dir string
	// FS replaces the OS filesystem (tests use vfs.NewMem()).
	FS vfs.FS
	// KV replaces Pebble altogether; Dir and FS are then ignored. OpenEtcd
	// returns the KV of a cluster of nodes.
	KV KV
	// NodeID names this node when several share the KV (etcd): each writes
	// its usage and last-used data under its own keys, and the usage
	// endpoint sums the nodes. Empty (the default, a single node) writes
	// them under the key's own usage record.
	NodeID string
	// Logger receives diagnostics; nil discards them.
	Logger Logger
	// BlockCache is Pebble's block cache in bytes (default 64 MiB).
	BlockCache int64
	// CacheEntries bounds the positive verification cache (default 100000).
	CacheEntries int64
	// NegativeEntries bounds the cache of unknown secrets (default 10000).
	NegativeEntries int64
	// NegativeTTL is how long an unknown secret stays cached (default 10s).
	NegativeTTL time.Duration
	// FlushInterval is how often buffered last-used and usage data are
	// written (default 5s); negative disables the background flusher, and
	// Flush or Close write them.
	FlushInterval time.Duration
	// EventRetention is how long audit events are kept (default
	// DefaultEventRetention, 90 days; at least MinEventRetention); older
	// ones are deleted in the background. Negative keeps them forever.
	EventRetention time.Duration
	// EventPruneInterval is how often that background pass runs (default
	// DefaultEventPruneInterval); negative disables the pass, and
	// PruneEvents does it on demand.
	EventPruneInterval time.Duration
	// Pepper, when set, makes secret hashes HMAC-SHA-256 with it.
	Pepper []byte
	// Now is the clock (tests inject one).
	Now func() time.Time
	// Decorate, when set, is called once for each key view built for the
	// verification cache; its result is kept in KeyView.Extra.
	Decorate func(*KeyView) any
	// DiskReserve is the free space, in bytes, that writes must leave on
	// the store's filesystem: below it admin writes fail with
	// KindInsufficientStorage and usage stays in memory, and Open fails.
	// 0 means DefaultDiskReserve; negative disables the check.
	DiskReserve int64
	// UsageBufferLimit bounds the per-minute usage counts kept in memory
	// while the store cannot be written (default 1,000,000 key-minutes,
	// about 100 MB); beyond it requests still count in the keys' totals and
	// last use, but their per-minute detail is dropped and counted.
	UsageBufferLimit int
}

// Store is safe for concurrent use.
type Store struct {
	kv     KV
	log    Logger
	now    func() time.Time
	hasher hasher

	decorate func(*KeyView) any
	nodeID   string       // "": a single node (usagenodes.go)
	resets   atomic.Int64 // watch resets (ReloadAll after a watch gap)

	// wmu serialises domain writes: the read-validate-write of limits and
	// state transitions must not interleave.
	wmu sync.Mutex
	// fmu serialises usage flushes (usage.go); a flush holds wmu only for
	// the part that carries its events (their ids commit in order) and
	// for sweepDeleted's look-ups.
	fmu sync.Mutex

	hot atomic.Pointer[hotState]
	hmu sync.Mutex // guards hot replacement

	vcache *verifyCache
	guards [guardStripes]guardStripe
	usage  *usageBuffer

	lastEvent atomic.Int64
	retention time.Duration // events older than this are pruned; <= 0: never

	flushes  flushCounters
	flushLog *logThrottle // the flusher's failures, logged once then summarised
	denied   deniedSummaries

	subscriptions // invalidation subscribers (invalidation.go)
	local         localCommits
	// afterCommit, when set (tests), sees every domain batch and its
	// recorded effects right after kv.Apply returned err.
	afterCommit func(b *Batch, fx *effects, err error)
	// beforeCommit, when set (tests), sees every domain batch just before
	// it is written.
	beforeCommit func(b *Batch)
	// flushApply, when set (tests), is called with each batch a usage
	// flush is about to write, before it is written; an error fails the
	// write instead.
	flushApply func(b *Batch) error

	cmu       sync.Mutex
	keyCounts map[string]int // tenant → keys, filled lazily
	// countEpoch changes with every change of keyCounts: a count read
	// from the KV without cmu is remembered only if none came meanwhile.
	countEpoch uint64

	live livenessKV // a shared KV's liveness (etcd); nil on Pebble
	// shared: other nodes write the KV too (its watch reports their
	// commits), so memory may lag behind it (keyadds.go).
	shared bool

	closeOnce sync.Once
	stop      chan struct{}
	flushDone chan struct{}
	pruneDone chan struct{}
	closed    atomic.Bool
}

// Open opens or creates a store.
func Open(opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = nopLogger{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BlockCache <= 0 {
		opts.BlockCache = 64 << 20
	}
	if opts.CacheEntries <= 0 {
		opts.CacheEntries = 100_000
	}
	if opts.NegativeEntries <= 0 {
		opts.NegativeEntries = 10_000
	}
	if opts.NegativeTTL <= 0 {
		opts.NegativeTTL = 10 * time.Second
	}
	if opts.FlushInterval == 0 {
		opts.FlushInterval = 5 * time.Second
	}
	switch {
	case opts.EventRetention == 0:
		opts.EventRetention = DefaultEventRetention
	case opts.EventRetention > 0 && opts.EventRetention < MinEventRetention:
		return nil, fmt.Errorf("store: event retention %s is shorter than %s", Duration(opts.EventRetention), Duration(MinEventRetention))
	}
	if opts.EventPruneInterval == 0 {
		opts.EventPruneInterval = DefaultEventPruneInterval
	}
	if err := CheckNodeID(opts.NodeID); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if opts.UsageBufferLimit <= 0 {
		opts.UsageBufferLimit = defaultUsageBufferLimit
	}
	kv := opts.KV
	if kv == nil {
		if opts.Dir == "" {
			return nil, errors.New("store: no directory given")
		}
		p, err := openPebbleConfig(pebbleConfig{Dir: opts.Dir, FS: opts.FS, Logger: opts.Logger,
			BlockCache: opts.BlockCache, Merge: mergeValues, DiskReserve: opts.DiskReserve, Now: opts.Now})
		if err != nil {
			return nil, err
		}
		kv = p
	}
	s := &Store{
		kv:       kv,
		log:      opts.Logger,
		now:      opts.Now,
		hasher:   newHasher(opts.Pepper),
		decorate: opts.Decorate,
		stop:     make(chan struct{}),
		nodeID:   opts.NodeID,
	}
	_, s.shared = kv.(watchResetter)
	if l, ok := kv.(livenessKV); ok {
		s.live = l
		// Cut off from etcd: requests this node admitted before and that
		// are still running stop too (AdmitsUntil answers unavailable).
		l.onLost(func() { s.notify(&effects{all: true}) })
	}
	s.retention = opts.EventRetention
	s.hot.Store(&hotState{enabled: map[string]bool{}, groups: map[groupKey]*GroupView{}}) // init loads it
	vc, err := newVerifyCache(opts.CacheEntries, opts.NegativeEntries, opts.NegativeTTL)
	if err != nil {
		_ = kv.Close()
		return nil, err
	}
	s.vcache = vc
	s.usage = newUsageBuffer(opts.UsageBufferLimit)
	s.flushLog = newLogThrottle(opts.Now, flushLogPeriod)
	s.denied = deniedSummaries{}
	if err := s.init(); err != nil {
		vc.close()
		_ = kv.Close()
		return nil, err
	}
	kv.Watch(s.onWatch)
	if r, ok := kv.(watchResetter); ok {
		// Other nodes write too, and the watch may miss their commits
		// (etcd compacted them away): start over (commit.go).
		r.WatchReset(func() {
			s.ReloadAll()
			s.resets.Add(1)
		})
	}
	if opts.FlushInterval > 0 {
		s.flushDone = make(chan struct{})
		go s.flushLoop(opts.FlushInterval)
	}
	if opts.EventPruneInterval > 0 && opts.EventRetention > 0 {
		s.pruneDone = make(chan struct{})
		go s.pruneLoop(opts.EventPruneInterval)
	}
	return s, nil
}

// init checks the schema version, creates the default tenant on first start
// and loads the in-memory tenant and group state.
func (s *Store) init() error {
	if err := s.checkNotCopying(); err != nil {
		return err
	}
	v, err := s.kv.Get([]byte(pMeta + "schema"))
	switch {
	case errors.Is(err, errKVNotFound):
		var b Batch
		b.Set([]byte(pMeta+"schema"), []byte(strconv.Itoa(SchemaVersion)))
		if err := s.kv.Apply(&b, true); err != nil {
			return fmt.Errorf("write schema version: %w", err)
		}
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	default:
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 {
			return fmt.Errorf("store: unreadable schema version %q", v)
		}
		if n > SchemaVersion {
			return fmt.Errorf("store: schema version %d is newer than this binary's %d", n, SchemaVersion)
		}
		if n < SchemaVersion {
			// Every older layout is readable as it is; raising the version
			// keeps older binaries, which would misread new records, out.
			var b Batch
			b.Set([]byte(pMeta+"schema"), []byte(strconv.Itoa(SchemaVersion)))
			if err := s.kv.Apply(&b, true); err != nil {
				return fmt.Errorf("raise schema version from %d: %w", n, err)
			}
			s.log.Infof("store: schema version raised from %d to %d", n, SchemaVersion)
		}
	}
	if err := s.loadLastEvent(); err != nil {
		return err
	}
	if _, err := s.kv.Get(k(pTenant + DefaultTenant)); errors.Is(err, errKVNotFound) {
		if _, err := s.CreateTenant("system", TenantInput{ID: DefaultTenant, Name: "Default tenant"}); err != nil && KindOf(err) != KindConflict {
			return fmt.Errorf("create default tenant: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("read default tenant: %w", err)
	}
	return s.reloadHot()
}

// closeWait bounds how long Close waits for a running usage flush.
const closeWait = 5 * time.Second

// Close flushes buffered usage and closes the KV. It is safe to call twice,
// and it returns within seconds even when the store cannot be written (the
// usage it could not write is then lost, and logged as such).
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		flusherDone := true
		if s.flushDone != nil {
			t := time.NewTimer(closeWait)
			select {
			case <-s.flushDone:
			case <-t.C:
				flusherDone = false
				s.log.Errorf("store close: the usage flusher did not finish within %v", closeWait)
			}
			t.Stop()
		}
		if s.pruneDone != nil {
			t := time.NewTimer(closeWait)
			select {
			case <-s.pruneDone:
			case <-t.C:
				s.log.Errorf("store close: the event pruner did not finish within %v", closeWait)
			}
			t.Stop()
		}
		if flusherDone {
			if ferr := s.flush(true); ferr != nil {
				s.log.Errorf("final usage flush: %v; the buffered usage of %d keys is lost", ferr, s.PendingUsage())
			}
		}
		s.closed.Store(true)
		s.drainGuards()
		s.vcache.close()
		err = s.kv.Close()
	})
	return err
}

func (s *Store) getJSON(key []byte, v any) error {
	_, err := s.getJSONRaw(key, v)
	return err
}

// getJSONRaw is getJSON that also returns the stored bytes, for a write to
// expect them unchanged (Batch.Expect).
func (s *Store) getJSONRaw(key []byte, v any) ([]byte, error) {
	raw, err := s.kv.Get(key)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("decode %q: %w", key, err)
	}
	return raw, nil
}

// getRecord reads one JSON record; a missing one is a not-found error
// naming what and id.
func getRecord[T any](s *Store, key []byte, what, id string) (*T, error) {
	v := new(T)
	if err := s.getJSON(key, v); err != nil {
		if errors.Is(err, errKVNotFound) {
			return nil, notFound(what, id)
		}
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return v, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("store: encode %T: %v", v, err)) // our own types always encode
	}
	return b
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// nextEventID returns strictly increasing, fixed-width event ids.
func (s *Store) nextEventID(now time.Time) string {
	for {
		last := s.lastEvent.Load()
		n := now.UnixNano()
		if n <= last {
			n = last + 1
		}
		if s.lastEvent.CompareAndSwap(last, n) {
			return fmt.Sprintf("evt_%016x", uint64(n))
		}
	}
}

// event adds an audit event to the batch that makes the change, so the change
// and its record commit together.
func (s *Store) event(b *Batch, now time.Time, tenant, typ, actor, keyID string, detail map[string]any) {
	e := Event{ID: s.nextEventID(now), Tenant: tenant, Time: now.UTC(), Type: typ, Actor: actor, Detail: detail}
	if keyID != "" {
		e.KeyID = &keyID
	}
	if e.Detail == nil {
		e.Detail = map[string]any{}
	}
	b.Set(k(pEvent+tenant, e.ID), mustJSON(e))
	// Remember the newest id so that a reopened store (whose clock may be
	// behind the old one) never reuses an id and overwrites an event.
	b.Set([]byte(metaLastEvent), []byte(e.ID))
}

const metaLastEvent = pMeta + "last_event"

// loadLastEvent seeds the event id sequence from the store.
func (s *Store) loadLastEvent() error {
	v, err := s.kv.Get([]byte(metaLastEvent))
	if errors.Is(err, errKVNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read last event id: %w", err)
	}
	var n uint64
	if _, err := fmt.Sscanf(string(v), "evt_%016x", &n); err != nil {
		return fmt.Errorf("store: unreadable last event id %q", v)
	}
	s.lastEvent.Store(int64(n))
	return nil
}

// ristrettoConfig is shared by the two verification caches: every entry costs
// 1 (PITFALLS 12) and counters are 10× the capacity, as ristretto advises.
// Get buffers of 256 instead of 64: on the hit path, handing each full
// buffer to the policy goroutine (a wakeup) was a fifth of the handler's
// cost; the policy learns of accesses in bigger batches.
func ristrettoConfig[V any](entries int64) *ristretto.Config[uint64, V] {
	return &ristretto.Config[uint64, V]{
		NumCounters:        entries * 10,
		MaxCost:            entries,
		BufferItems:        256,
		IgnoreInternalCost: true,
	}
}
