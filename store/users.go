package store

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// PutUser creates a user of the tenant or replaces its roles.
func (s *Store) PutUser(actor, tenant, id string, roles []Role) (*User, error) {
	f := fieldErrors{}
	checkUserID(f, "user", id)
	if len(roles) == 0 {
		f.add("roles", "give at least one of developer, tenant_admin")
	}
	seen := map[Role]bool{}
	clean := make([]Role, 0, len(roles))
	for i, r := range roles {
		if r != RoleDeveloper && r != RoleTenantAdmin {
			f.add(fmt.Sprintf("roles[%d]", i), fmt.Sprintf("%q is not a role (developer, tenant_admin)", truncate(string(r), 32)))
			continue
		}
		if !seen[r] {
			seen[r] = true
			clean = append(clean, r)
		}
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var u *User
	err := s.retryConflicts(fmt.Sprintf("other nodes changed user %q", truncate(id, 64)), func() error {
		var err error
		u, err = s.putUser(actor, tenant, id, clean)
		return err
	})
	return u, err
}

// putUser is one attempt of PutUser; the caller holds wmu. The user
// replaced (or its absence) is expected unchanged (keyguard.go).
func (s *Store) putUser(actor, tenant, id string, clean []Role) (*User, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, err
	}
	raw, err := s.readRaw(k(pUser+tenant, id), "user")
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	u := User{ID: id, Tenant: tenant, Roles: clean, CreatedAt: now, UpdatedAt: now}
	if raw != nil {
		old := new(User)
		if err := json.Unmarshal(raw, old); err != nil {
			return nil, fmt.Errorf("decode user %q: %w", id, err)
		}
		u.CreatedAt = old.CreatedAt
	}
	c := newCommit()
	c.b.Expect(k(pUser+tenant, id), raw)
	c.b.Set(k(pUser+tenant, id), mustJSON(u))
	s.event(&c.b, now, tenant, "user.updated", actor, "", map[string]any{"user": id, "roles": clean})
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return &u, nil
}

// GetUser returns a user of the tenant.
func (s *Store) GetUser(tenant, id string) (*User, error) {
	return getRecord[User](s, k(pUser+tenant, id), "user", id)
}

// ListUsers returns the tenant's users in id order.
func (s *Store) ListUsers(tenant, cursor string, limit int) ([]*User, string, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, "", err
	}
	var out []*User
	if err := scanPage(s.kv, pUser+tenant+"/", cursor, limit, &out, nil); err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	return pageOf(out, limit, func(u *User) string { return u.ID })
}

// DeleteUser deletes a user, revokes all its tokens and revokes its active
// keys, in one durable batch with an event for each key (key.revoked) and
// one naming all of them (user.deleted). The keys are revoked exactly as
// RevokeKey does it (the commit invalidates every cached view of their
// secrets, grace secrets included), so once DeleteUser returns the gateway
// rejects them on every request that starts afterwards. Expired and
// revoked keys stay as they are; nothing is deleted but the user.
func (s *Store) DeleteUser(actor, tenant, id string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.retryConflicts(fmt.Sprintf("other nodes changed user %q", truncate(id, 64)), func() error {
		return s.deleteUser(actor, tenant, id)
	})
}

// pUserRefs holds each user's reference mark:
//
//	ur/<tenant>/<user> → random bytes, rewritten by each CreateToken for it
//	                     and each key-adding commit for it (keyadds.go)
//
// DeleteUser revokes every token and active key of the user; across nodes
// it and those writes are kept apart as a group and the keys naming it are
// (grouprefs.go): they expect the user record unchanged and rewrite the
// mark (guardUser), DeleteUser reads the mark before it lists the tokens
// and keys and expects mark and user unchanged. Otherwise a token or key
// issued at the moment of the delete would stay active (a token would work
// again once a user of that id is created anew).
const pUserRefs = "ur/"

// guardUser makes c commit only if the user's record is still raw, and
// rewrites the user's reference mark, which DeleteUser expects unchanged.
func guardUser(c *commit, tenant, user string, raw []byte) {
	c.b.Expect(k(pUser+tenant, user), raw)
	c.b.Set(k(pUserRefs+tenant, user), []byte(rand.Text()))
}

