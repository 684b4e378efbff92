package store

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLimitsMaxKeysPerUser(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(3)})
	mustNil(t, err)
	var ids []string
	for i := range 3 { // exactly N is fine
		k, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "k" + string(rune('a'+i))})
		ids = append(ids, k.ID)
	}
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "one too many"})
	e := wantErr(t, err, KindLimit, "key_limit_reached")
	if !strings.Contains(e.Message, "3") {
		t.Errorf("message does not name the limit: %q", e.Message)
	}
	// Another owner is not affected.
	mustKey(t, s, DefaultTenant, "bob", KeyInput{Name: "bob's"})
	// Revoked keys do not count toward the active keys of the owner.
	_, err = s.RevokeKey("op", DefaultTenant, ids[0])
	mustNil(t, err)
	k4, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "after revoke"})
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "again too many"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	// Nor do expired ones.
	mustNil(t, s.DeleteKey("op", DefaultTenant, k4.ID))
	mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "short lived", ExpiresAt: ptr(clk.Now().Add(time.Minute))})
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "full"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	clk.Advance(time.Minute)
	mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "after expiry"})
	// Lowering the limit affects new keys only.
	_, err = s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(1)})
	mustNil(t, err)
	for _, id := range ids[1:] {
		if k, err := s.GetKey(DefaultTenant, id); err != nil || k.Status != StatusActive {
			t.Fatalf("existing key after lowering the limit: %+v %v", k, err)
		}
	}
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "no room"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	_, _, err = s.CreateKey("op", DefaultTenant, "bob", KeyInput{Name: "no room"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	mustKey(t, s, DefaultTenant, "carol", KeyInput{Name: "first of carol"})
}

func TestLimitsTenantKeyLimit(t *testing.T) {
	s := memStore(t, newClock())
	_, err := s.CreateTenant("op", TenantInput{ID: "acme", KeyLimit: ptr(3)})
	mustNil(t, err)
	enable(t, s, "acme")
	var ids []string
	for _, owner := range []string{"a", "b", "c"} {
		k, _ := mustKey(t, s, "acme", owner, KeyInput{})
		ids = append(ids, k.ID)
	}
	_, _, err = s.CreateKey("op", "acme", "d", KeyInput{Name: "fourth"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	// Revoked keys still count toward the tenant's limit.
	_, err = s.RevokeKey("op", "acme", ids[0])
	mustNil(t, err)
	_, _, err = s.CreateKey("op", "acme", "d", KeyInput{Name: "fourth"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	ten, err := s.GetTenant("acme")
	mustNil(t, err)
	if ten.KeyCount != 3 || *ten.KeyLimit != 3 {
		t.Fatalf("tenant %+v", ten)
	}
	page, err := s.ListKeys("acme", KeyQuery{})
	mustNil(t, err)
	if page.Count != 3 || page.Limit == nil || *page.Limit != 3 {
		t.Fatalf("usage %d/%v", page.Count, page.Limit)
	}
	// Deleting frees a slot.
	mustNil(t, s.DeleteKey("op", "acme", ids[0]))
	mustKey(t, s, "acme", "d", KeyInput{Name: "fourth"})
	_, _, err = s.CreateKey("op", "acme", "e", KeyInput{Name: "fifth"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	// DeleteOwnerKeys frees slots too.
	n, err := s.DeleteOwnerKeys("op", "acme", "b")
	mustNil(t, err)
	if n != 1 {
		t.Fatalf("deleted %d", n)
	}
	mustKey(t, s, "acme", "e", KeyInput{Name: "fifth"})
	// Lowering the limit keeps existing keys; raising it or removing it
	// allows new ones.
	_, err = s.UpdateTenant("op", "acme", TenantPatch{KeyLimit: Some(1)})
	mustNil(t, err)
	if page, err := s.ListKeys("acme", KeyQuery{}); err != nil || page.Count != 3 || page.Total != 3 {
		t.Fatalf("after lowering: %+v %v", page, err)
	}
	_, _, err = s.CreateKey("op", "acme", "f", KeyInput{Name: "sixth"})
	wantErr(t, err, KindLimit, "key_limit_reached")
	_, err = s.UpdateTenant("op", "acme", TenantPatch{KeyLimit: Opt[int]{Set: true, Null: true}})
	mustNil(t, err)
	mustKey(t, s, "acme", "f", KeyInput{Name: "sixth"})

	// A limit of 0 admits no key at all.
	_, err = s.CreateTenant("op", TenantInput{ID: "none", KeyLimit: ptr(0)})
	mustNil(t, err)
	enable(t, s, "none")
	_, _, err = s.CreateKey("op", "none", "a", KeyInput{Name: "first"})
	wantErr(t, err, KindLimit, "key_limit_reached")

	// The count survives a reload of the lazily kept figure.
	s.cmu.Lock()
	s.keyCounts = nil
	s.cmu.Unlock()
	if ten, err := s.GetTenant("acme"); err != nil || ten.KeyCount != 4 {
		t.Fatalf("recounted tenant %+v %v", ten, err)
	}
}

func TestDisabledTenant(t *testing.T) {
	s := memStore(t, newClock())
	_, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "k1"})
	wantErr(t, err, KindDisabled, "api_keys_disabled")
	_, err = s.CreateTenant("op", TenantInput{ID: "acme"})
	mustNil(t, err)
	_, _, err = s.CreateKey("op", "acme", "alice", KeyInput{Name: "k1"})
	wantErr(t, err, KindDisabled, "api_keys_disabled")
	if s.TenantEnabled("acme") || s.TenantEnabled("nope") {
		t.Fatal("TenantEnabled")
	}
	enable(t, s, "acme")
	if !s.TenantEnabled("acme") {
		t.Fatal("the switch is not seen at once")
	}
	key, secret := mustKey(t, s, "acme", "alice", KeyInput{Name: "k1"})
	_, err = s.UpdateSettings("op", "acme", SettingsPatch{APIKeysEnabled: Some(false)})
	mustNil(t, err)
	if s.TenantEnabled("acme") {
		t.Fatal("the switch is not seen at once")
	}
	_, _, err = s.CreateKey("op", "acme", "alice", KeyInput{Name: "k2"})
	wantErr(t, err, KindDisabled, "api_keys_disabled")
	// Existing keys stay as they are; the gateway refuses them by tenant.
	if k, err := s.GetKey("acme", key.ID); err != nil || k.Status != StatusActive {
		t.Fatalf("%+v %v", k, err)
	}
	if v := verdict(t, s, "acme", secret, time.Now()); v != VerdictValid {
		t.Fatalf("verdict %s", vname(v))
	}
	_, _, err = s.CreateKey("op", "nope", "alice", KeyInput{Name: "k2"})
	wantErr(t, err, KindNotFound, "not_found")
}

// TestLifecycle runs a key through its whole life on a real on-disk Pebble.
func TestLifecycle(t *testing.T) {
	clk := newClock()
	s := diskStore(t, t.TempDir(), clk)
	enable(t, s, DefaultTenant)
	for _, g := range []string{"g1", "g2"} {
		_, err := s.PutGroup("op", DefaultTenant, g, GroupInput{})
		mustNil(t, err)
	}
	now := clk.Now()

	// Create: the secret is returned once, the key shows only a hint.
	key, secret, err := s.CreateKey("alice", DefaultTenant, "alice", KeyInput{Name: "orders", Description: "prod", Group: "g1"})
	mustNil(t, err)
	if !WellFormed(KeyPrefix, secret) || !strings.HasPrefix(key.ID, "key_") {
		t.Fatalf("key %+v", key)
	}
	random := secret[len(KeyPrefix)+1 : len(KeyPrefix)+1+randomLen]
	if key.Hint != KeyPrefix+"_"+random[:4]+"…"+random[randomLen-4:] {
		t.Fatalf("hint %q", key.Hint)
	}
	if key.Status != StatusActive || key.ExpiryState != ExpiryValid || key.Owner != "alice" || key.Tenant != DefaultTenant ||
		key.RevokedAt != nil || key.RevokedBy != nil || key.LastUsedAt != nil || !key.CreatedAt.Equal(now) {
		t.Fatalf("new key %+v", key)
	}
	b, _ := json.Marshal(key)
	if strings.Contains(string(b), random) || strings.Contains(string(b), random[4:12]) {
		t.Fatal("the key's JSON holds the secret")
	}
	view, v, err := s.Verify(DefaultTenant, secret, now)
	mustNil(t, err)
	if v != VerdictValid || view.ID != key.ID || view.Name != "orders" || view.Owner != "alice" || view.Group != "g1" ||
		view.Tenant != DefaultTenant || view.Allow != nil || !view.ValidUntil.IsZero() {
		t.Fatalf("verify: %s %+v", vname(v), view)
	}
	s.Wait()

	// Edit: the secret keeps working, Verify sees the change at once.
	got, err := s.UpdateKey("alice", DefaultTenant, key.ID, KeyPatch{Name: Some("orders v2"), Group: Some("g2"),
		IPAllowlist: Some([]string{"10.0.0.0/8"})})
	mustNil(t, err)
	if got.Name != "orders v2" || got.Group != "g2" || got.Description != "prod" || got.Hint != key.Hint || !got.UpdatedAt.Equal(now) {
		t.Fatalf("after edit %+v", got)
	}
	view, v, err = s.Verify(DefaultTenant, secret, now)
	mustNil(t, err)
	if v != VerdictValid || view.Name != "orders v2" || view.Group != "g2" || view.Allow == nil {
		t.Fatalf("verify after edit: %s %+v", vname(v), view)
	}
	if !view.Allow.Contains(netip.MustParseAddr("10.2.3.4")) || !view.Allow.Contains(netip.MustParseAddr("::ffff:10.2.3.4")) ||
		view.Allow.Contains(netip.MustParseAddr("11.0.0.1")) || view.Allow.Contains(netip.MustParseAddr("2001:db8::1")) {
		t.Fatal("allowlist not applied")
	}
	s.Wait()
	_, err = s.UpdateKey("alice", DefaultTenant, key.ID, KeyPatch{IPAllowlist: Some([]string{"192.0.2.0/24"})})
	mustNil(t, err)
	view, _, _ = s.Verify(DefaultTenant, secret, now)
	if view.Allow.Contains(netip.MustParseAddr("10.2.3.4")) || !view.Allow.Contains(netip.MustParseAddr("192.0.2.9")) {
		t.Fatal("allowlist change not seen at once")
	}

	// Rotate without grace: the old secret stops at once, same id.
	clk.Advance(time.Minute)
	rotated, secret2, err := s.RotateKey("alice", DefaultTenant, key.ID, RotateInput{})
	mustNil(t, err)
	if rotated.ID != key.ID || secret2 == secret || !WellFormed(KeyPrefix, secret2) || rotated.Hint == key.Hint ||
		rotated.Hint != Hint(secret2) || rotated.Name != "orders v2" || len(rotated.IPAllowlist) != 1 {
		t.Fatalf("rotated %+v", rotated)
	}
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("old secret after rotate: %s", vname(v))
	}
	view, v, _ = s.Verify(DefaultTenant, secret2, clk.Now())
	if v != VerdictValid || view.ID != key.ID || view.Name != "orders v2" || view.Allow == nil {
		t.Fatalf("new secret: %s %+v", vname(v), view)
	}
	s.Wait()

	// Rotate with a grace period: both work until it ends.
	rotAt := clk.Now()
	_, secret3, err := s.RotateKey("alice", DefaultTenant, key.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	for _, at := range []time.Duration{0, 59 * time.Minute, time.Hour - time.Nanosecond} {
		if v := verdict(t, s, DefaultTenant, secret2, rotAt.Add(at)); v != VerdictValid {
			t.Fatalf("old secret %v into the grace period: %s", at, vname(v))
		}
		if v := verdict(t, s, DefaultTenant, secret3, rotAt.Add(at)); v != VerdictValid {
			t.Fatalf("new secret: %s", vname(v))
		}
	}
	view, _, _ = s.Verify(DefaultTenant, secret2, rotAt)
	if !view.ValidUntil.Equal(rotAt.Add(time.Hour)) || view.ID != key.ID {
		t.Fatalf("grace view %+v", view)
	}
	for _, at := range []time.Duration{time.Hour, 2 * time.Hour} {
		if v := verdict(t, s, DefaultTenant, secret2, rotAt.Add(at)); v != VerdictInvalid {
			t.Fatalf("old secret %v after rotation: %s", at, vname(v))
		}
	}
	if v := verdict(t, s, DefaultTenant, secret3, rotAt.Add(2*time.Hour)); v != VerdictValid {
		t.Fatalf("new secret after the grace period: %s", vname(v))
	}
	// An edit during the grace period reaches the old secret's view too.
	_, err = s.UpdateKey("alice", DefaultTenant, key.ID, KeyPatch{Name: Some("orders v3")})
	mustNil(t, err)
	if view, _, _ := s.Verify(DefaultTenant, secret2, rotAt); view == nil || view.Name != "orders v3" {
		t.Fatalf("grace view after edit: %+v", view)
	}
	// Rotating again ends the previous grace period at once.
	_, secret4, err := s.RotateKey("alice", DefaultTenant, key.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	if v := verdict(t, s, DefaultTenant, secret2, rotAt); v != VerdictInvalid {
		t.Fatalf("secret of two rotations ago: %s", vname(v))
	}
	if v := verdict(t, s, DefaultTenant, secret3, rotAt); v != VerdictValid {
		t.Fatalf("secret of the last rotation in its grace period: %s", vname(v))
	}

	// Revoke: immediate, permanent, also for the grace secret.
	clk.Advance(time.Minute)
	revoked, err := s.RevokeKey("bob", DefaultTenant, key.ID)
	mustNil(t, err)
	if revoked.Status != StatusRevoked || revoked.RevokedAt == nil || !revoked.RevokedAt.Equal(clk.Now()) ||
		revoked.RevokedBy == nil || *revoked.RevokedBy != "bob" {
		t.Fatalf("revoked %+v", revoked)
	}
	view, v, err = s.Verify(DefaultTenant, secret4, clk.Now())
	mustNil(t, err)
	if v != VerdictRevoked || view == nil || view.ID != key.ID || !view.Revoked {
		t.Fatalf("revoked key: %s %+v", vname(v), view)
	}
	if v := verdict(t, s, DefaultTenant, secret3, clk.Now()); v == VerdictValid {
		t.Fatal("grace secret of a revoked key still valid")
	}
	_, err = s.RevokeKey("bob", DefaultTenant, key.ID)
	wantErr(t, err, KindConflict, "conflict")
	_, sec, err := s.RotateKey("bob", DefaultTenant, key.ID, RotateInput{})
	wantErr(t, err, KindConflict, "conflict")
	if sec != "" {
		t.Fatal("rotating a revoked key returned a secret")
	}
	if v := verdict(t, s, DefaultTenant, secret4, clk.Now()); v != VerdictRevoked {
		t.Fatalf("after refused rotation: %s", vname(v))
	}
	if got, _ := s.GetKey(DefaultTenant, key.ID); got.Status != StatusRevoked {
		t.Fatalf("status %s", got.Status)
	}

	// Delete: gone for Verify and GetKey, its events stay.
	mustNil(t, s.DeleteKey("alice", DefaultTenant, key.ID))
	if v := verdict(t, s, DefaultTenant, secret4, clk.Now()); v != VerdictInvalid {
		t.Fatalf("deleted key: %s", vname(v))
	}
	_, err = s.GetKey(DefaultTenant, key.ID)
	wantErr(t, err, KindNotFound, "not_found")
	wantErr(t, s.DeleteKey("alice", DefaultTenant, key.ID), KindNotFound, "not_found")
	evs := allEvents(t, s, DefaultTenant, EventQuery{KeyID: key.ID})
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	want := "key.created key.updated key.updated key.rotated key.rotated key.updated key.rotated key.revoked key.deleted"
	if strings.Join(types, " ") != want {
		t.Fatalf("events of the key:\n got %s\nwant %s", strings.Join(types, " "), want)
	}
}

func TestRotateGraceNeverOutlivesExpiry(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	now := clk.Now()
	// The key expires in 10 minutes; a 1 h grace period ends with it.
	key, old := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "soon", ExpiresAt: ptr(now.Add(10 * time.Minute))})
	_, fresh, err := s.RotateKey("op", DefaultTenant, key.ID, RotateInput{GracePeriod: dur(time.Hour), ExpiresAt: ptr(now.Add(48 * time.Hour))})
	mustNil(t, err)
	if v := verdict(t, s, DefaultTenant, old, now.Add(9*time.Minute)); v != VerdictValid {
		t.Fatalf("old secret before its expiry: %s", vname(v))
	}
	if v := verdict(t, s, DefaultTenant, old, now.Add(10*time.Minute)); v == VerdictValid {
		t.Fatal("old secret outlived its own expiry")
	}
	if v := verdict(t, s, DefaultTenant, fresh, now.Add(24*time.Hour)); v != VerdictValid {
		t.Fatalf("new secret: %s", vname(v))
	}

	// An expired key rotated with a grace period: the old secret is not
	// brought back to life.
	key2, old2 := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "expired", ExpiresAt: ptr(now.Add(time.Minute))})
	clk.Advance(2 * time.Minute)
	if v := verdict(t, s, DefaultTenant, old2, clk.Now()); v != VerdictExpired {
		t.Fatalf("expired key: %s", vname(v))
	}
	newExp := clk.Now().Add(24 * time.Hour)
	_, fresh2, err := s.RotateKey("op", DefaultTenant, key2.ID, RotateInput{GracePeriod: dur(time.Hour), ExpiresAt: &newExp})
	mustNil(t, err)
	if v := verdict(t, s, DefaultTenant, old2, clk.Now()); v == VerdictValid {
		t.Fatal("rotation revived an expired secret")
	}
	if v := verdict(t, s, DefaultTenant, fresh2, clk.Now()); v != VerdictValid {
		t.Fatalf("new secret of a rotated expired key: %s", vname(v))
	}
	if k, _ := s.GetKey(DefaultTenant, key2.ID); k.Status != StatusActive || k.ExpiresAt == nil || !k.ExpiresAt.Equal(newExp) {
		t.Fatalf("rotated expired key: %+v", k)
	}
}

// TestRotateExpiredKey: rotating brings an expired key back to active, so
// it is held to the owner's max_keys_per_user and to max_expiration, and
// never silently loses its expiry (issue #9 item 4).
func TestRotateExpiredKey(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(2)})
	mustNil(t, err)
	now := clk.Now()
	expired, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "expired", ExpiresAt: ptr(now.Add(time.Minute))})
	clk.Advance(time.Minute)
	a1, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "active 1"})
	mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "active 2"})
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "third"})
	wantErr(t, err, KindLimit, "key_limit_reached")

	// At the limit: rotating the expired key is refused like a create,
	// with or without expires_at, and writes nothing.
	for _, in := range []RotateInput{{}, {ExpiresAt: ptr(clk.Now().Add(time.Hour))}} {
		_, sec, err := s.RotateKey("op", DefaultTenant, expired.ID, in)
		if in.ExpiresAt == nil {
			wantFields(t, err, "expires_at") // no max_expiration to default to
			continue
		}
		e := wantErr(t, err, KindLimit, "key_limit_reached")
		if sec != "" || !strings.Contains(e.Message, "2") {
			t.Fatalf("refused rotation: secret %q, message %q", sec, e.Message)
		}
	}
	if k, _ := s.GetKey(DefaultTenant, expired.ID); k.Status != StatusExpired {
		t.Fatalf("after refused rotations: %s", k.Status)
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.rotated"}); len(evs) != 0 {
		t.Fatalf("refused rotations wrote %d events", len(evs))
	}
	// Active keys rotate freely at the limit and keep their expiry.
	rot, _, err := s.RotateKey("op", DefaultTenant, a1.ID, RotateInput{})
	mustNil(t, err)
	if rot.Status != StatusActive || rot.ExpiresAt != nil {
		t.Fatalf("rotated active key %+v", rot)
	}

	// With room: without expires_at and without max_expiration the expired
	// key is refused (never silently null); with one it comes back.
	_, err = s.RevokeKey("op", DefaultTenant, a1.ID)
	mustNil(t, err)
	_, _, err = s.RotateKey("op", DefaultTenant, expired.ID, RotateInput{})
	wantFields(t, err, "expires_at")
	_, _, err = s.RotateKey("op", DefaultTenant, expired.ID, RotateInput{ExpiresAt: ptr(clk.Now().Add(-time.Second))})
	wantFields(t, err, "expires_at")
	back, sec, err := s.RotateKey("op", DefaultTenant, expired.ID, RotateInput{ExpiresAt: ptr(clk.Now().Add(48 * time.Hour))})
	mustNil(t, err)
	if back.Status != StatusActive || back.ExpiresAt == nil || !back.ExpiresAt.Equal(clk.Now().Add(48*time.Hour)) {
		t.Fatalf("reactivated %+v", back)
	}
	if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
		t.Fatalf("reactivated key: %s", vname(v))
	}
	// Now alice is at the limit again.
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "third"})
	wantErr(t, err, KindLimit, "key_limit_reached")

	// With max_expiration: an omitted expires_at defaults to now + max, and
	// a later one is refused.
	_, err = s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxExpiration: Some(Duration(24 * time.Hour)), MaxKeysPerUser: Some(3)})
	mustNil(t, err)
	clk.Advance(49 * time.Hour) // "expired" has expired again
	_, _, err = s.RotateKey("op", DefaultTenant, expired.ID, RotateInput{ExpiresAt: ptr(clk.Now().Add(25 * time.Hour))})
	wantFields(t, err, "expires_at")
	back, _, err = s.RotateKey("op", DefaultTenant, expired.ID, RotateInput{})
	mustNil(t, err)
	if back.Status != StatusActive || back.ExpiresAt == nil || !back.ExpiresAt.Equal(clk.Now().Add(24*time.Hour)) {
		t.Fatalf("reactivated with max_expiration: %+v", back)
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.rotated", KeyID: expired.ID})
	if len(evs) != 2 || evs[1].Detail["reactivated"] != true || evs[1].Detail["previous_expires_at"] == nil {
		t.Fatalf("rotation events %+v", evs)
	}
}

