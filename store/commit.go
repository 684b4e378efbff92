package store

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"
)

// One commit path. Every domain write builds a commit: the batch of records
// and, recorded next to each write as it is added, what the write affects
// outside those records (effects): the secrets whose cached verification it
// changes and which of them stop admitting, the tenants and groups the
// gateway keeps in memory, the tenants' key counts and the deleted keys'
// buffered usage. Store.commit writes the batch durably and then applies the
// effects, on the writer's goroutine, before the admin call returns:
//
//  1. each affected secret's generation is bumped and its cache entries
//     dropped (invalidate),
//  2. key counts and deleted keys' buffered usage are updated,
//  3. the affected tenants and groups are re-read into the hot state,
//  4. subscribers (Subscribe) are told which secrets and tenants stopped
//     admitting.
//
// Commits made by another node (a networked KV) arrive through the KV's
// watch as changed keys. decodeChanges, the one place that reads meaning
// into raw keys, turns them into the same effects; resolveForeign completes
// what the keys cannot say (the grace secret whose view is built from a
// changed current record, which keys were deleted, the secrets' ends, from
// the committed records), and applyEffects applies them exactly as for a
// local commit. The watch also reports our own commits (Pebble calls it
// synchronously inside Apply): those are recognised (localCommits) and
// skipped, their recorded effects being applied by commit itself. Were one
// not recognised, applying it again would only cost a cache refill, a
// reload and a recount: every effect is idempotent.
//
// # The revocation guarantee
//
// Once RevokeKey, RevokeKeys, RotateKey (without grace), DeleteKey,
// DeleteOwnerKeys, DeleteUser or UpdateSettings (api_keys_enabled false) has
// returned, no Verify (and no gateway request) that starts afterwards admits
// the affected secret, also against concurrent cache fills (PITFALLS 13, 14).
// The argument:
//
//   - The effect is recorded by the code that makes the write, next to it:
//     the only writers of key records (putKey, UpdateKey, RotateKey,
//     revokeInto, deleteInto) name every secret whose record they write or
//     delete, with its end when it stops admitting (ended); the tenant
//     writes name the tenant. TestForeignDecodeMatchesLocal checks, for
//     every write method, that the recorded secrets, tenants and groups are
//     exactly those the written keys name.
//   - Verify admits from the cache (ristretto, or the hit table in front of
//     it, which holds the same views) only an entry whose generation equals
//     its secret's current generation (one stripe of verifyCache.gens, chosen
//     by stripeOf, the store's only striping function), and every entry
//     carries the generation loaded before the store read that produced it.
//   - commit bumps the generation of every recorded secret after kv.Apply
//     has returned (the write is visible to every read) and before it
//     returns. A Verify that starts after the call answered therefore loads
//     the bumped generation: an entry filled from a read made before the
//     commit carries an older one and is ignored, an entry with the current
//     generation was filled from a read that began after the bump, hence
//     after the commit, and saw it; a miss reads the committed record.
//   - A rotated-out secret's view is built from two records (its grace
//     record and its key's current one): a write to the current record
//     (UpdateKey) names the grace secret too, so its view is refilled.
//   - A tenant disable is read into the hot state (an atomic pointer the
//     gateway loads on every request) before the call returns; a tenant
//     record that cannot be read then counts as disabled (fail closed).
//   - Subscribers are told after steps 1–3, so a subscriber that starts
//     tracking a request and then calls AdmitsUntil either is told or sees
//     the bumped generation (AdmitsUntil).
//   - A write whose kv.Apply failed may still have committed (a networked
//     KV's timeout): its effects are applied anyway, as if it came from
//     another node (the records decide what ended), since invalidating more
//     than needed never admits anything.
//
// Across nodes, no write built on what it read before another node's
// commit can commit after it (each expects the records it read unchanged,
// keyguard.go): a rotation cannot bring back a secret revoked meanwhile, nor
// a revoke or delete miss the secret a rotation issued meanwhile.
//
// Across nodes the same holds once the watch has delivered the commit; a
// node that cannot know what changed (a compacted watch, a reconnection
// gap) calls ReloadAll, which drops every cached verification at once. On
// etcd with max_staleness an ending commit answers only once every other
// live node has applied it, and a node cut off stops admitting: the
// argument for every node is in liveness.go.
type commit struct {
	b  Batch
	fx effects
}

