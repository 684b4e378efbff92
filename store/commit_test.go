package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// committed is one domain batch as Store.commit saw it.
type committed struct {
	keys [][]byte
	fx   effects
}

// recordCommits makes s keep every commit's keys and recorded effects; the
// returned function hands them over and forgets them.
func recordCommits(s *Store) func() []committed {
	var mu sync.Mutex
	var got []committed
	s.afterCommit = func(b *Batch, fx *effects, err error) {
		if err != nil {
			return
		}
		c := committed{fx: *fx}
		for _, op := range b.ops {
			c.keys = append(c.keys, bytes.Clone(op.key))
		}
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
	}
	return func() []committed {
		mu.Lock()
		defer mu.Unlock()
		g := got
		got = nil
		return g
	}
}

// lifecycleStep is one admin call and the effects it must record.
type lifecycleStep struct {
	name string
	run  func(t *testing.T, l *lifecycle)
	want func(l *lifecycle) effects // ends in any order; endsKnown implied
}

// lifecycle is the state the steps share: one key (id, its secrets in
// order of issue), the clock.
type lifecycle struct {
	s       *Store
	clk     *clock
	id      string
	secrets []SecretHash // every secret the key had, oldest first
	other   []SecretHash // the two keys of the bulk steps
	otherID []string
	take    func() []committed
}

func (l *lifecycle) cur() SecretHash  { return l.secrets[len(l.secrets)-1] }
func (l *lifecycle) prev() SecretHash { return l.secrets[len(l.secrets)-2] }

func (l *lifecycle) newKey(t *testing.T, owner string) (string, SecretHash) {
	k, sec, err := l.s.CreateKey("op", "acme", owner, KeyInput{Name: "kk"})
	mustNil(t, err)
	return k.ID, l.s.hasher.hash(sec)
}

func end(h SecretHash, id string, at time.Time, code string) SecretEnd {
	return SecretEnd{Hash: h, KeyID: id, At: at, Code: code}
}

