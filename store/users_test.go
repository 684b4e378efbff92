package store

import (
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestUsersAndTokens(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	enable(t, s, "other")
	u, err := s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	created := u.CreatedAt
	clk.Advance(time.Minute)
	// PUT again replaces the roles and keeps created_at.
	u, err = s.PutUser("op", DefaultTenant, "alice", []Role{RoleTenantAdmin})
	mustNil(t, err)
	if !u.CreatedAt.Equal(created) || !u.UpdatedAt.Equal(clk.Now()) || u.HasRole(RoleDeveloper) || !u.HasRole(RoleTenantAdmin) {
		t.Fatalf("replaced user %+v", u)
	}
	for _, id := range []string{"bob", "carol", "dave"} {
		_, err := s.PutUser("op", DefaultTenant, id, []Role{RoleDeveloper})
		mustNil(t, err)
	}
	// Same user id in another tenant is another user.
	_, err = s.PutUser("op", "other", "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	var ids []string
	cursor := ""
	for {
		page, next, err := s.ListUsers(DefaultTenant, cursor, 3)
		mustNil(t, err)
		for _, u := range page {
			ids = append(ids, u.ID)
			if u.Tenant != DefaultTenant {
				t.Fatalf("user of %s listed", u.Tenant)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if strings.Join(ids, ",") != "alice,bob,carol,dave" {
		t.Fatalf("users %v", ids)
	}
	if _, _, err := s.ListUsers("nope", "", 0); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}

	// Tokens.
	tok, secret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "laptop"})
	mustNil(t, err)
	if !WellFormed(TokenPrefix, secret) || WellFormed(KeyPrefix, secret) || !strings.HasPrefix(tok.ID, "tok_") {
		t.Fatalf("token %+v", tok)
	}
	at, au, err := s.AuthenticateToken(secret)
	mustNil(t, err)
	if at.ID != tok.ID || at.Status != StatusActive || au.ID != "alice" || au.Tenant != DefaultTenant || !au.HasRole(RoleTenantAdmin) {
		t.Fatalf("authenticated %+v %+v", at, au)
	}
	// Role changes are seen at once.
	_, err = s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	if _, au, _ := s.AuthenticateToken(secret); au.HasRole(RoleTenantAdmin) {
		t.Fatal("stale roles")
	}

	expiring, expSecret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "ci", ExpiresAt: ptr(clk.Now().Add(time.Hour))})
	mustNil(t, err)
	revoked, revSecret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "old"})
	mustNil(t, err)
	mustNil(t, s.RevokeToken("op", DefaultTenant, "alice", revoked.ID))
	wantErr(t, s.RevokeToken("op", DefaultTenant, "alice", revoked.ID), KindConflict, "conflict")
	wantErr(t, s.RevokeToken("op", DefaultTenant, "bob", tok.ID), KindNotFound, "not_found")
	wantErr(t, s.RevokeToken("op", "other", "alice", tok.ID), KindNotFound, "not_found")
	wantErr(t, s.RevokeToken("op", DefaultTenant, "alice", "tok_nope"), KindNotFound, "not_found")

	_, keySecret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	bobTok, bobSecret, err := s.CreateToken("op", DefaultTenant, "bob", TokenInput{Name: "bob"})
	mustNil(t, err)

	deny := func(name, secret string) {
		t.Helper()
		tk, us, err := s.AuthenticateToken(secret)
		e := wantErr(t, err, KindUnauthorized, "")
		if tk != nil || us != nil {
			t.Fatalf("%s: token or user returned with an error", name)
		}
		if secret != "" && strings.Contains(e.Error(), secret) {
			t.Fatalf("%s: the error quotes the secret", name)
		}
	}
	if _, _, err := s.AuthenticateToken(expSecret); err != nil {
		t.Fatalf("expiring token before expiry: %v", err)
	}
	deny("revoked", revSecret)
	deny("empty", "")
	deny("garbage", "hello")
	deny("bad checksum", secret[:len(secret)-1]+flip(secret[len(secret)-1]))
	deny("unknown", NewSecret(TokenPrefix))
	deny("gateway key", keySecret)
	deny("key-shaped token", "kg_"+secret[4:])
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("an admin token verifies as a key: %s", vname(v))
	}
	clk.Advance(time.Hour)
	deny("expired", expSecret)

	toks, err := s.ListTokens(DefaultTenant, "alice")
	mustNil(t, err)
	status := map[string]string{}
	for _, tk := range toks {
		status[tk.ID] = tk.Status
		if tk.Hint == "" || strings.Contains(tk.Hint, secret[4:20]) {
			t.Fatalf("token hint %q", tk.Hint)
		}
	}
	if len(toks) != 3 || status[tok.ID] != StatusActive || status[expiring.ID] != StatusExpired || status[revoked.ID] != StatusRevoked {
		t.Fatalf("tokens %v", status)
	}

	// Deleting a user revokes its tokens and its keys.
	mustNil(t, s.DeleteUser("op", DefaultTenant, "alice"))
	deny("deleted user", secret)
	if _, err := s.GetUser(DefaultTenant, "alice"); KindOf(err) != KindNotFound {
		t.Fatalf("deleted user: %v", err)
	}
	if _, err := s.ListTokens(DefaultTenant, "alice"); KindOf(err) != KindNotFound {
		t.Fatalf("tokens of a deleted user: %v", err)
	}
	wantErr(t, s.DeleteUser("op", DefaultTenant, "alice"), KindNotFound, "not_found")
	// Re-creating the user does not bring its tokens back.
	_, err = s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	deny("token of a re-created user", secret)
	toks, err = s.ListTokens(DefaultTenant, "alice")
	mustNil(t, err)
	for _, tk := range toks {
		if tk.Status == StatusActive {
			t.Fatalf("token %s active after the user was deleted", tk.ID)
		}
	}
	if v := verdict(t, s, DefaultTenant, keySecret, clk.Now()); v != VerdictRevoked {
		t.Fatalf("a deleted user's key: %s", vname(v))
	}
	// Other users' tokens are untouched; the other tenant's alice too.
	if at, _, err := s.AuthenticateToken(bobSecret); err != nil || at.ID != bobTok.ID {
		t.Fatalf("bob's token: %v", err)
	}
	if _, err := s.GetUser("other", "alice"); err != nil {
		t.Fatal(err)
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "user.deleted"})
	// The active and the expired token are named; the revoked one was already.
	if len(evs) != 1 || evs[0].Detail["user"] != "alice" ||
		fmt.Sprint(evs[0].Detail["tokens_revoked"]) != fmt.Sprint([]any{tok.ID, expiring.ID}) {
		t.Fatalf("user.deleted events %d %+v", len(evs), evs[0].Detail)
	}
}