// effects is what a committed batch changes besides its own records.
type effects struct {
	// secrets are the secret hashes whose cached view the batch changes:
	// their record was written or deleted, or (a grace secret) the record
	// their view is built from was.
	secrets []SecretHash
	// ends are the secrets that stopped admitting or got a deadline, as
	// subscribers are told. endsKnown: recorded by the writer; otherwise
	// (another node's commit) they are read from the committed records.
	ends      []SecretEnd
	endsKnown bool
	// checkEnds are the secrets whose own record changed in a commit not
	// recorded here: notify reads their ends (a grace secret added only
	// because its key's record changed keeps the end it had).
	checkEnds []SecretHash
	// tenants and groups are the records the hot state holds that changed.
	tenants []string
	groups  []groupKey
	// counts are the changes of tenants' key counts (local commits);
	// recount names tenants whose count must be read again (another node
	// created or deleted keys).
	counts  map[string]int
	recount []string
	// deleted are key ids removed (their buffered usage is dropped);
	// keyIDs are ids whose index entry another node's commit changed: those
	// no longer present are treated as deleted.
	deleted []string
	keyIDs  []string
	// all: anything may have changed (see ReloadAll).
	all bool
}

// newCommit starts a local commit: its ends are recorded as it is built.
func newCommit() *commit { return &commit{fx: effects{endsKnown: true}} }

// changed records that the cached view of the secret h changes, without
// ending it (a new key, an edit, a new secret).
func (c *commit) changed(h SecretHash) { c.fx.secrets = append(c.fx.secrets, h) }

// ended records that the secret h stops admitting: at once (at zero) or at
// at (a grace end); code is the gateway's rejection code from then on and
// keyID the key, when its record still names it (empty once deleted).
func (c *commit) ended(h SecretHash, keyID string, at time.Time, code string) {
	c.fx.secrets = append(c.fx.secrets, h)
	c.fx.ends = append(c.fx.ends, SecretEnd{Hash: h, KeyID: keyID, At: at, Code: code})
}

// tenant records a write of the tenant's record (settings, enable switch).
func (c *commit) tenant(id string) { c.fx.tenants = append(c.fx.tenants, id) }

// group records a write or delete of a group.
func (c *commit) group(tenant, name string) {
	c.fx.groups = append(c.fx.groups, groupKey{tenant, name})
}

// keyCount records a change of the tenant's key count.
func (c *commit) keyCount(tenant string, d int) {
	if c.fx.counts == nil {
		c.fx.counts = map[string]int{}
	}
	c.fx.counts[tenant] += d
}

// keyDeleted records the deletion of a key.
func (c *commit) keyDeleted(id string) { c.fx.deleted = append(c.fx.deleted, id) }

// commit writes c durably, then applies its effects before returning. A
// failed write's effects are applied too, as uncertain (see the guarantee).
func (s *Store) commit(c *commit) error {
	if c.b.Len() == 0 {
		return nil
	}
	if s.beforeCommit != nil {
		s.beforeCommit(&c.b)
	}
	s.local.add(&c.b)
	var rev int64
	var err error
	if s.live != nil {
		rev, err = s.live.applyRev(&c.b)
	} else {
		err = s.kv.Apply(&c.b, true)
	}
	s.local.remove(&c.b)
	if s.afterCommit != nil {
		s.afterCommit(&c.b, &c.fx, err)
	}
	if errors.Is(err, errKVConflict) {
		// An expectation failed (keyadds.go): nothing was written, so
		// there is nothing to apply; the caller reads again.
		return fmt.Errorf("store write: %w", err)
	}
	if err != nil {
		fx := c.fx.uncertain()
		s.resolveForeign(&fx)
		s.applyEffects(&fx)
		return fmt.Errorf("store write: %w", err)
	}
	s.applyEffects(&c.fx)
	if rev != 0 && c.fx.ending() {
		// Other nodes (liveness.go): answer once they applied it.
		if late := s.live.awaitApplied(rev); len(late) > 0 {
			s.log.Errorf("store: nodes %v did not acknowledge revision %d within max_staleness; they stop admitting by then", late, rev)
		}
	}
	return nil
}

