package store

import (
	"sync"
	"testing"
	"time"
)

// recorder collects invalidations.
type recorder struct {
	mu  sync.Mutex
	got []Invalidation
}

func (r *recorder) fn(inv Invalidation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, inv)
}

// take returns and forgets what was delivered so far.
func (r *recorder) take() []Invalidation {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.got
	r.got = nil
	return g
}

// secretsOf flattens the delivered secret ends.
func secretsOf(invs []Invalidation) []SecretEnd {
	var out []SecretEnd
	for _, inv := range invs {
		out = append(out, inv.Secrets...)
	}
	return out
}

func TestSubscribeDeliversBeforeTheWriteReturns(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "acme")
	var rec recorder
	unsub := s.Subscribe(rec.fn)
	defer unsub()

	k1, sec1, err := s.CreateKey("a", "acme", "alice", KeyInput{Name: "one"})
	if err != nil {
		t.Fatal(err)
	}
	h1 := s.hasher.hash(sec1)
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("creating a key invalidated %+v", got)
	}
	if _, err := s.UpdateKey("a", "acme", k1.ID, KeyPatch{Name: Some("renamed")}); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("renaming a key invalidated %+v", got)
	}

	// Revoke: delivered, synchronously, with the key id.
	if _, err := s.RevokeKey("a", "acme", k1.ID); err != nil {
		t.Fatal(err)
	}
	got := secretsOf(rec.take())
	if len(got) != 1 || got[0].Hash != h1 || got[0].KeyID != k1.ID || !got[0].At.IsZero() || got[0].Code != "key_revoked" {
		t.Fatalf("revoke delivered %+v", got)
	}

	// Delete: the record is gone, the hash still names the secret.
	k2, sec2, _ := s.CreateKey("a", "acme", "alice", KeyInput{Name: "two"})
	rec.take()
	if err := s.DeleteKey("a", "acme", k2.ID); err != nil {
		t.Fatal(err)
	}
	if got := secretsOf(rec.take()); len(got) != 1 || got[0].Hash != s.hasher.hash(sec2) || !got[0].At.IsZero() {
		t.Fatalf("delete delivered %+v", got)
	}

	// Rotation without grace ends the old secret only.
	k3, sec3, _ := s.CreateKey("a", "acme", "alice", KeyInput{Name: "three"})
	rec.take()
	_, sec3b, err := s.RotateKey("a", "acme", k3.ID, RotateInput{})
	if err != nil {
		t.Fatal(err)
	}
	got = secretsOf(rec.take())
	if len(got) != 1 || got[0].Hash != s.hasher.hash(sec3) || !got[0].At.IsZero() {
		t.Fatalf("rotation delivered %+v", got)
	}

	// Rotation with grace: the old secret ends at the grace end.
	g := Duration(time.Minute)
	if _, _, err := s.RotateKey("a", "acme", k3.ID, RotateInput{GracePeriod: &g}); err != nil {
		t.Fatal(err)
	}
	got = secretsOf(rec.take())
	if len(got) != 1 || got[0].Hash != s.hasher.hash(sec3b) || got[0].KeyID != k3.ID || !got[0].At.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("rotation with grace delivered %+v", got)
	}

	// Tenant disabled: the tenant is named; enabling it again is not news.
	if _, err := s.UpdateSettings("a", "acme", SettingsPatch{APIKeysEnabled: Some(false)}); err != nil {
		t.Fatal(err)
	}
	if invs := rec.take(); len(invs) != 1 || len(invs[0].Tenants) != 1 || invs[0].Tenants[0] != "acme" {
		t.Fatalf("disable delivered %+v", invs)
	}
	if _, err := s.UpdateSettings("a", "acme", SettingsPatch{APIKeysEnabled: Some(true)}); err != nil {
		t.Fatal(err)
	}
	if invs := rec.take(); len(invs) != 0 {
		t.Fatalf("enable delivered %+v", invs)
	}

	unsub()
	k4, _, _ := s.CreateKey("a", "acme", "alice", KeyInput{Name: "four"})
	if _, err := s.RevokeKey("a", "acme", k4.ID); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("delivered after unsubscribe: %+v", got)
	}
}

func TestBulkRevokeDeliversEverySecret(t *testing.T) {
	s := memStore(t, newClock())
	enable(t, s, "acme")
	var rec recorder
	defer s.Subscribe(rec.fn)()
	var ids []string
	want := map[SecretHash]bool{}
	for range 3 {
		k, sec, err := s.CreateKey("a", "acme", "alice", KeyInput{Name: "kk"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
		want[s.hasher.hash(sec)] = true
	}
	if _, err := s.RevokeKeys("a", "acme", ids); err != nil {
		t.Fatal(err)
	}
	got := secretsOf(rec.take())
	for _, e := range got {
		delete(want, e.Hash)
	}
	if len(got) != 3 || len(want) != 0 {
		t.Fatalf("bulk revoke delivered %d ends, missing %d", len(got), len(want))
	}
}

func TestAdmitsUntil(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "acme")
	exp := clk.Now().Add(time.Hour)
	k, sec, err := s.CreateKey("a", "acme", "alice", KeyInput{Name: "kk", ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	v, verdict, err := s.Verify("acme", sec, clk.Now())
	if err != nil || verdict != VerdictValid {
		t.Fatal(verdict, err)
	}
	if until, code, ok := s.AdmitsUntil(v, clk.Now()); !ok || !until.Equal(exp) || code != "key_expired" {
		t.Fatalf("fresh view: %v %q %v", until, code, ok)
	}
	// A rotation with grace after the view was taken: the stale view
	// learns the grace end from the record.
	g := Duration(time.Minute)
	if _, _, err := s.RotateKey("a", "acme", k.ID, RotateInput{GracePeriod: &g}); err != nil {
		t.Fatal(err)
	}
	if until, code, ok := s.AdmitsUntil(v, clk.Now()); !ok || !until.Equal(clk.Now().Add(time.Minute)) || code != "invalid_key" {
		t.Fatalf("after rotation with grace: %v %q %v", until, code, ok)
	}
	if _, _, ok := s.AdmitsUntil(v, clk.Now().Add(time.Minute)); ok {
		t.Fatal("admits after its grace end")
	}
	// The view of the new secret, then a revoke: a stale view no longer admits.
	_, sec2, _ := s.RotateKey("a", "acme", k.ID, RotateInput{})
	v2, _, _ := s.Verify("acme", sec2, clk.Now())
	if _, err := s.RevokeKey("a", "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.AdmitsUntil(v2, clk.Now()); ok {
		t.Fatal("a revoked key's view still admits")
	}
	// Tenant disabled.
	k3, sec3, _ := s.CreateKey("a", "acme", "alice", KeyInput{Name: "k3"})
	_ = k3
	v3, _, _ := s.Verify("acme", sec3, clk.Now())
	if _, _, ok := s.AdmitsUntil(v3, clk.Now()); !ok {
		t.Fatal("fresh view refused")
	}
	if _, err := s.UpdateSettings("a", "acme", SettingsPatch{APIKeysEnabled: Some(false)}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.AdmitsUntil(v3, clk.Now()); ok {
		t.Fatal("admits with the tenant's API keys disabled")
	}
}