// lifecycleSteps covers every write method that affects a cache, the hot
// state, key counts or subscribers, and some that affect nothing.
func lifecycleSteps() []lifecycleStep {
	grace := Duration(time.Minute)
	return []lifecycleStep{
		{"CreateTenant", func(t *testing.T, l *lifecycle) {
			_, err := l.s.CreateTenant("op", TenantInput{ID: "globex"})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{tenants: []string{"globex"}} }},
		{"UpdateTenant", func(t *testing.T, l *lifecycle) {
			_, err := l.s.UpdateTenant("op", "globex", TenantPatch{Name: Some("Globex")})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{tenants: []string{"globex"}} }},
		{"PutGroup", func(t *testing.T, l *lifecycle) {
			_, err := l.s.PutGroup("op", "acme", "readers", GroupInput{Rules: []Rule{{Methods: []string{"GET"}}}})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{groups: []groupKey{{"acme", "readers"}}} }},
		{"CreateKey", func(t *testing.T, l *lifecycle) {
			k, sec, err := l.s.CreateKey("op", "acme", "alice", KeyInput{Name: "kk", Group: "readers"})
			mustNil(t, err)
			l.id, l.secrets = k.ID, []SecretHash{l.s.hasher.hash(sec)}
		}, func(l *lifecycle) effects {
			return effects{secrets: []SecretHash{l.cur()}, counts: map[string]int{"acme": 1}}
		}},
		{"UpdateKey", func(t *testing.T, l *lifecycle) {
			_, err := l.s.UpdateKey("op", "acme", l.id, KeyPatch{Name: Some("renamed")})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{secrets: []SecretHash{l.cur()}} }},
		{"RotateKey with grace", func(t *testing.T, l *lifecycle) {
			_, sec, err := l.s.RotateKey("op", "acme", l.id, RotateInput{GracePeriod: &grace})
			mustNil(t, err)
			l.secrets = append(l.secrets, l.s.hasher.hash(sec))
		}, func(l *lifecycle) effects {
			return effects{secrets: []SecretHash{l.prev(), l.cur()},
				ends: []SecretEnd{end(l.prev(), l.id, l.clk.Now().Add(time.Minute), "invalid_key")}}
		}},
		{"UpdateKey with a grace secret", func(t *testing.T, l *lifecycle) {
			_, err := l.s.UpdateKey("op", "acme", l.id, KeyPatch{IPAllowlist: Some([]string{"10.0.0.0/8"})})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{secrets: []SecretHash{l.cur(), l.prev()}} }},
		{"RotateKey without grace, ending the grace secret", func(t *testing.T, l *lifecycle) {
			_, sec, err := l.s.RotateKey("op", "acme", l.id, RotateInput{})
			mustNil(t, err)
			l.secrets = append(l.secrets, l.s.hasher.hash(sec))
		}, func(l *lifecycle) effects {
			old := l.secrets[len(l.secrets)-3]
			return effects{secrets: []SecretHash{old, l.prev(), l.cur()},
				ends: []SecretEnd{end(old, "", time.Time{}, "invalid_key"), end(l.prev(), "", time.Time{}, "invalid_key")}}
		}},
		{"RotateKey with grace again", func(t *testing.T, l *lifecycle) {
			_, sec, err := l.s.RotateKey("op", "acme", l.id, RotateInput{GracePeriod: &grace})
			mustNil(t, err)
			l.secrets = append(l.secrets, l.s.hasher.hash(sec))
		}, func(l *lifecycle) effects {
			return effects{secrets: []SecretHash{l.prev(), l.cur()},
				ends: []SecretEnd{end(l.prev(), l.id, l.clk.Now().Add(time.Minute), "invalid_key")}}
		}},
		{"RevokeKey, ending the grace secret too", func(t *testing.T, l *lifecycle) {
			_, err := l.s.RevokeKey("op", "acme", l.id)
			mustNil(t, err)
		}, func(l *lifecycle) effects {
			return effects{secrets: []SecretHash{l.prev(), l.cur()},
				ends: []SecretEnd{end(l.prev(), "", time.Time{}, "invalid_key"), end(l.cur(), l.id, time.Time{}, "key_revoked")}}
		}},
		{"RevokeKeys", func(t *testing.T, l *lifecycle) {
			l.otherID, l.other = nil, nil
			for range 2 {
				id, h := l.newKey(t, "bob")
				l.otherID, l.other = append(l.otherID, id), append(l.other, h)
			}
			l.take() // the creates are not this step's
			_, err := l.s.RevokeKeys("op", "acme", l.otherID)
			mustNil(t, err)
		}, func(l *lifecycle) effects {
			return effects{secrets: l.other, ends: []SecretEnd{
				end(l.other[0], l.otherID[0], time.Time{}, "key_revoked"), end(l.other[1], l.otherID[1], time.Time{}, "key_revoked")}}
		}},
		{"DeleteKey", func(t *testing.T, l *lifecycle) {
			mustNil(t, l.s.DeleteKey("op", "acme", l.id))
		}, func(l *lifecycle) effects {
			return effects{secrets: []SecretHash{l.cur()}, ends: []SecretEnd{end(l.cur(), "", time.Time{}, "invalid_key")},
				counts: map[string]int{"acme": -1}, deleted: []string{l.id}}
		}},
		{"DeleteOwnerKeys", func(t *testing.T, l *lifecycle) {
			n, err := l.s.DeleteOwnerKeys("op", "acme", "bob")
			mustNil(t, err)
			if n != 2 {
				t.Fatalf("deleted %d keys", n)
			}
		}, func(l *lifecycle) effects {
			return effects{secrets: l.other, ends: []SecretEnd{
				end(l.other[0], "", time.Time{}, "invalid_key"), end(l.other[1], "", time.Time{}, "invalid_key")},
				counts: map[string]int{"acme": -2}, deleted: l.otherID}
		}},
		{"DeleteUser", func(t *testing.T, l *lifecycle) {
			_, err := l.s.PutUser("op", "acme", "carol", []Role{RoleDeveloper})
			mustNil(t, err)
			_, _, err = l.s.CreateToken("op", "acme", "carol", TokenInput{})
			mustNil(t, err)
			id, h := l.newKey(t, "carol")
			l.otherID, l.other = []string{id}, []SecretHash{h}
			l.take()
			mustNil(t, l.s.DeleteUser("op", "acme", "carol"))
		}, func(l *lifecycle) effects {
			return effects{secrets: l.other, ends: []SecretEnd{end(l.other[0], l.otherID[0], time.Time{}, "key_revoked")}}
		}},
		{"DeleteGroup", func(t *testing.T, l *lifecycle) {
			mustNil(t, l.s.DeleteGroup("op", "acme", "readers"))
		}, func(l *lifecycle) effects { return effects{groups: []groupKey{{"acme", "readers"}}} }},
		{"UpdateSettings (disable)", func(t *testing.T, l *lifecycle) {
			_, err := l.s.UpdateSettings("op", "acme", SettingsPatch{APIKeysEnabled: Some(false)})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{tenants: []string{"acme"}} }},
		{"PutUser", func(t *testing.T, l *lifecycle) {
			_, err := l.s.PutUser("op", "acme", "dave", []Role{RoleTenantAdmin})
			mustNil(t, err)
		}, func(l *lifecycle) effects { return effects{} }},
	}
}