// applyCountingKV counts durable batches.
type applyCountingKV struct {
	KV
	synced atomic.Int64
}

func (k *applyCountingKV) Apply(b *Batch, sync bool) error {
	if sync {
		k.synced.Add(1)
	}
	return k.KV.Apply(b, sync)
}

// TestDeleteUserRevokesKeys: deleting a user revokes its active keys (grace
// secrets included) in the same durable batch as its tokens, with events
// naming them, and the verification cache drops them at once (issue #9
// item 12).
func TestDeleteUserRevokesKeys(t *testing.T) {
	kv := memPebble(t)
	ckv := &applyCountingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = ckv })
	enable(t, s, DefaultTenant)
	now := clk.Now()
	for _, u := range []string{"alice", "bob"} {
		_, err := s.PutUser("op", DefaultTenant, u, []Role{RoleDeveloper})
		mustNil(t, err)
	}
	_, tokSecret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{})
	mustNil(t, err)
	active, activeSecret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "active"})
	rotated, graceSecret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "rotated"})
	_, rotatedSecret, err := s.RotateKey("op", DefaultTenant, rotated.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	expired, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "expiring", ExpiresAt: ptr(now.Add(time.Minute))})
	revoked, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "revoked"})
	_, err = s.RevokeKey("op", DefaultTenant, revoked.ID)
	mustNil(t, err)
	_, bobSecret := mustKey(t, s, DefaultTenant, "bob", KeyInput{Name: "bob's"})
	clk.Advance(time.Minute)
	// Fill the verification cache with every live secret first.
	for _, sec := range []string{activeSecret, graceSecret, rotatedSecret, bobSecret} {
		if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
			t.Fatalf("before: %s", vname(v))
		}
	}
	s.Wait()

	before := ckv.synced.Load()
	mustNil(t, s.DeleteUser("admin", DefaultTenant, "alice"))
	if n := ckv.synced.Load() - before; n != 1 {
		t.Fatalf("DeleteUser made %d durable writes, want 1", n)
	}
	for name, sec := range map[string]string{"active": activeSecret, "rotated": rotatedSecret} {
		if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictRevoked {
			t.Fatalf("%s key of a deleted user: %s", name, vname(v))
		}
	}
	if v := verdict(t, s, DefaultTenant, graceSecret, clk.Now()); v == VerdictValid {
		t.Fatal("grace secret of a deleted user's key still valid")
	}
	if v := verdict(t, s, DefaultTenant, bobSecret, clk.Now()); v != VerdictValid {
		t.Fatalf("another user's key: %s", vname(v))
	}
	if _, _, err := s.AuthenticateToken(tokSecret); KindOf(err) != KindUnauthorized {
		t.Fatalf("token of a deleted user: %v", err)
	}
	for id, want := range map[string]string{active.ID: StatusRevoked, rotated.ID: StatusRevoked, expired.ID: StatusExpired, revoked.ID: StatusRevoked} {
		k, err := s.GetKey(DefaultTenant, id)
		mustNil(t, err)
		if k.Status != want {
			t.Fatalf("key %s: %s, want %s", k.Name, k.Status, want)
		}
		if id == active.ID && (k.RevokedBy == nil || *k.RevokedBy != "admin") {
			t.Fatalf("revoked_by %v", k.RevokedBy)
		}
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Since: clk.Now()})
	var got []string
	for _, e := range evs {
		switch e.Type {
		case "key.revoked":
			if e.Detail["user"] != "alice" || e.Detail["reason"] != "user deleted" || e.Actor != "admin" {
				t.Fatalf("key.revoked event %+v", e)
			}
			got = append(got, *e.KeyID)
		case "user.deleted":
			keys := fmt.Sprint(e.Detail["keys_revoked"])
			if keys != fmt.Sprint([]any{active.ID, rotated.ID}) && keys != fmt.Sprint([]any{rotated.ID, active.ID}) {
				t.Fatalf("user.deleted names keys %s", keys)
			}
		default:
			t.Fatalf("unexpected event %s", e.Type)
		}
	}
	sort.Strings(got)
	want := []string{active.ID, rotated.ID}
	sort.Strings(want)
	if len(evs) != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %d, key.revoked for %v, want %v", len(evs), got, want)
	}
}