// TestRotateExpiredConcurrently: concurrent rotations of expired keys and
// creates of one owner never leave it with more active keys than
// max_keys_per_user (Store.wmu serialises the check and the write).
func TestRotateExpiredConcurrently(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	const limit = 3
	var expired []string
	for i := range 2 * limit {
		k, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: fmt.Sprintf("old %d", i), ExpiresAt: ptr(clk.Now().Add(time.Minute))})
		expired = append(expired, k.ID)
	}
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(limit), MaxExpiration: Some(Duration(time.Hour))})
	mustNil(t, err)
	clk.Advance(time.Minute)
	var wg sync.WaitGroup
	var ok, refused atomic.Int32
	count := func(err error) {
		switch {
		case err == nil:
			ok.Add(1)
		case KindOf(err) == KindLimit:
			refused.Add(1)
		default:
			t.Error(err)
		}
	}
	for i, id := range expired {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _, err := s.RotateKey("op", DefaultTenant, id, RotateInput{})
			count(err)
		}()
		go func() {
			defer wg.Done()
			_, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: fmt.Sprintf("new %d", i)})
			count(err)
		}()
	}
	wg.Wait()
	active, err := s.countActiveOwnerKeys(DefaultTenant, "alice", clk.Now())
	mustNil(t, err)
	if active != limit || ok.Load() != limit || refused.Load() != int32(4*limit-limit) {
		t.Fatalf("active %d, succeeded %d, refused %d; limit %d", active, ok.Load(), refused.Load(), limit)
	}
}