// deleteUser is one attempt of DeleteUser; the caller holds wmu.
func (s *Store) deleteUser(actor, tenant, id string) error {
	mark, err := s.kv.Get(k(pUserRefs+tenant, id))
	if errors.Is(err, errKVNotFound) {
		mark = nil
	} else if err != nil {
		return fmt.Errorf("read tokens mark of user %q: %w", id, err)
	}
	raw, err := s.kv.Get(k(pUser+tenant, id))
	if errors.Is(err, errKVNotFound) {
		return notFound("user", id)
	} else if err != nil {
		return fmt.Errorf("read user: %w", err)
	}
	now := s.now().UTC()
	c := newCommit()
	toks, err := s.userTokens(tenant, id)
	if err != nil {
		return err
	}
	tokens := []string{}
	for _, t := range toks {
		if t.RevokedAt == nil {
			t.RevokedAt = &now
			c.b.Set(k(pToken+t.ID), mustJSON(t))
			tokens = append(tokens, t.ID)
		}
	}
	recs, err := s.ownerKeys(tenant, id)
	if err != nil {
		return err
	}
	keys := []string{}
	for _, r := range recs {
		rec, h, kraw, err := s.loadKeyRaw(tenant, r.ID)
		if KindOf(err) == KindNotFound {
			continue // deleted through another node since the scan
		}
		if err != nil {
			return err
		}
		if rec.RevokedAt != nil || rec.ExpiresAt != nil && !now.Before(*rec.ExpiresAt) {
			continue
		}
		// Expected unchanged (keyguard.go): a rotation meanwhile must
		// not keep the rotated secret out of the revocation.
		expectKey(c, h, kraw)
		if err := s.revokeInto(c, rec, h, actor, now, map[string]any{"reason": "user deleted", "user": id}); err != nil {
			return err
		}
		keys = append(keys, rec.ID)
	}
	c.b.Expect(k(pUserRefs+tenant, id), mark)
	c.b.Expect(k(pUser+tenant, id), raw)
	c.b.Delete(k(pUser+tenant, id))
	c.b.Delete(k(pUserRefs+tenant, id))
	s.event(&c.b, now, tenant, "user.deleted", actor, "", map[string]any{"user": id, "tokens_revoked": tokens, "keys_revoked": keys})
	return s.commit(c)
}