func TestTokenPepper(t *testing.T) {
	// With a pepper, the stored hash differs from plain SHA-256 and a store
	// opened with another pepper knows no secret.
	fs := memFS()
	clk := newClock()
	s1 := memStoreFS(t, fs, clk, []byte("pepper-1"))
	enable(t, s1, DefaultTenant)
	_, err := s1.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	_, tokSecret, err := s1.CreateToken("op", DefaultTenant, "alice", TokenInput{})
	mustNil(t, err)
	_, keySecret := mustKey(t, s1, DefaultTenant, "alice", KeyInput{})
	if _, _, err := s1.AuthenticateToken(tokSecret); err != nil {
		t.Fatal(err)
	}
	if v := verdict(t, s1, DefaultTenant, keySecret, clk.Now()); v != VerdictValid {
		t.Fatal(vname(v))
	}
	mustNil(t, s1.Close())
	s2 := memStoreFS(t, fs, clk, []byte("pepper-2"))
	if _, _, err := s2.AuthenticateToken(tokSecret); KindOf(err) != KindUnauthorized {
		t.Fatalf("token under another pepper: %v", err)
	}
	if v := verdict(t, s2, DefaultTenant, keySecret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("key under another pepper: %s", vname(v))
	}
	mustNil(t, s2.Close())
	s3 := memStoreFS(t, fs, clk, []byte("pepper-1"))
	if v := verdict(t, s3, DefaultTenant, keySecret, clk.Now()); v != VerdictValid {
		t.Fatalf("key under its own pepper: %s", vname(v))
	}
}

// TestRevokeTokenRacingAnotherNode: another node revokes the token between
// this node's read of it and its commit. The commit expects the record it
// read, so this node answers that the token is revoked already; without
// that both answered revoked, and both wrote the record and an event.
func TestRevokeTokenRacingAnotherNode(t *testing.T) {
	clk := newClock()
	kv := &hookKV{KV: memPebble(t)}
	s := memStore(t, clk, func(o *Options) { o.KV = kv })
	_, err := s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	tok, _, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "laptop"})
	mustNil(t, err)
	key := k(pToken + tok.ID)
	kv.hook.Store(&readHook{key: string(key), fn: func() {
		var rec tokenRecord
		mustNil(t, s.getJSON(key, &rec))
		at := clk.Now().UTC()
		rec.RevokedAt = &at
		var b Batch
		b.Set(key, mustJSON(rec))
		mustNil(t, kv.Apply(&b, true))
	}})
	wantErr(t, s.RevokeToken("op", DefaultTenant, "alice", tok.ID), KindConflict, "conflict")
	if !kv.hook.Load().ran.Load() {
		t.Fatal("the other node's revoke did not run")
	}
}
