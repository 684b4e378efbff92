package store

import (
	"testing"
	"time"
)

// A repeated unknown secret is answered by the negative table: no store
// read, no ristretto; the entry counts only with its hash, its stripe's
// generation and before it expires, and a colliding fill replaces it.
func TestNegTable(t *testing.T) {
	kv := memPebble(t)
	ckv := &getCountingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = ckv })
	enable(t, s, DefaultTenant)
	garbage := NewSecret(KeyPrefix)
	if v := verdict(t, s, DefaultTenant, garbage, clk.Now()); v != VerdictInvalid {
		t.Fatal(vname(v))
	}
	s.Wait()
	gets := ckv.gets.Load()
	s.vcache.neg.Clear() // only the table can answer now
	for range 10 {
		if v := verdict(t, s, DefaultTenant, garbage, clk.Now()); v != VerdictInvalid {
			t.Fatal(vname(v))
		}
	}
	if g := ckv.gets.Load() - gets; g != 0 {
		t.Fatalf("a cached unknown secret read the store %d times", g)
	}
	// Expired: read again (and cached again).
	clk.Advance(s.vcache.ttl)
	_ = verdict(t, s, DefaultTenant, garbage, clk.Now())
	if g := ckv.gets.Load() - gets; g != 1 {
		t.Fatalf("an expired entry: %d store reads, want 1", g)
	}

	n := newNegTable(100)
	if len(n.slots) != 128 || len(newNegTable(1<<30).slots) != negTableMax {
		t.Fatalf("sizes %d, %d", len(n.slots), len(newNegTable(1<<30).slots))
	}
	now := time.Now().UnixNano()
	a, b := SecretHash{1}, SecretHash{2}
	const ck = 7 // both in one slot
	n.put(ck, &negEntry{hash: a, gen: 3, expires: now + 1})
	switch {
	case !n.known(a, ck, 3, now):
		t.Fatal("entry not found")
	case n.known(a, ck, 4, now):
		t.Fatal("an entry of an older generation counted")
	case n.known(a, ck, 3, now+1):
		t.Fatal("an expired entry counted")
	case n.known(b, ck, 3, now):
		t.Fatal("another secret's entry counted")
	}
	n.put(ck, &negEntry{hash: b, gen: 3, expires: now + 1})
	if n.known(a, ck, 3, now) || !n.known(b, ck, 3, now) {
		t.Fatal("a colliding fill did not replace the slot")
	}
	n.remove(a, ck) // not a's slot any more: b stays
	if !n.known(b, ck, 3, now) {
		t.Fatal("removing another secret's entry dropped b")
	}
	n.remove(b, ck)
	if n.known(b, ck, 3, now) {
		t.Fatal("removed entry still known")
	}
}

// A secret cached as unknown is valid as soon as a key with it commits:
// the import bumps its stripe's generation (and frees the table's slot).
func TestNegTableSeesImport(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "moved")
	importOne(t, s, "moved", ImportInput{KeyInput: KeyInput{Name: "first"}, Owner: "alice", Secret: hexSecret})
	for range 3 {
		if v := verdict(t, s, "moved", uuidSecret, clk.Now()); v != VerdictInvalid {
			t.Fatal(vname(v))
		}
	}
	importOne(t, s, "moved", ImportInput{KeyInput: KeyInput{Name: "second"}, Owner: "alice", Secret: uuidSecret})
	if v := verdict(t, s, "moved", uuidSecret, clk.Now()); v != VerdictValid {
		t.Fatalf("imported secret answered %s: the negative entry survived the import", vname(v))
	}
}