func TestRevokeKeysBulk(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	enable(t, s, "other")
	a, secA := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	b, secB := mustKey(t, s, DefaultTenant, "bob", KeyInput{})
	c, secC := mustKey(t, s, DefaultTenant, "carol", KeyInput{})
	x, secX := mustKey(t, s, "other", "xavier", KeyInput{})
	_, err := s.RevokeKey("op", DefaultTenant, b.ID)
	mustNil(t, err)
	ids := []string{a.ID, "key_unknown", b.ID, x.ID, a.ID, c.ID, ""}
	res, err := s.RevokeKeys("admin", DefaultTenant, ids)
	mustNil(t, err)
	if len(res) != len(ids) {
		t.Fatalf("%d results for %d ids", len(res), len(ids))
	}
	wantOK := []bool{true, false, false, false, false, true, false}
	wantMsg := []string{"", "not found", "already revoked", "not found", "twice", "", "not found"}
	for i, r := range res {
		if r.ID != ids[i] || r.OK != wantOK[i] {
			t.Fatalf("result %d: %+v", i, r)
		}
		if r.OK != (r.Error == nil) {
			t.Fatalf("result %d: ok %v with error %v", i, r.OK, r.Error)
		}
		if !r.OK && !strings.Contains(*r.Error, wantMsg[i]) {
			t.Fatalf("result %d: error %q, want %q", i, *r.Error, wantMsg[i])
		}
	}
	now := clk.Now()
	for sec, want := range map[string]Verdict{secA: VerdictRevoked, secB: VerdictRevoked, secC: VerdictRevoked} {
		if v := verdict(t, s, DefaultTenant, sec, now); v != want {
			t.Fatalf("verdict %s, want %s", vname(v), vname(want))
		}
	}
	if v := verdict(t, s, "other", secX, now); v != VerdictValid {
		t.Fatalf("another tenant's key was revoked: %s", vname(v))
	}
	if k, _ := s.GetKey(DefaultTenant, a.ID); k.RevokedBy == nil || *k.RevokedBy != "admin" {
		t.Fatalf("revoked by %v", k.RevokedBy)
	}
	// Exactly one revocation event per revoked key.
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.revoked"})
	if len(evs) != 3 {
		t.Fatalf("%d revocation events", len(evs))
	}
	if _, err := s.RevokeKeys("admin", "nope", []string{a.ID}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
}

func TestDeleteOwnerKeys(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	enable(t, s, "other")
	var aliceSecrets []string
	for range 3 {
		_, sec := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
		aliceSecrets = append(aliceSecrets, sec)
	}
	bob, bobSecret := mustKey(t, s, DefaultTenant, "bob", KeyInput{})
	_, otherAlice := mustKey(t, s, "other", "alice", KeyInput{})
	// The prefix of a user id is another user.
	_, aliSecret := mustKey(t, s, DefaultTenant, "ali", KeyInput{})
	now := clk.Now()
	for _, sec := range aliceSecrets { // warm the cache
		_ = verdict(t, s, DefaultTenant, sec, now)
	}
	s.Wait()
	n, err := s.DeleteOwnerKeys("alice", DefaultTenant, "alice")
	mustNil(t, err)
	if n != 3 {
		t.Fatalf("deleted %d", n)
	}
	for _, sec := range aliceSecrets {
		if v := verdict(t, s, DefaultTenant, sec, now); v != VerdictInvalid {
			t.Fatalf("deleted key: %s", vname(v))
		}
	}
	for tenant, sec := range map[string]string{DefaultTenant: bobSecret, "other": otherAlice} {
		if v := verdict(t, s, tenant, sec, now); v != VerdictValid {
			t.Fatalf("%s key: %s", tenant, vname(v))
		}
	}
	if v := verdict(t, s, DefaultTenant, aliSecret, now); v != VerdictValid {
		t.Fatal("deleted the keys of another owner sharing a prefix")
	}
	page, err := s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	if page.Total != 2 || page.Count != 2 || page.Keys[0].ID != bob.ID && page.Keys[1].ID != bob.ID {
		t.Fatalf("left: %+v", page)
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.deleted"}); len(evs) != 3 {
		t.Fatalf("%d delete events", len(evs))
	}
	n, err = s.DeleteOwnerKeys("alice", DefaultTenant, "alice")
	if err != nil || n != 0 {
		t.Fatalf("second delete: %d %v", n, err)
	}
	if _, err := s.DeleteOwnerKeys("alice", "nope", "alice"); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
}

func TestExpiry(t *testing.T) {
	clk := newClock()
	s := diskStore(t, t.TempDir(), clk)
	enable(t, s, DefaultTenant)
	now := clk.Now()
	soon, soonSecret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "3 days", ExpiresAt: ptr(now.Add(72 * time.Hour))})
	later, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "8 days", ExpiresAt: ptr(now.Add(8 * 24 * time.Hour))})
	never, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "never"})
	if soon.ExpiryState != ExpiryExpiringSoon || soon.Status != StatusActive {
		t.Fatalf("3 days: %s/%s", soon.Status, soon.ExpiryState)
	}
	if later.ExpiryState != ExpiryValid || never.ExpiryState != ExpiryValid {
		t.Fatalf("8 days: %s, never: %s", later.ExpiryState, never.ExpiryState)
	}
	view, v, _ := s.Verify(DefaultTenant, soonSecret, now)
	if v != VerdictValid || !view.ValidUntil.Equal(now.Add(72*time.Hour)) {
		t.Fatalf("%s %+v", vname(v), view)
	}
	// The window is a setting.
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{ExpiringSoonWindow: Some(Duration(24 * time.Hour))})
	mustNil(t, err)
	if k, _ := s.GetKey(DefaultTenant, soon.ID); k.ExpiryState != ExpiryValid {
		t.Fatalf("3 days with a 1-day window: %s", k.ExpiryState)
	}
	clk.Advance(48*time.Hour + time.Second)
	if k, _ := s.GetKey(DefaultTenant, soon.ID); k.ExpiryState != ExpiryExpiringSoon || k.Status != StatusActive {
		t.Fatalf("1 day left: %s/%s", k.Status, k.ExpiryState)
	}
	// At the expiry instant the key is expired (the cached view included).
	clk.Advance(24*time.Hour - time.Second)
	view, v, _ = s.Verify(DefaultTenant, soonSecret, clk.Now())
	if v != VerdictExpired || view == nil || view.ID != soon.ID {
		t.Fatalf("at expiry: %s %+v", vname(v), view)
	}
	k, err := s.GetKey(DefaultTenant, soon.ID)
	mustNil(t, err)
	if k.Status != StatusExpired || k.ExpiryState != ExpiryExpired {
		t.Fatalf("expired key: %s/%s", k.Status, k.ExpiryState)
	}
	// Only active keys can be revoked.
	_, err = s.RevokeKey("op", DefaultTenant, soon.ID)
	wantErr(t, err, KindConflict, "conflict")
	// A revoked key that also expired shows as revoked.
	_, err = s.RevokeKey("op", DefaultTenant, later.ID)
	mustNil(t, err)
	clk.Advance(30 * 24 * time.Hour)
	if k, _ := s.GetKey(DefaultTenant, later.ID); k.Status != StatusRevoked || k.ExpiryState != ExpiryExpired {
		t.Fatalf("revoked and expired: %s/%s", k.Status, k.ExpiryState)
	}
}