// ending reports whether a commit stops something admitting (a secret's
// end, or a tenant write such as a disable): across nodes, such a commit
// answers only once the other nodes have applied it (liveness.go).
func (fx *effects) ending() bool { return len(fx.ends) > 0 || len(fx.tenants) > 0 }

// uncertain is fx for a write that may or may not have committed: what it
// ended, how many keys it added and which it deleted are read back, as for
// another node's commit.
func (fx *effects) uncertain() effects {
	out := effects{secrets: fx.secrets, tenants: fx.tenants, groups: fx.groups, keyIDs: fx.deleted}
	for t := range fx.counts {
		out.recount = append(out.recount, t)
	}
	return out
}

// onWatch is the KV's watch callback: our own commits are skipped (commit
// applies their recorded effects), any other is decoded and applied.
func (s *Store) onWatch(keys [][]byte) {
	if s.local.isEcho(keys) {
		return
	}
	s.applyForeign(keys)
}

// applyForeign applies the effects of a commit this store did not record.
func (s *Store) applyForeign(keys [][]byte) {
	fx := decodeChanges(keys)
	s.resolveForeign(&fx)
	s.applyEffects(&fx)
}

// decodeChanges maps the keys a commit changed to its effects. It is the
// only place that reads meaning into raw keys, and it is used only for
// commits this store did not build (another node's, or a raw batch).
func decodeChanges(keys [][]byte) effects {
	var fx effects
	var seen map[string]bool
	once := func(key string) bool {
		if seen[key] {
			return false
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[key] = true
		return true
	}
	for _, key := range keys {
		ks := string(key)
		switch {
		case len(ks) == len(pKeyHash)+len(SecretHash{}) && hasPrefix(ks, pKeyHash):
			if once(ks) {
				var h SecretHash
				copy(h[:], key[len(pKeyHash):])
				fx.secrets = append(fx.secrets, h)
			}
		case hasPrefix(ks, pKeyID):
			if once(ks) {
				fx.keyIDs = append(fx.keyIDs, ks[len(pKeyID):])
			}
		case hasPrefix(ks, pKeyTenant):
			if t, _, ok := cut(ks[len(pKeyTenant):]); ok && once(pKeyTenant+t) {
				fx.recount = append(fx.recount, t)
			}
		case hasPrefix(ks, pTenant):
			if once(ks) {
				fx.tenants = append(fx.tenants, ks[len(pTenant):])
			}
		case hasPrefix(ks, pGroup):
			if t, g, ok := cut(ks[len(pGroup):]); ok && once(ks) {
				fx.groups = append(fx.groups, groupKey{t, g})
			}
		}
	}
	return fx
}

// cut splits "a/b" at its first '/'.
func cut(s string) (before, after string, ok bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// resolveForeign completes effects the changed keys alone cannot tell, from
// the committed records: a changed current record's grace secret (its view
// is built from that record), and which changed key ids no longer exist.
// The secrets' ends are read when subscribers are told (notify). A record
// read later than the commit is at least as new: a grace secret that a later
// commit detached is named by that commit itself (it deletes the record).
func (s *Store) resolveForeign(fx *effects) {
	fx.endsKnown = false
	n := len(fx.secrets)
	fx.checkEnds = fx.secrets[:n:n]
	for _, h := range fx.secrets[:n] {
		var rec keyRecord
		err := s.getKeyRecord(h, &rec)
		switch {
		case errors.Is(err, errKVNotFound):
		case err != nil:
			s.log.Errorf("invalidation: read key record: %v", err)
		case !rec.isGrace() && rec.PrevHash != nil:
			fx.secrets = append(fx.secrets, *rec.PrevHash)
		}
	}
	for _, id := range fx.keyIDs {
		if _, err := s.kv.Get(k(pKeyID + id)); errors.Is(err, errKVNotFound) {
			fx.deleted = append(fx.deleted, id)
		} else if err != nil {
			s.log.Errorf("invalidation: read key %s: %v", id, err)
		}
	}
}

// applyEffects applies fx after its commit, in the order the guarantee
// needs: generations, then counts and usage, then the hot state, then the
// subscribers.
func (s *Store) applyEffects(fx *effects) {
	if fx.all {
		s.reloadAll()
		return
	}
	for _, h := range fx.secrets {
		s.invalidate(h)
	}
	for t, d := range fx.counts {
		s.addKeyCount(t, d)
	}
	for _, t := range fx.recount {
		s.forgetKeyCount(t)
	}
	for _, id := range fx.deleted {
		s.usage.forget(id)
	}
	if len(fx.tenants) > 0 || len(fx.groups) > 0 {
		s.reloadHotOf(fx.tenants, fx.groups)
	}
	s.notify(fx)
}

// ReloadAll is for a KV that lost track of what other nodes changed (a
// watch cancelled by compaction, a reconnection after a gap, PITFALLS 24):
// it drops every cached verification at once (every generation is bumped,
// so no cached view admits from here on), re-reads every tenant and group,
// forgets the key counts, and tells subscribers to re-check every request
// they hold (Invalidation.All). The KV must not report itself caught up
// before this has returned.
func (s *Store) ReloadAll() { s.applyEffects(&effects{all: true}) }

func (s *Store) reloadAll() {
	for i := range s.vcache.gens {
		s.vcache.gens[i].Add(1)
	}
	s.cmu.Lock()
	s.keyCounts = nil
	s.countEpoch++
	s.cmu.Unlock()
	if err := s.reloadHot(); err != nil {
		// Fail closed: no tenant admits until a reload succeeds.
		s.log.Errorf("reload tenants and groups: %v; API keys are treated as disabled until the next reload", err)
		s.hmu.Lock()
		old := s.hot.Load()
		s.hot.Store(&hotState{enabled: map[string]bool{}, imported: old.imported, groups: old.groups})
		s.hmu.Unlock()
	}
	s.notify(&effects{all: true})
}

// reloadHotOf re-reads the given tenants and groups into a copy of the hot
// state and publishes it. A tenant record that cannot be read counts as
// disabled (fail closed) until its next change or ReloadAll; a group that
// cannot be read keeps its previous view.
func (s *Store) reloadHotOf(tenants []string, groups []groupKey) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	old := s.hot.Load()
	st := &hotState{enabled: maps.Clone(old.enabled), imported: maps.Clone(old.imported), groups: maps.Clone(old.groups)}
	if st.imported == nil {
		st.imported = map[string]bool{}
	}
	for _, t := range tenants {
		var r tenantRecord
		switch err := s.getJSON(k(pTenant+t), &r); {
		case errors.Is(err, errKVNotFound):
			delete(st.enabled, t)
			delete(st.imported, t)
		case err != nil:
			s.log.Errorf("reload tenant %q: %v; its API keys are treated as disabled until its next change", t, err)
			st.enabled[t] = false
		default:
			st.enabled[t] = r.Settings.APIKeysEnabled
			if r.ImportedKeys {
				st.imported[t] = true
			} else {
				delete(st.imported, t)
			}
		}
	}
	for _, g := range groups {
		var rec Group
		switch err := s.getJSON(k(pGroup+g.tenant, g.group), &rec); {
		case errors.Is(err, errKVNotFound):
			delete(st.groups, g)
		case err != nil:
			s.log.Errorf("reload group %q of tenant %q: %v", g.group, g.tenant, err)
		default:
			st.groups[g] = s.compileLogged(&rec)
		}
	}
	s.hot.Store(st)
}

// localCommits are the batches this store is applying right now. The KV's
// watch reports them too (Pebble calls its watchers synchronously inside
// Apply, with the batch's own key slices); onWatch recognises such an echo
// by identity, the first key's memory, which no other commit's keys can
// share: a commit decoded from another node's changes never aliases our
// batch. An echo not recognised (a KV that copies keys) is applied again,
// harmlessly.
type localCommits struct {
	mu      sync.Mutex
	batches []*Batch
}

func (l *localCommits) add(b *Batch) {
	l.mu.Lock()
	l.batches = append(l.batches, b)
	l.mu.Unlock()
}

func (l *localCommits) remove(b *Batch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.batches {
		if x == b {
			l.batches = append(l.batches[:i], l.batches[i+1:]...)
			return
		}
	}
}

func (l *localCommits) isEcho(keys [][]byte) bool {
	if len(keys) == 0 || len(keys[0]) == 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.batches {
		if len(b.ops) == len(keys) && len(b.ops[0].key) > 0 && &b.ops[0].key[0] == &keys[0][0] {
			return true
		}
	}
	return false
}
