package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Foreign secrets of the formats teams move from.
const (
	uuidSecret = "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"
	hexSecret  = "0123456789abcdef0123456789abcdef01234567"
	kongSecret = "kong-Zb3Xq9PpLr7Tt1Vv5Ww2Yy8Aa4Cc6Ee0"
)

// getCountingKV counts Gets, to prove a path never reaches the store.
type getCountingKV struct {
	KV
	gets atomic.Int64
}

func (k *getCountingKV) Get(key []byte) ([]byte, error) {
	k.gets.Add(1)
	return k.KV.Get(key)
}

func importOne(t testing.TB, s *Store, tenant string, in ImportInput) string {
	t.Helper()
	res, n, err := s.ImportKeys("op", tenant, "", []ImportInput{in})
	mustNil(t, err)
	if n != 1 || res[0].Error != nil || res[0].ID == nil {
		t.Fatalf("import: %d imported, result %+v (error %v)", n, res[0], deref(res[0].Error))
	}
	return *res[0].ID
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func TestImportKeysForeignSecretsVerify(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	native := NewSecret(KeyPrefix)
	secrets := []string{uuidSecret, hexSecret, kongSecret, native, strings.Repeat("x", ImportSecretMax)}
	in := make([]ImportInput, len(secrets))
	for i, sec := range secrets {
		in[i] = ImportInput{KeyInput: KeyInput{Name: fmt.Sprintf("moved %d", i)}, Owner: "alice", Secret: sec}
	}
	if s.HasImportedKeys(DefaultTenant) {
		t.Fatal("a fresh tenant has imported keys")
	}
	res, n, err := s.ImportKeys("user:admin", DefaultTenant, "", in)
	mustNil(t, err)
	if n != len(in) {
		t.Fatalf("imported %d of %d: %+v", n, len(in), res)
	}
	if !s.HasImportedKeys(DefaultTenant) {
		t.Fatal("HasImportedKeys is false after an import")
	}
	for i, r := range res {
		if r.Index != i || r.ID == nil || r.Error != nil {
			t.Fatalf("result %d: %+v", i, r)
		}
		view, v, err := s.Verify(DefaultTenant, secrets[i], clk.Now())
		mustNil(t, err)
		if v != VerdictValid || view.ID != *r.ID || view.Owner != "alice" {
			t.Fatalf("secret %d verifies as %s (%+v)", i, vname(v), view)
		}
		key, err := s.GetKey(DefaultTenant, *r.ID)
		mustNil(t, err)
		if key.Hint == "" || len(key.Hint) >= len(secrets[i]) || strings.Contains(secrets[i], strings.TrimSuffix(key.Hint, "…")) && len(key.Hint) > 12 {
			t.Fatalf("hint %q of secret %d", key.Hint, i)
		}
	}
	if h := ImportedHint(uuidSecret); h != "3f2b…8b9a" {
		t.Fatalf("UUID hint %q", h)
	}
	if h := ImportedHint("abcdefghijklmnop"); h != "ab…op" {
		t.Fatalf("16-character hint %q", h)
	}
	if h := ImportedHint(native); h != Hint(native) {
		t.Fatalf("native secret's hint %q, want %q", h, Hint(native))
	}
	// Another tenant does not admit them, nor does a near miss.
	enable(t, s, "other")
	if v := verdict(t, s, "other", uuidSecret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("imported secret in another tenant: %s", vname(v))
	}
	if v := verdict(t, s, DefaultTenant, uuidSecret[:len(uuidSecret)-1]+"b", clk.Now()); v != VerdictInvalid {
		t.Fatalf("near miss: %s", vname(v))
	}
	// Audit events: one key.imported per key, no secret anywhere.
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.imported"})
	if len(evs) != len(in) {
		t.Fatalf("%d key.imported events, want %d", len(evs), len(in))
	}
	raw, _ := json.Marshal(evs)
	for _, sec := range secrets {
		if strings.Contains(string(raw), sec) {
			t.Fatal("an event holds an imported secret")
		}
	}
}

func TestImportKeysPerEntryErrors(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(2)})
	mustNil(t, err)
	importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "stored"}, Owner: "carol", Secret: hexSecret})

	past := clk.Now().Add(-time.Hour)
	spaced := "has a space in it 1234"
	in := []ImportInput{
		{KeyInput: KeyInput{Name: "ok 0"}, Owner: "alice", Secret: uuidSecret},                                          // 0 ok
		{KeyInput: KeyInput{Name: ""}, Owner: "alice", Secret: kongSecret},                                              // 1 name
		{KeyInput: KeyInput{Name: "short"}, Owner: "alice", Secret: "tooshort"},                                         // 2 secret
		{KeyInput: KeyInput{Name: "space"}, Owner: "alice", Secret: spaced},                                             // 3 secret
		{KeyInput: KeyInput{Name: "dup"}, Owner: "bob", Secret: uuidSecret},                                             // 4 dup of 0
		{KeyInput: KeyInput{Name: "stored"}, Owner: "bob", Secret: hexSecret},                                           // 5 stored
		{KeyInput: KeyInput{Name: "group", Group: "nope"}, Owner: "bob", Secret: kongSecret + "1"},                      // 6 group
		{KeyInput: KeyInput{Name: "past", ExpiresAt: &past}, Owner: "bob", Secret: kongSecret + "2"},                    // 7 expiry
		{KeyInput: KeyInput{Name: "cidr", IPAllowlist: []string{"10.0.0.300"}}, Owner: "bob", Secret: kongSecret + "3"}, // 8 allowlist
		{KeyInput: KeyInput{Name: "me"}, Owner: "me", Secret: kongSecret + "4"},                                         // 9 owner
		{KeyInput: KeyInput{Name: "ok 10"}, Owner: "alice", Secret: kongSecret + "5"},                                   // 10 ok
		{KeyInput: KeyInput{Name: "third"}, Owner: "alice", Secret: kongSecret + "6"},                                   // 11 per-user limit
		{KeyInput: KeyInput{Name: "no owner"}, Secret: kongSecret + "7"},                                                // 12 operator: owner required
	}
	res, n, err := s.ImportKeys("operator", DefaultTenant, "", in)
	mustNil(t, err)
	want := map[int]string{
		1: "name", 2: "secret", 3: "secret", 4: "the same as entry 0", 5: "already in use", 6: "group",
		7: "expires_at", 8: "ip_allowlist", 9: "owner", 11: "max_keys_per_user", 12: "owner",
	}
	if n != 2 {
		t.Fatalf("imported %d, want 2: %+v", n, res)
	}
	for i, r := range res {
		if r.Index != i {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
		w, bad := want[i]
		if !bad {
			if r.ID == nil || r.Error != nil {
				t.Fatalf("entry %d: %+v (%s)", i, r, deref(r.Error))
			}
			continue
		}
		if r.ID != nil || r.Error == nil || !strings.Contains(*r.Error, w) {
			t.Fatalf("entry %d: id %v, error %q; want an error about %q", i, r.ID, deref(r.Error), w)
		}
		if strings.Contains(*r.Error, in[i].Secret) {
			t.Fatalf("entry %d's error quotes its secret: %q", i, *r.Error)
		}
	}
	// Skipped entries were not stored; the others were.
	for i, want := range map[int]Verdict{0: VerdictValid, 10: VerdictValid, 6: VerdictInvalid, 11: VerdictInvalid, 3: VerdictInvalid} {
		if v := verdict(t, s, DefaultTenant, in[i].Secret, clk.Now()); v != want {
			t.Fatalf("entry %d verifies as %s, want %s", i, vname(v), vname(want))
		}
	}
	// The stored key still has its owner: the duplicate did not overwrite it.
	view, _, err := s.Verify(DefaultTenant, hexSecret, clk.Now())
	mustNil(t, err)
	if view.Owner != "carol" {
		t.Fatalf("the stored key's owner is %q", view.Owner)
	}

	// The tenant's key_limit counts the entries in order.
	_, err = s.UpdateTenant("op", DefaultTenant, TenantPatch{KeyLimit: Some(4)})
	mustNil(t, err)
	res, n, err = s.ImportKeys("op", DefaultTenant, "", []ImportInput{
		{KeyInput: KeyInput{Name: "fourth"}, Owner: "dave", Secret: kongSecret + "8"},
		{KeyInput: KeyInput{Name: "fifth"}, Owner: "dave", Secret: kongSecret + "9"},
	})
	mustNil(t, err)
	if n != 1 || res[0].ID == nil || res[1].Error == nil || !strings.Contains(*res[1].Error, "key_limit_reached") {
		t.Fatalf("key_limit: %d imported, %+v %s", n, res, deref(res[1].Error))
	}
}

