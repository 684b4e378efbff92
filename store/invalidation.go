package store

import (
	"errors"
	"sync"
	"time"
)

// Invalidation tells what stopped admitting requests, as of one committed
// write: the secrets that no longer admit (or admit only until a deadline),
// and the tenants whose API keys no longer admit at all.
//
// Requests already admitted are the subscriber's business (the gateway ends
// the long-lived ones): Verify answers for new requests by itself. Where an
// invalidation comes from, and why it is complete, is in commit.go.
type Invalidation struct {
	// Secrets lists each secret whose admission ended or got a deadline.
	Secrets []SecretEnd
	// Tenants lists tenants whose API keys are disabled or which no longer
	// exist: no key of theirs admits anything.
	Tenants []string
	// All: the store lost track of what changed (Store.ReloadAll) and every
	// cached verification was dropped; a subscriber re-checks each request
	// it holds with AdmitsUntil (which then reads the committed records).
	All bool
}

// SecretEnd is one secret that stopped admitting requests.
type SecretEnd struct {
	// Hash identifies the secret. A key has up to two live secrets (the
	// current one and a rotated-out one in its grace period), so the
	// secret, not the key id, is what admitted a request.
	Hash SecretHash
	// KeyID is the key the secret belonged to, when the record still
	// says (empty for a deleted key).
	KeyID string
	// At is when the secret stops admitting: zero means it already has
	// (revoked, deleted, rotated out without grace, expired); a later time
	// is the end of a rotated-out secret's grace period.
	At time.Time
	// Code is the gateway's rejection code for requests with the secret
	// from At on: key_revoked, key_expired or invalid_key (deleted, or
	// rotated out).
	Code string
}

// Subscribe registers fn to be told of every invalidation. fn runs
// synchronously after the write committed and before the call that made it
// returns (so a caller answering "200 revoked" has already notified every
// subscriber), on the writer's goroutine: it must be quick and must not call
// back into the store's write methods. The returned function unsubscribes.
//
// What a write ends is recorded by the code that makes it (commit.go):
// revokeInto, deleteInto and RotateKey name each secret they end, so every
// path that ends a secret — revoke, bulk revoke, delete, delete-all-of-owner,
// user deletion, rotation — is covered by construction. Another node's
// writes (a networked KV) are told the same way once its watch delivers
// them; their ends are read from the committed records, the same records
// Verify reads.
func (s *Store) Subscribe(fn func(Invalidation)) (unsubscribe func()) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.subSeq++
	id := s.subSeq
	if s.subs == nil {
		s.subs = map[uint64]func(Invalidation){}
	}
	s.subs[id] = fn
	return func() {
		s.subMu.Lock()
		defer s.subMu.Unlock()
		delete(s.subs, id)
	}
}

// subscribers is the current set of subscribers (nil when none).
func (s *Store) subscribers() []func(Invalidation) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if len(s.subs) == 0 {
		return nil
	}
	out := make([]func(Invalidation), 0, len(s.subs))
	for _, fn := range s.subs {
		out = append(out, fn)
	}
	return out
}

// notify tells the subscribers what fx ended, after its generations were
// bumped and the hot state reloaded (applyEffects). The secrets' ends are
// the recorded ones for a local commit; otherwise they are read from the
// committed records. A tenant is named when its API keys no longer admit.
// With no subscriber it costs nothing.
func (s *Store) notify(fx *effects) {
	subs := s.subscribers()
	if len(subs) == 0 {
		return
	}
	inv := Invalidation{All: fx.all}
	if fx.endsKnown {
		inv.Secrets = fx.ends
	} else {
		now := s.now()
		for _, h := range fx.checkEnds {
			end, ok, err := s.secretEnd(h, now)
			if err != nil {
				// The record could not be read: the write committed but
				// we cannot tell its effect. Fail closed, as Verify does.
				s.log.Errorf("invalidation: read key record: %v", err)
				end, ok = SecretEnd{Hash: h, Code: "invalid_key"}, true
			}
			if ok {
				inv.Secrets = append(inv.Secrets, end)
			}
		}
	}
	for _, t := range fx.tenants {
		if !s.TenantEnabled(t) {
			inv.Tenants = append(inv.Tenants, t)
		}
	}
	if len(inv.Secrets) == 0 && len(inv.Tenants) == 0 && !inv.All {
		return
	}
	for _, fn := range subs {
		fn(inv)
	}
}

// secretEnd decides, from the committed record, whether the secret h still
// admits requests (ok false), stopped (At zero) or stops at its grace end.
func (s *Store) secretEnd(h SecretHash, now time.Time) (SecretEnd, bool, error) {
	var rec keyRecord
	if err := s.getKeyRecord(h, &rec); err != nil {
		if errors.Is(err, errKVNotFound) {
			return SecretEnd{Hash: h, Code: "invalid_key"}, true, nil // deleted, or rotated out without grace
		}
		return SecretEnd{}, false, err
	}
	end := SecretEnd{Hash: h, KeyID: rec.ID, Code: "invalid_key"}
	switch {
	case rec.isGrace():
		if rec.GraceOf == nil || !now.Before(*rec.GraceUntil) {
			return end, true, nil
		}
		end.At = *rec.GraceUntil
		return end, true, nil
	case rec.RevokedAt != nil:
		end.Code = "key_revoked"
		return end, true, nil
	case rec.ExpiresAt != nil && !now.Before(*rec.ExpiresAt):
		end.Code = "key_expired"
		return end, true, nil
	}
	return end, false, nil
}

// AdmitsUntil reports whether v, a view Verify returned as valid, still
// admits at now, and until when (zero: no deadline) with the rejection code
// that applies from then on (key_expired, or invalid_key for a rotated-out
// secret's grace end). It is current when no write to its secret committed
// since v was cached (checked with the cache generation, one atomic load);
// otherwise the committed record decides, so a secret rotated out with grace
// since gets its grace end. The key's tenant must still have API keys
// enabled. When it no longer admits (ok false), code says why, as the
// gateway's outcome table names it (key_revoked, api_keys_disabled, …).
//
// A subscriber that starts tracking a request after Verify calls it once the
// request is tracked: an invalidation is delivered after the generation bump
// and the tenant reload, so either this call sees the write or the
// subscriber's delivery sees the tracked request.
func (s *Store) AdmitsUntil(v *KeyView, now time.Time) (until time.Time, code string, ok bool) {
	until, code = v.ValidUntil, "key_expired"
	if !v.graceUntil.IsZero() && !until.Before(v.graceUntil) {
		code = "invalid_key"
	}
	switch {
	case s.live != nil && !s.live.admitting():
		return time.Time{}, "unavailable", false // cut off from etcd (liveness.go)
	case !s.TenantEnabled(v.Tenant):
		return time.Time{}, "api_keys_disabled", false
	case !until.IsZero() && !now.Before(until):
		return time.Time{}, code, false
	}
	if s.vcache.gen(v.hash).Load() == v.gen {
		return until, code, true
	}
	end, ended, err := s.secretEnd(v.hash, now)
	switch {
	case err != nil:
		return time.Time{}, "unavailable", false // fail closed
	case !ended:
		return until, code, true
	case end.At.IsZero():
		return time.Time{}, end.Code, false
	}
	if until.IsZero() || end.At.Before(until) {
		until, code = end.At, end.Code
	}
	return until, code, true
}

// SecretHash is the hash of the secret that v was verified with.
func (v *KeyView) SecretHash() SecretHash { return v.hash }

// subscriptions is embedded in Store.
type subscriptions struct {
	subMu  sync.Mutex
	subSeq uint64
	subs   map[uint64]func(Invalidation)
}