// TokenInput creates a user token.
type TokenInput struct {
	Name      string     `json:"name"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// CreateToken issues an admin token for a user. The secret is returned here
// and never again.
func (s *Store) CreateToken(actor, tenant, user string, in TokenInput) (*Token, string, error) {
	f := fieldErrors{}
	checkText(f, "name", in.Name, 0, TokenNameMax)
	now := s.now().UTC()
	if in.ExpiresAt != nil && !in.ExpiresAt.After(now) {
		f.add("expires_at", "must be in the future")
	}
	if err := f.err(); err != nil {
		return nil, "", err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var tok *Token
	var secret string
	err := s.retryConflicts(fmt.Sprintf("other nodes changed user %q", truncate(user, 64)), func() error {
		var err error
		tok, secret, err = s.createToken(actor, tenant, user, in, now)
		return err
	})
	return tok, secret, err
}

// createToken is one attempt of CreateToken; the caller holds wmu.
func (s *Store) createToken(actor, tenant, user string, in TokenInput, now time.Time) (*Token, string, error) {
	raw, err := s.kv.Get(k(pUser+tenant, user))
	if errors.Is(err, errKVNotFound) {
		return nil, "", notFound("user", user)
	} else if err != nil {
		return nil, "", fmt.Errorf("read user: %w", err)
	}
	secret := NewSecret(TokenPrefix)
	t := tokenRecord{
		Token: Token{ID: newID("tok", now), Tenant: tenant, User: user, Name: in.Name, Hint: Hint(secret), CreatedAt: now},
		Hash:  s.hasher.hash(secret),
	}
	if in.ExpiresAt != nil {
		e := in.ExpiresAt.UTC()
		t.ExpiresAt = &e
	}
	c := newCommit()
	guardUser(c, tenant, user, raw)
	c.b.Set(k(pToken+t.ID), mustJSON(t))
	c.b.Set(hashKey(pTokenHash, t.Hash), []byte(t.ID))
	c.b.Set(k(pTokenUser+tenant, user, t.ID), nil)
	s.event(&c.b, now, tenant, "token.created", actor, "", map[string]any{"user": user, "token_id": t.ID, "name": in.Name})
	if err := s.commit(c); err != nil {
		return nil, "", err
	}
	out := t.Token
	out.Status = tokenStatus(&out, now)
	return &out, secret, nil
}

func tokenStatus(t *Token, now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return StatusRevoked
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return StatusExpired
	}
	return StatusActive
}

func (s *Store) userTokens(tenant, user string) ([]*tokenRecord, error) {
	var ids []string
	prefix := string(k(pTokenUser+tenant, user, ""))
	if err := s.kv.Scan([]byte(prefix), nil, func(key, _ []byte) bool {
		ids = append(ids, string(key[len(prefix):]))
		return true
	}); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]*tokenRecord, 0, len(ids))
	for _, id := range ids {
		var t tokenRecord
		if err := s.getJSON(k(pToken+id), &t); err != nil {
			return nil, fmt.Errorf("read token: %w", err)
		}
		out = append(out, &t)
	}
	return out, nil
}

// ListTokens returns a user's tokens (never their secrets).
func (s *Store) ListTokens(tenant, user string) ([]*Token, error) {
	if _, err := s.GetUser(tenant, user); err != nil {
		return nil, err
	}
	recs, err := s.userTokens(tenant, user)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := make([]*Token, len(recs))
	for i, r := range recs {
		t := r.Token
		t.Status = tokenStatus(&t, now)
		out[i] = &t
	}
	return out, nil
}

// RevokeToken revokes a user's token; it stops working at once.
func (s *Store) RevokeToken(actor, tenant, user, id string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.retryConflicts(fmt.Sprintf("other nodes changed token %q", truncate(id, 64)), func() error {
		return s.revokeToken(actor, tenant, user, id)
	})
}

// revokeToken is one attempt of RevokeToken; the caller holds wmu. The
// write expects the token record it read: of two nodes revoking at once,
// one revokes and the other answers that it is revoked already.
func (s *Store) revokeToken(actor, tenant, user, id string) error {
	var t tokenRecord
	raw, err := s.getJSONRaw(k(pToken+id), &t)
	if errors.Is(err, errKVNotFound) {
		return notFound("token", id)
	} else if err != nil {
		return fmt.Errorf("read token: %w", err)
	}
	if t.Tenant != tenant || t.User != user {
		return notFound("token", id)
	}
	if t.RevokedAt != nil {
		return conflict("token %q is already revoked", id)
	}
	now := s.now().UTC()
	t.RevokedAt = &now
	c := newCommit()
	c.b.Expect(k(pToken+id), raw)
	c.b.Set(k(pToken+id), mustJSON(t))
	s.event(&c.b, now, tenant, "token.revoked", actor, "", map[string]any{"user": user, "token_id": id})
	return s.commit(c)
}

var errBadToken = &Error{Kind: KindUnauthorized, Code: "unauthorized", Message: "invalid or expired token"}

// AuthenticateToken returns the active token and its user for an admin
// token secret. Gateway keys are not admin tokens: their prefix differs.
func (s *Store) AuthenticateToken(secret string) (*Token, *User, error) {
	if !WellFormed(TokenPrefix, secret) {
		return nil, nil, errBadToken
	}
	h := s.hasher.hash(secret)
	id, err := s.kv.Get(hashKey(pTokenHash, h))
	if errors.Is(err, errKVNotFound) {
		return nil, nil, errBadToken
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read token: %w", err)
	}
	var t tokenRecord
	if err := s.getJSON(k(pToken+string(id)), &t); err != nil {
		return nil, nil, fmt.Errorf("read token: %w", err)
	}
	if subtle.ConstantTimeCompare(t.Hash[:], h[:]) != 1 || tokenStatus(&t.Token, s.now()) != StatusActive {
		return nil, nil, errBadToken
	}
	u, err := s.GetUser(t.Tenant, t.User)
	if err != nil {
		if KindOf(err) == KindNotFound {
			return nil, nil, errBadToken
		}
		return nil, nil, err
	}
	tok := t.Token
	tok.Status = StatusActive
	return &tok, u, nil
}