func TestImportKeysCallLimits(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	for _, n := range []int{0, MaxImport + 1} {
		_, _, err := s.ImportKeys("op", DefaultTenant, "alice", make([]ImportInput, n))
		wantFields(t, err, "keys")
	}
	// api_keys_enabled false refuses the call.
	_, _, err := s.ImportKeys("op", DefaultTenant, "alice", []ImportInput{{KeyInput: KeyInput{Name: "key"}, Secret: uuidSecret}})
	wantErr(t, err, KindDisabled, "api_keys_disabled")
	_, _, err = s.ImportKeys("op", "nope", "alice", []ImportInput{{KeyInput: KeyInput{Name: "key"}, Secret: uuidSecret}})
	wantErr(t, err, KindNotFound, "not_found")
	if s.HasImportedKeys(DefaultTenant) {
		t.Fatal("refused imports set the flag")
	}
}

// A failed write leaves nothing: no key, no index, no flag, no count.
func TestImportKeysAtomic(t *testing.T) {
	kv := memPebble(t)
	fkv := &failingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = fkv })
	enable(t, s, DefaultTenant)
	in := make([]ImportInput, 100)
	for i := range in {
		in[i] = ImportInput{KeyInput: KeyInput{Name: "key"}, Owner: fmt.Sprintf("u%d", i), Secret: fmt.Sprintf("%s-%03d", uuidSecret, i)}
	}
	fkv.fail.Store(true)
	if _, _, err := s.ImportKeys("op", DefaultTenant, "", in); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("import on a failing store: %v", err)
	}
	fkv.fail.Store(false)
	if s.HasImportedKeys(DefaultTenant) {
		t.Fatal("a failed import set the flag")
	}
	tn, err := s.GetTenant(DefaultTenant)
	mustNil(t, err)
	page, err := s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	if tn.KeyCount != 0 || page.Total != 0 || len(allEvents(t, s, DefaultTenant, EventQuery{Type: "key.imported"})) != 0 {
		t.Fatalf("a failed import left %d keys (%d listed)", tn.KeyCount, page.Total)
	}
	// The same call then succeeds whole.
	_, n, err := s.ImportKeys("op", DefaultTenant, "", in)
	mustNil(t, err)
	if n != len(in) || verdict(t, s, DefaultTenant, in[99].Secret, clk.Now()) != VerdictValid {
		t.Fatalf("retry imported %d", n)
	}
}

