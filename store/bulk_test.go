package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/keygate/keygate/store"
)

// bulkStore opens an in-memory store with API keys enabled for the default
// tenant and the given per-user limit.
func bulkStore(t *testing.T, perUser int) *store.Store {
	t.Helper()
	s, err := store.Open(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, err := s.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{
		APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(perUser),
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

func bulkInputs(n int) []store.KeyInput {
	in := make([]store.KeyInput, n)
	for i := range in {
		in[i] = store.KeyInput{Name: fmt.Sprintf("bulk key %d", i)}
	}
	return in
}

func bulkErr(t *testing.T, err error, kind store.Kind) *store.Error {
	t.Helper()
	var e *store.Error
	if !errors.As(err, &e) || e.Kind != kind {
		t.Fatalf("got %v, want an error of kind %d", err, kind)
	}
	return e
}

func bulkKeyCount(t *testing.T, s *store.Store) int {
	t.Helper()
	tn, err := s.GetTenant(store.DefaultTenant)
	if err != nil {
		t.Fatal(err)
	}
	return tn.KeyCount
}

func TestCreateKeysSecretsVerify(t *testing.T) {
	s := bulkStore(t, 1000)
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	in := bulkInputs(50)
	in[7].IPAllowlist = []string{"10.1.2.3", "2001:db8::/32"}
	in[8].ExpiresAt = &exp
	in[9].Description = "described"
	keys, secrets, err := s.CreateKeys("importer", store.DefaultTenant, "alice", in)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(in) || len(secrets) != len(in) {
		t.Fatalf("got %d keys and %d secrets for %d inputs", len(keys), len(secrets), len(in))
	}
	seen := map[string]bool{}
	for i, k := range keys {
		if k.Name != in[i].Name || k.Owner != "alice" || k.Tenant != store.DefaultTenant || k.Status != store.StatusActive {
			t.Fatalf("key %d: %+v", i, k)
		}
		if seen[k.ID] || seen[secrets[i]] {
			t.Fatalf("key %d: duplicate id or secret", i)
		}
		seen[k.ID], seen[secrets[i]] = true, true
		if !store.WellFormed(store.KeyPrefix, secrets[i]) || k.Hint != store.Hint(secrets[i]) {
			t.Fatalf("key %d: secret %q is not well formed or does not match hint %q", i, k.Hint, k.Hint)
		}
		view, verdict, err := s.Verify(store.DefaultTenant, secrets[i], time.Now())
		if err != nil || verdict != store.VerdictValid || view.ID != k.ID {
			t.Fatalf("key %d: verify: %v, verdict %d, view %+v", i, err, verdict, view)
		}
		got, err := s.GetKey(store.DefaultTenant, k.ID)
		if err != nil || got.Name != in[i].Name {
			t.Fatalf("key %d: get: %v %+v", i, err, got)
		}
	}
	if got := keys[7].IPAllowlist; strings.Join(got, ",") != "10.1.2.3/32,2001:db8::/32" {
		t.Errorf("allowlist not canonicalised: %v", got)
	}
	if keys[8].ExpiresAt == nil || !keys[8].ExpiresAt.Equal(exp) {
		t.Errorf("expires_at: %v, want %v", keys[8].ExpiresAt, exp)
	}
	if keys[9].Description != "described" {
		t.Errorf("description: %q", keys[9].Description)
	}
	// A secret of the batch is not valid for another tenant.
	if _, verdict, _ := s.Verify("other", secrets[0], time.Now()); verdict != store.VerdictInvalid {
		t.Errorf("verdict for another tenant: %d", verdict)
	}
	if n := bulkKeyCount(t, s); n != len(in) {
		t.Errorf("key count %d, want %d", n, len(in))
	}
	// One key.created event per key, with the actor.
	created := map[string]bool{}
	cursor := ""
	for {
		evs, next, err := s.ListEvents(store.DefaultTenant, store.EventQuery{Type: "key.created", Limit: 100, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.KeyID == nil || e.Actor != "importer" || created[*e.KeyID] {
				t.Fatalf("bad or duplicate event %+v", e)
			}
			created[*e.KeyID] = true
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for _, k := range keys {
		if !created[k.ID] {
			t.Errorf("no key.created event for %s", k.ID)
		}
	}
	if len(created) != len(keys) {
		t.Errorf("%d key.created events for %d keys", len(created), len(keys))
	}
	// The secrets are in no event.
	evs, _, err := s.ListEvents(store.DefaultTenant, store.EventQuery{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if js := fmt.Sprintf("%+v", e.Detail); strings.Contains(js, "kg_") {
			t.Fatalf("event %s holds a secret: %s", e.ID, js)
		}
	}
}

func TestCreateKeysPerUserLimit(t *testing.T) {
	s := bulkStore(t, 10)
	if _, _, err := s.CreateKey("test", store.DefaultTenant, "alice", store.KeyInput{Name: "first"}); err != nil {
		t.Fatal(err)
	}
	// 1 existing + 10 = 11 > 10: refused, nothing written.
	_, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(10))
	if e := bulkErr(t, err, store.KindLimit); e.Code != "key_limit_reached" {
		t.Fatalf("code %q", e.Code)
	}
	if n := bulkKeyCount(t, s); n != 1 {
		t.Fatalf("refused batch wrote keys: count %d", n)
	}
	// 1 + 9 = 10: exactly at the limit.
	if _, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(9)); err != nil {
		t.Fatalf("batch up to the limit: %v", err)
	}
	if _, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(1)); store.KindOf(err) != store.KindLimit {
		t.Fatalf("one more: %v", err)
	}
	// Another owner has its own allowance.
	if _, _, err := s.CreateKeys("test", store.DefaultTenant, "bob", bulkInputs(10)); err != nil {
		t.Fatalf("bob: %v", err)
	}
	if n := bulkKeyCount(t, s); n != 20 {
		t.Fatalf("key count %d, want 20", n)
	}
}

func TestCreateKeysTenantLimit(t *testing.T) {
	s := bulkStore(t, 1000)
	if _, err := s.UpdateTenant("test", store.DefaultTenant, store.TenantPatch{KeyLimit: store.Some(25)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(5)); err != nil {
		t.Fatal(err)
	}
	// 5 + 21 = 26 > 25 (across owners): refused, nothing written.
	_, _, err := s.CreateKeys("test", store.DefaultTenant, "bob", bulkInputs(21))
	if e := bulkErr(t, err, store.KindLimit); e.Code != "key_limit_reached" {
		t.Fatalf("code %q", e.Code)
	}
	if n := bulkKeyCount(t, s); n != 5 {
		t.Fatalf("refused batch wrote keys: count %d", n)
	}
	// 5 + 20 = 25: exactly at the limit.
	if _, _, err := s.CreateKeys("test", store.DefaultTenant, "bob", bulkInputs(20)); err != nil {
		t.Fatalf("batch up to the limit: %v", err)
	}
	if n := bulkKeyCount(t, s); n != 25 {
		t.Fatalf("key count %d, want 25", n)
	}
	if _, _, err := s.CreateKey("test", store.DefaultTenant, "carol", store.KeyInput{Name: "one more"}); store.KindOf(err) != store.KindLimit {
		t.Fatalf("single create over the limit: %v", err)
	}
}

func TestCreateKeysValidation(t *testing.T) {
	s := bulkStore(t, 1000)
	past := time.Now().Add(-time.Hour)
	in := bulkInputs(6)
	in[3].Name = "x"
	in[4].IPAllowlist = []string{"not-an-ip"}
	in[5].Group = "nope"
	in[1].ExpiresAt = &past
	_, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", in)
	e := bulkErr(t, err, store.KindInvalid)
	for _, field := range []string{"keys[3].name", "keys[4].ip_allowlist", "keys[5].group", "keys[1].expires_at"} {
		if e.Fields[field] == "" {
			t.Errorf("no problem named %s: %v", field, e.Fields)
		}
	}
	if len(e.Fields) != 4 {
		t.Errorf("fields %v, want exactly four", e.Fields)
	}
	if !strings.Contains(err.Error(), "keys[3].name") {
		t.Errorf("message does not name the field: %v", err)
	}
	if n := bulkKeyCount(t, s); n != 0 {
		t.Fatalf("invalid batch wrote keys: count %d", n)
	}

	// The owner is one field for the whole batch.
	_, _, err = s.CreateKeys("test", store.DefaultTenant, "no/slash", bulkInputs(2))
	if e := bulkErr(t, err, store.KindInvalid); e.Fields["owner"] == "" {
		t.Errorf("owner not named: %v", e.Fields)
	}
	// Empty and oversized batches.
	for _, n := range []int{0, store.MaxBulkCreate + 1} {
		_, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(n))
		if e := bulkErr(t, err, store.KindInvalid); e.Fields["keys"] == "" {
			t.Errorf("%d keys: %v", n, e.Fields)
		}
	}
	// CreateKey keeps its unprefixed field names.
	_, _, err = s.CreateKey("test", store.DefaultTenant, "alice", store.KeyInput{Name: "x"})
	if e := bulkErr(t, err, store.KindInvalid); e.Fields["name"] == "" || len(e.Fields) != 1 {
		t.Errorf("CreateKey fields: %v", e.Fields)
	}
}

func TestCreateKeysDisabledTenant(t *testing.T) {
	s := bulkStore(t, 1000)
	if _, err := s.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(false)}); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.CreateKeys("test", store.DefaultTenant, "alice", bulkInputs(3))
	if e := bulkErr(t, err, store.KindDisabled); e.Code != "api_keys_disabled" {
		t.Fatalf("code %q", e.Code)
	}
	if _, _, err := s.CreateKeys("test", "missing", "alice", bulkInputs(3)); store.KindOf(err) != store.KindNotFound {
		t.Fatalf("missing tenant: %v", err)
	}
}

// TestCreateKeysDurable reopens a disk store: the batch was synced and the
// keys (and the tenant's key count) are there.
func TestCreateKeysDurable(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(store.Options{Dir: dir, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateSettings("test", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(1000)}); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, owner := range []string{"u1", "u2", "u3"} {
		_, sec, err := s.CreateKeys("test", store.DefaultTenant, owner, bulkInputs(1000))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, sec...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(store.Options{Dir: dir, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := bulkKeyCount(t, s); n != 3000 {
		t.Fatalf("key count after reopen %d, want 3000", n)
	}
	for _, i := range []int{0, 999, 1000, 2999} {
		if _, verdict, err := s.Verify(store.DefaultTenant, secrets[i], time.Now()); err != nil || verdict != store.VerdictValid {
			t.Fatalf("secret %d after reopen: %v %d", i, err, verdict)
		}
	}
	page, err := s.ListKeys(store.DefaultTenant, store.KeyQuery{Owner: "u2", Limit: 1})
	if err != nil || page.Total != 1000 {
		t.Fatalf("keys of u2: %v %+v", err, page)
	}
}