func TestTenantIsolation(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, "a")
	enable(t, s, "b")
	_, err := s.PutGroup("op", "b", "g", GroupInput{})
	mustNil(t, err)
	key, secret := mustKey(t, s, "a", "alice", KeyInput{Name: "of a"})
	now := clk.Now()
	for range 2 { // cold and cached
		view, v, err := s.Verify("b", secret, now)
		if err != nil || v != VerdictInvalid || view != nil {
			t.Fatalf("a's key for b: %s %+v %v", vname(v), view, err)
		}
		if v := verdict(t, s, "a", secret, now); v != VerdictValid {
			t.Fatalf("a's key for a: %s", vname(v))
		}
		s.Wait()
	}
	_, err = s.GetKey("b", key.ID)
	wantErr(t, err, KindNotFound, "not_found")
	_, err = s.UpdateKey("op", "b", key.ID, KeyPatch{Name: Some("stolen")})
	wantErr(t, err, KindNotFound, "not_found")
	_, err = s.UpdateKey("op", "b", key.ID, KeyPatch{Group: Some("g")})
	wantErr(t, err, KindNotFound, "not_found")
	_, err = s.RevokeKey("op", "b", key.ID)
	wantErr(t, err, KindNotFound, "not_found")
	_, _, err = s.RotateKey("op", "b", key.ID, RotateInput{})
	wantErr(t, err, KindNotFound, "not_found")
	wantErr(t, s.DeleteKey("op", "b", key.ID), KindNotFound, "not_found")
	_, err = s.Usage("b", key.ID)
	wantErr(t, err, KindNotFound, "not_found")
	if n, err := s.DeleteOwnerKeys("op", "b", "alice"); err != nil || n != 0 {
		t.Fatalf("delete owner keys in b: %d %v", n, err)
	}
	page, err := s.ListKeys("b", KeyQuery{Q: key.ID})
	mustNil(t, err)
	if page.Total != 0 || page.Count != 0 || len(page.Keys) != 0 {
		t.Fatalf("b lists a's key: %+v", page)
	}
	if evs := allEvents(t, s, "b", EventQuery{KeyID: key.ID}); len(evs) != 0 {
		t.Fatalf("b sees a's key events: %d", len(evs))
	}
	got, err := s.GetKey("a", key.ID)
	mustNil(t, err)
	if got.Name != "of a" || got.Status != StatusActive {
		t.Fatalf("a's key was touched: %+v", got)
	}
}