// runLifecycle runs every step on a fresh store and hands check the one
// commit each step made.
func runLifecycle(t *testing.T, check func(t *testing.T, l *lifecycle, st lifecycleStep, c committed)) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "acme")
	take := recordCommits(s)
	l := &lifecycle{s: s, clk: clk, take: take}
	for _, st := range lifecycleSteps() {
		t.Run(st.name, func(t *testing.T) {
			take()
			st.run(t, l)
			got := take()
			if len(got) != 1 {
				t.Fatalf("%d commits, want 1", len(got))
			}
			check(t, l, st, got[0])
		})
		clk.Advance(time.Second)
	}
}

// TestRecordedEffects: every write method records what it affects, as it
// builds its batch. A method that forgot one (a secret it ends, a tenant or
// group it changes, a key count, a deleted key's usage) fails here.
func TestRecordedEffects(t *testing.T) {
	runLifecycle(t, func(t *testing.T, l *lifecycle, st lifecycleStep, c committed) {
		want := st.want(l)
		got := c.fx
		if !got.endsKnown {
			t.Error("a local commit's ends are not marked as recorded")
		}
		if d := diffEffects(&got, &want, false); d != "" {
			t.Error(d)
		}
	})
}

// TestForeignDecodeMatchesLocal: the keys each local commit wrote, decoded
// as another node's commit would be (decodeChanges, resolveForeign), give
// the same effects, and subscribers are told the same ends either way.
func TestForeignDecodeMatchesLocal(t *testing.T) {
	// It decodes and applies each commit by hand, which on etcd the watch
	// is doing at the same moment, and counts the notifications.
	pebbleOnly(t)
	runLifecycle(t, func(t *testing.T, l *lifecycle, _ lifecycleStep, c committed) {
		fx := decodeChanges(c.keys)
		l.s.resolveForeign(&fx)
		if d := diffEffects(&fx, &c.fx, true); d != "" {
			t.Error(d)
		}

		// What subscribers hear: the recorded ends, and the ones read
		// back from the records for the same keys.
		var rec recorder
		unsub := l.s.Subscribe(rec.fn)
		defer unsub()
		local := effects{endsKnown: true, ends: c.fx.ends, tenants: c.fx.tenants}
		l.s.notify(&local)
		l.s.applyForeign(c.keys)
		got := rec.take()
		if len(got) == 1 || len(got) > 2 {
			t.Fatalf("%d invalidations: %+v", len(got), got)
		}
		if len(got) == 2 {
			a, b := got[0], got[1]
			sortEnds(a.Secrets)
			sortEnds(b.Secrets)
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("local commit told %+v, the same keys from another node %+v", a, b)
			}
		}
	})
}

