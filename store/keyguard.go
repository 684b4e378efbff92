package store

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Read-modify-write across nodes. Most admin writes read a record, decide,
// and write it back or something derived from it (a rotation replaces the
// key's record, a revoke rewrites it, a settings change rewrites the tenant
// record). On one node wmu keeps two of them apart; nodes that share an
// etcd each have their own, so the later writer would overwrite, from what
// it read before, a write that committed in between: a rotation could put
// a secret revoked meanwhile back in grace or service, an edit of settings
// could re-enable a tenant just disabled, and one of two edits would be
// lost. Every such write therefore expects, with Batch.Expect, each record
// it read and builds on to be unchanged at its commit (optimistic
// concurrency, as keyadds.go and grouprefs.go):
//
//   - key records: RevokeKey, RevokeKeys, RotateKey, UpdateKey, DeleteKey,
//     DeleteOwnerKeys and DeleteUser expect the current record kh/<hash> of
//     each key they change, as they read it (expectKey). Any write of a key
//     changes that record (a rotation turns it into a grace record or
//     deletes it, a revoke or an edit rewrites it, a delete removes it), so
//     of two writes that read the same state only the first commits;
//   - the tenant record: UpdateSettings and UpdateTenant expect it as read
//     (readTenantRaw);
//   - groups and users: PutGroup and PutUser expect the record they
//     replace, or its absence when they create it.
//
// The loser's Apply writes nothing (errKVConflict); it reads, checks and
// builds again (retryConflicts), so it acts on the winner's result: a
// rotation that lost to a revoke answers 409 (revoked keys cannot be
// rotated), a revoke that lost to a rotation revokes the rotated key with
// its grace secret, an edit keeps the other's fields. Hence the revocation
// guarantee (commit.go) holds across nodes: no write built on a state from
// before a revoke commits after it. After keyAddAttempts lost attempts the
// call answers ErrUnavailable (503 `unavailable`) with nothing written.
//
// On etcd an expectation is one compare of the batch's Txn (and one read in
// its failure branch); etcd bounds each of compares, writes and failure
// reads by --max-txn-ops separately, and a revoke writes at least two
// records per key, so the compares never set the bound. On Pebble (one
// node) wmu already serialises these writes and the expectations never
// fail; checking them costs a read of a record just read.

// loadKeyRaw is loadKey that also returns the key's record as stored, for
// a write that expects it unchanged (expectKey).
func (s *Store) loadKeyRaw(tenant, id string) (*keyRecord, SecretHash, []byte, error) {
	var h SecretHash
	raw, err := s.kv.Get(k(pKeyID + id))
	if errors.Is(err, errKVNotFound) || (err == nil && len(raw) != len(h)) {
		return nil, h, nil, notFound("key", id)
	}
	if err != nil {
		return nil, h, nil, fmt.Errorf("read key: %w", err)
	}
	copy(h[:], raw)
	rv, err := s.kv.Get(hashKey(pKeyHash, h))
	if errors.Is(err, errKVNotFound) && s.shared {
		// Rotated or deleted through another node between the two reads.
		return nil, h, nil, fmt.Errorf("read key %s: %w", id, errKVConflict)
	}
	if err != nil {
		return nil, h, nil, fmt.Errorf("read key %s: %w", id, err)
	}
	var rec keyRecord
	if err := decodeKeyRecord(rv, &rec); err != nil {
		return nil, h, nil, fmt.Errorf("read key %s: %s record: %w", id, pKeyHash, err)
	}
	if rec.isGrace() && s.shared {
		// Rotated through another node between the two reads: the hash
		// now holds the rotated-out secret's grace record.
		return nil, h, nil, fmt.Errorf("read key %s: %w", id, errKVConflict)
	}
	if rec.Tenant != tenant {
		return nil, h, nil, notFound("key", id)
	}
	return &rec, h, rv, nil
}

// expectKey makes c commit only if the key's current record (under its
// secret hash h) is still raw, as read by loadKeyRaw.
func expectKey(c *commit, h SecretHash, raw []byte) {
	c.b.Expect(hashKey(pKeyHash, h), raw)
}

// readTenantRaw reads the tenant record, decoded and as stored (for a
// write that expects it unchanged).
func (s *Store) readTenantRaw(id string) (*tenantRecord, []byte, error) {
	raw, err := s.kv.Get(k(pTenant + id))
	if errors.Is(err, errKVNotFound) {
		return nil, nil, notFound("tenant", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read tenant: %w", err)
	}
	rec := new(tenantRecord)
	if err := json.Unmarshal(raw, rec); err != nil {
		return nil, nil, fmt.Errorf("decode tenant %s: %w", id, err)
	}
	return rec, raw, nil
}

// readRaw reads a record as stored; nil when it does not exist.
func (s *Store) readRaw(key []byte, what string) ([]byte, error) {
	raw, err := s.kv.Get(key)
	switch {
	case errors.Is(err, errKVNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return raw, nil
}