func TestListKeys(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	_, err := s.CreateTenant("op", TenantInput{ID: "acme", KeyLimit: ptr(50)})
	mustNil(t, err)
	enable(t, s, "acme")
	for _, g := range []string{"g1", "g2"} {
		_, err := s.PutGroup("op", "acme", g, GroupInput{})
		mustNil(t, err)
	}
	now := clk.Now()
	type spec struct {
		name, owner, group string
		expires            time.Duration
	}
	specs := []spec{
		{"Alpha prod", "alice", "g1", 0},
		{"beta staging", "bob", "g2", 0},
		{"GAMMA", "alice", "", 3 * 24 * time.Hour},    // expiring soon
		{"delta", "carol", "g1", 30 * 24 * time.Hour}, // valid
		{"epsilon", "bob", "g1", time.Hour},           // expires below
		{"zeta", "alice", "g2", 0},                    // revoked below
		{"eta", "Dave", "", 0},
	}
	ids := map[string]string{}
	for _, sp := range specs {
		in := KeyInput{Name: sp.name, Group: sp.group}
		if sp.expires > 0 {
			in.ExpiresAt = ptr(now.Add(sp.expires))
		}
		k, _ := mustKey(t, s, "acme", sp.owner, in)
		ids[sp.name] = k.ID
		clk.Advance(time.Millisecond)
	}
	_, err = s.RevokeKey("op", "acme", ids["zeta"])
	mustNil(t, err)
	clk.Advance(2 * time.Hour) // epsilon expires; GAMMA is still expiring soon

	names := func(q KeyQuery) []string {
		t.Helper()
		page, err := s.ListKeys("acme", q)
		mustNil(t, err)
		if page.Count != len(specs) || page.Limit == nil || *page.Limit != 50 {
			t.Fatalf("usage %d/%v", page.Count, page.Limit)
		}
		if page.Total != len(page.Keys) || page.NextCursor != "" {
			t.Fatalf("total %d for %d keys, cursor %q", page.Total, len(page.Keys), page.NextCursor)
		}
		out := []string{}
		for _, k := range page.Keys {
			out = append(out, k.Name)
		}
		return out
	}
	eta := ids["eta"]
	cases := []struct {
		q    KeyQuery
		want string
	}{
		{KeyQuery{}, "Alpha prod,beta staging,GAMMA,delta,epsilon,zeta,eta"},
		{KeyQuery{Q: "alp"}, "Alpha prod"},
		{KeyQuery{Q: "ALPHA"}, "Alpha prod"},
		{KeyQuery{Q: "gamma"}, "GAMMA"},
		{KeyQuery{Q: "ALICE"}, "Alpha prod,GAMMA,zeta"},
		{KeyQuery{Q: "dave"}, "eta"},
		{KeyQuery{Q: strings.ToLower(eta[len(eta)-8:])}, "eta"},
		{KeyQuery{Q: eta}, "eta"},
		{KeyQuery{Q: "no such thing"}, ""},
		{KeyQuery{Status: StatusActive}, "Alpha prod,beta staging,GAMMA,delta,eta"},
		{KeyQuery{Status: StatusRevoked}, "zeta"},
		{KeyQuery{Status: StatusExpired}, "epsilon"},
		{KeyQuery{ExpiryState: ExpiryExpiringSoon}, "GAMMA"},
		{KeyQuery{ExpiryState: ExpiryExpired}, "epsilon"},
		{KeyQuery{ExpiryState: ExpiryValid}, "Alpha prod,beta staging,delta,zeta,eta"},
		{KeyQuery{Owner: "alice"}, "Alpha prod,GAMMA,zeta"},
		{KeyQuery{Owner: "ALICE"}, ""},
		{KeyQuery{Group: "g1"}, "Alpha prod,delta,epsilon"},
		{KeyQuery{Group: "g1", Status: StatusActive}, "Alpha prod,delta"},
		{KeyQuery{Owner: "bob", Q: "beta"}, "beta staging"},
		{KeyQuery{Owner: "alice", Status: StatusActive, Q: "a"}, "Alpha prod,GAMMA"},
	}
	for _, c := range cases {
		if got := strings.Join(names(c.q), ","); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.q, got, c.want)
		}
	}

	// Walk all pages with limit 2: every key once, in id order, the total
	// constant, no cursor on the last page.
	walk := func(q KeyQuery) []string {
		t.Helper()
		q.Limit = 2
		var got []string
		pages := 0
		for {
			page, err := s.ListKeys("acme", q)
			mustNil(t, err)
			pages++
			if len(page.Keys) > 2 {
				t.Fatalf("page of %d", len(page.Keys))
			}
			for _, k := range page.Keys {
				got = append(got, k.ID)
			}
			if page.NextCursor == "" {
				if len(got) != page.Total {
					t.Fatalf("walked %d keys, total %d", len(got), page.Total)
				}
				return got
			}
			if page.NextCursor != page.Keys[len(page.Keys)-1].ID {
				t.Fatalf("cursor %q is not the last id of the page", page.NextCursor)
			}
			q.Cursor = page.NextCursor
			if pages > 10 {
				t.Fatal("pagination does not end")
			}
		}
	}
	all := walk(KeyQuery{})
	var want []string
	for _, sp := range specs {
		want = append(want, ids[sp.name])
	}
	if !sort.StringsAreSorted(all) || strings.Join(all, ",") != strings.Join(want, ",") {
		t.Fatalf("pages: %v, want %v in creation order", all, want)
	}
	if got := walk(KeyQuery{Status: StatusActive}); len(got) != 5 {
		t.Fatalf("active pages: %d keys", len(got))
	}
	// Totals stay constant across pages.
	p1, err := s.ListKeys("acme", KeyQuery{Limit: 2, Group: "g1"})
	mustNil(t, err)
	p2, err := s.ListKeys("acme", KeyQuery{Limit: 2, Group: "g1", Cursor: p1.NextCursor})
	mustNil(t, err)
	if p1.Total != 3 || p2.Total != 3 || len(p1.Keys) != 2 || len(p2.Keys) != 1 || p2.NextCursor != "" {
		t.Fatalf("group pages: %d/%d keys, totals %d/%d", len(p1.Keys), len(p2.Keys), p1.Total, p2.Total)
	}
	// An exact fit leaves no next page.
	p, err := s.ListKeys("acme", KeyQuery{Limit: len(specs)})
	mustNil(t, err)
	if len(p.Keys) != len(specs) || p.NextCursor != "" {
		t.Fatalf("exact fit: %d keys, cursor %q", len(p.Keys), p.NextCursor)
	}
	// Limit 0 means the default page size.
	p, err = s.ListKeys("acme", KeyQuery{})
	mustNil(t, err)
	if len(p.Keys) != len(specs) {
		t.Fatalf("default limit: %d keys", len(p.Keys))
	}
	// No key_limit: Limit is nil.
	enable(t, s, DefaultTenant)
	p, err = s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	if p.Limit != nil || p.Count != 0 || p.Keys == nil {
		t.Fatalf("default tenant: %+v", p)
	}
}