func sortEnds(e []SecretEnd) {
	sort.Slice(e, func(i, j int) bool { return bytes.Compare(e[i].Hash[:], e[j].Hash[:]) < 0 })
}

// diffEffects compares the effects that matter. foreign: got was decoded
// from keys, so a rotation's rewritten index makes it recount (a superset
// of want's counted tenants), and its ends are not recorded.
func diffEffects(got, want *effects, foreign bool) string {
	set := func(hs []SecretHash) []string {
		var out []string
		for _, h := range hs {
			out = append(out, fmt.Sprintf("%x", h[:4]))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	strs := func(s []string) []string {
		out := slices.Clone(s)
		slices.Sort(out)
		return slices.Compact(out)
	}
	var d []string
	if g, w := set(got.secrets), set(want.secrets); !slices.Equal(g, w) {
		d = append(d, fmt.Sprintf("secrets %v, want %v", g, w))
	}
	if g, w := strs(got.tenants), strs(want.tenants); !slices.Equal(g, w) {
		d = append(d, fmt.Sprintf("tenants %v, want %v", g, w))
	}
	if g, w := fmt.Sprint(got.groups), fmt.Sprint(want.groups); g != w {
		d = append(d, fmt.Sprintf("groups %v, want %v", g, w))
	}
	if g, w := strs(got.deleted), strs(want.deleted); !slices.Equal(g, w) {
		d = append(d, fmt.Sprintf("deleted %v, want %v", g, w))
	}
	if foreign {
		for t := range want.counts {
			if !slices.Contains(got.recount, t) {
				d = append(d, fmt.Sprintf("recount %v misses %q", got.recount, t))
			}
		}
	} else {
		if g, w := fmt.Sprint(got.counts), fmt.Sprint(want.counts); g != w && len(got.counts)+len(want.counts) > 0 {
			d = append(d, fmt.Sprintf("counts %v, want %v", g, w))
		}
		g, w := slices.Clone(got.ends), slices.Clone(want.ends)
		sortEnds(g)
		sortEnds(w)
		if fmt.Sprint(g) != fmt.Sprint(w) {
			d = append(d, fmt.Sprintf("ends %+v, want %+v", g, w))
		}
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprint(d)
}

// TestUpdateKeyLeavesGraceRecord: an edit writes the key's record only —
// not its rotated-out secret's grace record — and yet the grace secret's
// cached view (built from the key's record) shows the edit at once.
func TestUpdateKeyLeavesGraceRecord(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "acme")
	k, old := mustKey(t, s, "acme", "alice", KeyInput{Name: "kk"})
	g := Duration(time.Hour)
	_, _, err := s.RotateKey("op", "acme", k.ID, RotateInput{GracePeriod: &g})
	mustNil(t, err)
	oldHash := s.hasher.hash(old)
	if v, verdict, _ := s.Verify("acme", old, clk.Now()); verdict != VerdictValid || v.Allow != nil {
		t.Fatal("setup: the grace secret does not verify")
	}
	take := recordCommits(s)
	_, err = s.UpdateKey("op", "acme", k.ID, KeyPatch{IPAllowlist: Some([]string{"10.0.0.0/8"})})
	mustNil(t, err)
	got := take()
	if len(got) != 1 {
		t.Fatalf("%d commits", len(got))
	}
	graceKey := hashKey(pKeyHash, oldHash)
	for _, key := range got[0].keys {
		if bytes.Equal(key, graceKey) {
			t.Fatal("UpdateKey wrote the grace record")
		}
	}
	v, verdict, err := s.Verify("acme", old, clk.Now())
	mustNil(t, err)
	if verdict != VerdictValid || v.Allow == nil {
		t.Fatalf("the grace secret's view after the edit: %s, allowlist %v", vname(verdict), v.Allow)
	}
}

// TestOwnCommitAppliedOnce: the KV's watch echo of a local commit is not
// applied a second time (one generation bump per write, no recount after a
// create), while a batch written to the KV by anyone else is decoded.
func TestOwnCommitAppliedOnce(t *testing.T) {
	s := memStore(t, newClock())
	enable(t, s, "acme")
	mustKey(t, s, "acme", "alice", KeyInput{})
	if n, err := s.countTenantKeys("acme"); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	key, sec := mustKey(t, s, "acme", "alice", KeyInput{})
	h := s.hasher.hash(sec)
	s.cmu.Lock()
	n, counted := s.keyCounts["acme"]
	s.cmu.Unlock()
	if !counted || n != 2 {
		t.Fatalf("the create's echo made the count be read again (%d, %v)", n, counted)
	}
	gen := s.vcache.gen(h).Load()
	_, err := s.RevokeKey("op", "acme", key.ID)
	mustNil(t, err)
	if d := s.vcache.gen(h).Load() - gen; d != 1 {
		t.Fatalf("a revoke bumped the generation %d times, want 1", d)
	}

	// A raw write (as another writer's commit would arrive): decoded.
	gen = s.vcache.gen(h).Load()
	var b Batch
	b.Delete(hashKey(pKeyHash, h))
	b.Set(k(pTenant+"acme"), mustJSON(tenantRecord{ID: "acme"})) // API keys disabled
	mustNil(t, s.kv.Apply(&b, true))
	if s.vcache.gen(h).Load() == gen {
		t.Fatal("a foreign write to a secret did not bump its generation")
	}
	if s.TenantEnabled("acme") {
		t.Fatal("a foreign write disabling a tenant was not read into the hot state")
	}
}

// deafKV is a KV whose watch never reports anything: the store loses track
// of other writers, as after a compacted etcd watch.
type deafKV struct{ KV }

func (deafKV) Watch(func(keys [][]byte)) {}

// TestReloadAll: changes the store was never told of (written to the KV
// behind its back) are seen once ReloadAll returns: cached views are
// dropped, the tenant state re-read, subscribers told to re-check all.
func TestReloadAll(t *testing.T) {
	kv := memPebble(t)
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = deafKV{kv} })
	enable(t, s, "acme")
	enable(t, s, "globex")
	key, sec := mustKey(t, s, "acme", "alice", KeyInput{})
	if verdict(t, s, "acme", sec, clk.Now()) != VerdictValid {
		t.Fatal("setup")
	}
	s.Wait() // the view is cached

	// Behind the store's back: the key is revoked, globex disabled.
	rec, h, err := s.loadKey("acme", key.ID)
	mustNil(t, err)
	now := clk.Now()
	rec.RevokedAt = &now
	var b Batch
	b.Set(hashKey(pKeyHash, h), encodeKeyRecord(rec))
	b.Set(k(pTenant+"globex"), mustJSON(tenantRecord{ID: "globex"}))
	mustNil(t, kv.Apply(&b, true))
	if verdict(t, s, "acme", sec, clk.Now()) != VerdictValid || !s.TenantEnabled("globex") {
		t.Fatal("setup: the store saw a change it was not told of")
	}

	var r recorder
	defer s.Subscribe(r.fn)()
	s.ReloadAll()
	if v := verdict(t, s, "acme", sec, clk.Now()); v != VerdictRevoked {
		t.Fatalf("after ReloadAll: %s", vname(v))
	}
	if s.TenantEnabled("globex") || !s.TenantEnabled("acme") {
		t.Fatal("after ReloadAll the tenant state is stale")
	}
	if got := r.take(); len(got) != 1 || !got[0].All {
		t.Fatalf("subscribers were told %+v", got)
	}
}