// Uniqueness is per tenant: two tenants may import the same secret, and
// each admits only its own key.
func TestImportKeysUniquePerTenant(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "a")
	enable(t, s, "b")
	idA := importOne(t, s, "a", ImportInput{KeyInput: KeyInput{Name: "key"}, Owner: "alice", Secret: uuidSecret})
	idB := importOne(t, s, "b", ImportInput{KeyInput: KeyInput{Name: "key"}, Owner: "alice", Secret: uuidSecret})
	for tenant, id := range map[string]string{"a": idA, "b": idB} {
		view, v, err := s.Verify(tenant, uuidSecret, clk.Now())
		mustNil(t, err)
		if v != VerdictValid || view.ID != id {
			t.Fatalf("tenant %s: %s %+v", tenant, vname(v), view)
		}
	}
}

// Native keys keep their fast reject: for a tenant without imported keys a
// secret of a foreign format never reaches a cache or the store; for a
// tenant with imported keys an unknown one is read once, then answered by
// the negative cache, and never enters the positive cache.
func TestVerifyForeignSecretLookups(t *testing.T) {
	kv := memPebble(t)
	ckv := &getCountingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = ckv })
	enable(t, s, "plain")
	enable(t, s, "moved")
	importOne(t, s, "moved", ImportInput{KeyInput: KeyInput{Name: "key"}, Owner: "alice", Secret: hexSecret})
	s.Wait()

	gets := ckv.gets.Load()
	_, misses := s.CacheMetrics()
	for range 3 {
		for _, sec := range []string{uuidSecret, hexSecret, "garbage-garbage-garbage"} {
			if v := verdict(t, s, "plain", sec, clk.Now()); v != VerdictInvalid {
				t.Fatalf("%s on a tenant without imports", vname(v))
			}
		}
	}
	s.Wait()
	if g := ckv.gets.Load() - gets; g != 0 {
		t.Fatalf("foreign secrets on a tenant without imports read the store %d times", g)
	}
	if _, m := s.CacheMetrics(); m != misses {
		t.Fatalf("foreign secrets on a tenant without imports reached the cache (%d misses)", m-misses)
	}

	// The importing tenant: a short or spaced secret is still rejected
	// before any lookup; an unknown importable one is read once.
	for _, sec := range []string{"short", "has a space in it 1234", strings.Repeat("y", ImportSecretMax+1)} {
		if v := verdict(t, s, "moved", sec, clk.Now()); v != VerdictInvalid {
			t.Fatalf("%q: %s", sec, vname(v))
		}
	}
	if g := ckv.gets.Load() - gets; g != 0 {
		t.Fatalf("unimportable secrets read the store %d times", g)
	}
	for range 5 {
		if v := verdict(t, s, "moved", uuidSecret, clk.Now()); v != VerdictInvalid {
			t.Fatalf("unknown foreign secret: %s", vname(v))
		}
		s.Wait()
	}
	if g := ckv.gets.Load() - gets; g != 1 {
		t.Fatalf("an unknown foreign secret read the store %d times, want 1 (then the negative cache)", g)
	}
	if v := verdict(t, s, "moved", hexSecret, clk.Now()); v != VerdictValid {
		t.Fatalf("imported secret: %s", vname(v))
	}
}