// TestDefaultGroup: the tenant's default_group names an existing group,
// keys created with DefaultGroup get it, and it cannot be deleted while it
// is the default (issue #9 item 11).
func TestDefaultGroup(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	enable(t, s, "other")
	st, err := s.GetSettings(DefaultTenant)
	mustNil(t, err)
	if st.DefaultGroup != nil {
		t.Fatalf("new tenant's default_group %q", *st.DefaultGroup)
	}
	b, _ := json.Marshal(st)
	if !strings.Contains(string(b), `"default_group":null`) {
		t.Fatalf("settings JSON %s", b)
	}
	// Without a default group, DefaultGroup keys have no group, whatever
	// Group says.
	k, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Group: "ignored", DefaultGroup: true})
	if k.Group != "" {
		t.Fatalf("key group %q without a default", k.Group)
	}
	_, err = s.PutGroup("op", DefaultTenant, "basic", GroupInput{})
	mustNil(t, err)
	_, err = s.PutGroup("op", "other", "elsewhere", GroupInput{})
	mustNil(t, err)
	for _, bad := range []string{"nope", "", "elsewhere"} {
		_, err = s.UpdateSettings("op", DefaultTenant, SettingsPatch{DefaultGroup: Some(bad)})
		wantFields(t, err, "default_group")
	}
	st, err = s.UpdateSettings("op", DefaultTenant, SettingsPatch{DefaultGroup: Some("basic")})
	mustNil(t, err)
	if st.DefaultGroup == nil || *st.DefaultGroup != "basic" {
		t.Fatalf("default_group %v", st.DefaultGroup)
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "settings.updated"})
	last := evs[len(evs)-1].Detail
	if fmt.Sprint(last["fields"]) != "[default_group]" || fmt.Sprint(last["before"]) != "map[default_group:<nil>]" ||
		fmt.Sprint(last["after"]) != "map[default_group:basic]" {
		t.Fatalf("settings.updated detail %v", last)
	}
	k, _ = mustKey(t, s, DefaultTenant, "alice", KeyInput{DefaultGroup: true})
	if k.Group != "basic" {
		t.Fatalf("key group %q, want the default", k.Group)
	}
	if k, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{}); k.Group != "" {
		t.Fatalf("key without DefaultGroup got group %q", k.Group)
	}
	// The default group cannot be deleted (even with no key in it) …
	mustNil(t, s.DeleteKey("op", DefaultTenant, k.ID))
	wantErr(t, s.DeleteGroup("op", DefaultTenant, "basic"), KindConflict, "conflict")
	// … until it is no longer the default.
	st, err = s.UpdateSettings("op", DefaultTenant, SettingsPatch{DefaultGroup: Opt[string]{Set: true, Null: true}})
	mustNil(t, err)
	if st.DefaultGroup != nil {
		t.Fatalf("default_group after null: %v", *st.DefaultGroup)
	}
	mustNil(t, s.DeleteGroup("op", DefaultTenant, "basic"))
}