// failingAfterKV commits the batch, then reports a failure (a networked
// KV's timeout after the commit), or fails without committing.
type failingAfterKV struct {
	KV
	commit bool
	fail   bool
}

var errAmbiguous = errors.New("kv: deadline exceeded")

func (k *failingAfterKV) Apply(b *Batch, sync bool) error {
	if !k.fail {
		return k.KV.Apply(b, sync)
	}
	if k.commit {
		if err := k.KV.Apply(b, sync); err != nil {
			return err
		}
	}
	return errAmbiguous
}

// TestUncertainCommit: a write whose Apply failed may have committed. Its
// effects are applied anyway, and subscribers hear what the records say:
// the revocation when it committed, nothing when it did not.
func TestUncertainCommit(t *testing.T) {
	for _, committedToo := range []bool{true, false} {
		t.Run(fmt.Sprintf("committed=%v", committedToo), func(t *testing.T) {
			kv := memPebble(t)
			fkv := &failingAfterKV{KV: kv}
			clk := newClock()
			s := memStore(t, clk, func(o *Options) { o.KV = fkv })
			enable(t, s, "acme")
			key, sec := mustKey(t, s, "acme", "alice", KeyInput{})
			if verdict(t, s, "acme", sec, clk.Now()) != VerdictValid {
				t.Fatal("setup")
			}
			s.Wait()
			var r recorder
			defer s.Subscribe(r.fn)()
			fkv.fail, fkv.commit = true, committedToo
			if _, err := s.RevokeKey("op", "acme", key.ID); !errors.Is(err, errAmbiguous) {
				t.Fatalf("RevokeKey: %v", err)
			}
			got := secretsOf(r.take())
			want := VerdictValid
			if committedToo {
				want = VerdictRevoked
				if len(got) != 1 || got[0].Code != "key_revoked" {
					t.Fatalf("subscribers were told %+v", got)
				}
			} else if len(got) != 0 {
				t.Fatalf("a write that did not commit told subscribers %+v", got)
			}
			if v := verdict(t, s, "acme", sec, clk.Now()); v != want {
				t.Fatalf("after the uncertain revoke: %s, want %s", vname(v), vname(want))
			}
		})
	}
}