// Revoking, rotating and reopening work for imported keys as for others.
func TestImportedKeyLifecycle(t *testing.T) {
	clk := newClock()
	fs := memFS()
	s := memStoreFS(t, fs, clk, []byte("pepper"))
	enable(t, s, DefaultTenant)
	idRevoke := importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "revoked"}, Owner: "alice", Secret: uuidSecret})
	idRotate := importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "rotated"}, Owner: "alice", Secret: hexSecret})
	if v := verdict(t, s, DefaultTenant, uuidSecret, clk.Now()); v != VerdictValid {
		t.Fatalf("before revoke: %s", vname(v))
	}
	_, err := s.RevokeKey("op", DefaultTenant, idRevoke)
	mustNil(t, err)
	if v := verdict(t, s, DefaultTenant, uuidSecret, clk.Now()); v != VerdictRevoked {
		t.Fatalf("after revoke: %s", vname(v))
	}
	_, fresh, err := s.RotateKey("op", DefaultTenant, idRotate, RotateInput{})
	mustNil(t, err)
	if v := verdict(t, s, DefaultTenant, hexSecret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("rotated-out imported secret: %s", vname(v))
	}
	if v := verdict(t, s, DefaultTenant, fresh, clk.Now()); v != VerdictValid {
		t.Fatalf("the rotated key's new secret: %s", vname(v))
	}
	// Rotating with a grace period keeps the imported secret working
	// until the grace ends, then only the new one.
	idGrace := importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "graceful"}, Owner: "alice", Secret: "grace-secret-000000001"})
	_, fresh2, err := s.RotateKey("op", DefaultTenant, idGrace, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	for _, sec := range []string{"grace-secret-000000001", fresh2} {
		if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
			t.Fatalf("in the grace period: %s", vname(v))
		}
	}
	if v := verdict(t, s, DefaultTenant, "grace-secret-000000001", clk.Advance(2*time.Hour)); v != VerdictInvalid {
		t.Fatalf("after the grace period: %s", vname(v))
	}
	// The flag is stored: a reopened store still looks imported secrets up.
	importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "kept"}, Owner: "bob", Secret: kongSecret})
	mustNil(t, s.Close())
	s2 := memStoreFS(t, fs, clk, []byte("pepper"))
	if !s2.HasImportedKeys(DefaultTenant) || verdict(t, s2, DefaultTenant, kongSecret, clk.Now()) != VerdictValid {
		t.Fatal("the imported key does not survive a reopen")
	}
	// Settings changes keep the flag.
	_, err = s2.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(5)})
	mustNil(t, err)
	if !s2.HasImportedKeys(DefaultTenant) {
		t.Fatal("a settings change cleared the flag")
	}
}

// Importing secrets of the native layout (moving from another keygate)
// does not turn on the lookup of foreign secrets: they are found as native
// keys are, and garbage on that tenant is still rejected before any lookup.
func TestImportNativeSecretsKeepFastReject(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	native := NewSecret(KeyPrefix)
	importOne(t, s, DefaultTenant, ImportInput{KeyInput: KeyInput{Name: "from keygate"}, Owner: "alice", Secret: native})
	if s.HasImportedKeys(DefaultTenant) {
		t.Fatal("a native-format import turned on the foreign lookup")
	}
	if v := verdict(t, s, DefaultTenant, native, clk.Now()); v != VerdictValid {
		t.Fatalf("imported native secret: %s", vname(v))
	}
}