// TestKeyUpdatedEventValues: key.updated names the fields that changed
// with their values before and after.
func TestKeyUpdatedEventValues(t *testing.T) {
	s := memStore(t, newClock())
	enable(t, s, DefaultTenant)
	_, err := s.PutGroup("op", DefaultTenant, "g1", GroupInput{})
	mustNil(t, err)
	k, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "orders", Group: "g1"})
	_, err = s.UpdateKey("alice", DefaultTenant, k.ID, KeyPatch{Name: Some("orders"), Group: Opt[string]{Set: true, Null: true},
		IPAllowlist: Some([]string{"10.0.0.0/8"}), Description: Some("prod")})
	mustNil(t, err)
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.updated"})
	if len(evs) != 1 {
		t.Fatalf("%d key.updated events", len(evs))
	}
	raw, _ := json.Marshal(evs[0].Detail)
	want := `{"after":{"description":"prod","group":null,"ip_allowlist":["10.0.0.0/8"]},` +
		`"before":{"description":"","group":"g1","ip_allowlist":[]},"fields":["description","group","ip_allowlist"]}`
	if string(raw) != want {
		t.Fatalf("detail\n got %s\nwant %s", raw, want)
	}
	if strings.Contains(string(raw), secret[len(KeyPrefix)+1:]) {
		t.Fatal("event holds the secret")
	}
}