// tenantReadFailKV fails every read of a tenant record once armed and a
// batch has been applied: the read that reloads the hot state after a
// commit fails.
type tenantReadFailKV struct {
	KV
	armed, failing atomic.Bool
}

func (k *tenantReadFailKV) Apply(b *Batch, sync bool) error {
	err := k.KV.Apply(b, sync)
	if k.armed.Load() {
		k.failing.Store(true)
	}
	return err
}

func (k *tenantReadFailKV) Get(key []byte) ([]byte, error) {
	if k.failing.Load() && bytes.HasPrefix(key, []byte(pTenant)) {
		return nil, errAmbiguous
	}
	return k.KV.Get(key)
}

// TestTenantReloadFailsClosed: when a tenant's record cannot be read back
// after a write to it, its API keys count as disabled (the write may have
// disabled them) until a later change reads it.
func TestTenantReloadFailsClosed(t *testing.T) {
	kv := memPebble(t)
	fkv := &tenantReadFailKV{KV: kv}
	s := memStore(t, newClock(), func(o *Options) { o.KV = fkv })
	enable(t, s, "acme")
	enable(t, s, "globex")
	fkv.armed.Store(true)
	_, err := s.UpdateSettings("op", "acme", SettingsPatch{APIKeysEnabled: Some(false)})
	mustNil(t, err)
	if s.TenantEnabled("acme") {
		t.Fatal("a tenant whose record could not be read after a write still admits")
	}
	if !s.TenantEnabled("globex") {
		t.Fatal("another tenant was touched")
	}
	fkv.armed.Store(false)
	fkv.failing.Store(false)
	_, err = s.UpdateSettings("op", "acme", SettingsPatch{APIKeysEnabled: Some(true)})
	mustNil(t, err)
	if !s.TenantEnabled("acme") {
		t.Fatal("the next change did not read the tenant again")
	}
}

// TestForeignRevocationRace: the PITFALLS 14 race for a revocation that
// arrives as another writer's commit (decoded from its keys by the watch):
// once it is applied, no Verify that starts afterwards admits the key.
func TestForeignRevocationRace(t *testing.T) {
	raceRounds(t, 8, func(s *Store, id string) error {
		rec, h, err := s.loadKey(DefaultTenant, id)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		rec.RevokedAt = &now
		var b Batch
		b.Set(hashKey(pKeyHash, h), encodeKeyRecord(rec))
		return s.kv.Apply(&b, true) // Pebble runs the watch before returning
	})
}