// TestReadKeyDuringRotation: a key rotated between a reader's two reads
// (an index, then the record under the secret's hash it names) is read
// again through the id index: GetKey and ListKeys answer the rotated key,
// not 404, an error, or the rotated-out secret's record.
func TestReadKeyDuringRotation(t *testing.T) {
	readers := map[string]func(s *Store, id string) (*Key, error){
		"GetKey": func(s *Store, id string) (*Key, error) { return s.GetKey("acme", id) },
		"ListKeys": func(s *Store, id string) (*Key, error) {
			page, err := s.ListKeys("acme", KeyQuery{})
			if err != nil {
				return nil, err
			}
			for _, k := range page.Keys {
				if k.ID == id {
					return k, nil
				}
			}
			return nil, fmt.Errorf("key %s not listed (%d keys)", id, len(page.Keys))
		},
	}
	for name, read := range readers {
		for _, grace := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/grace=%v", name, grace), func(t *testing.T) {
				clk := newClock()
				kv := &hookKV{KV: memPebble(t)}
				s := memStore(t, clk, func(o *Options) { o.KV = kv })
				enable(t, s, "acme")
				key, secret := mustKey(t, s, "acme", "alice", KeyInput{})
				var rotated *Key
				// Right before the reader reads the record under the first
				// secret's hash, which an index named.
				kv.hook.Store(&readHook{key: string(hashKey(pKeyHash, s.hasher.hash(secret))), before: true, fn: func() {
					clk.Advance(time.Minute) // the rotation's updated_at tells the records apart
					var in RotateInput
					if grace {
						g := Duration(time.Hour)
						in.GracePeriod = &g
					}
					var err error
					rotated, _, err = s.RotateKey("op", "acme", key.ID, in)
					mustNil(t, err)
				}})
				got, err := read(s, key.ID)
				if err != nil {
					t.Fatalf("%s while the key was rotated: %v", name, err)
				}
				if rotated == nil {
					t.Fatalf("the rotation did not run between the reads of %s", name)
				}
				if !got.UpdatedAt.Equal(rotated.UpdatedAt) || got.Hint != rotated.Hint {
					t.Fatalf("%s answered updated_at %s hint %q, want the rotated key's %s %q", name, got.UpdatedAt, got.Hint, rotated.UpdatedAt, rotated.Hint)
				}
			})
		}
	}
}
