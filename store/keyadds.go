package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Key limits across nodes. key_limit and max_keys_per_user are checked by
// counting and then writing; on one node wmu keeps two such
// read-check-writes apart, but nodes that share an etcd each have their
// own. Every commit that adds keys to a tenant (CreateKey, CreateKeys,
// ImportKeys) or makes an expired one active again (RotateKey) therefore
// carries a guard (keyAdds):
//
//   - before it counts anything, it reads the tenant's key-add sequence
//     (ka/<tenant>) and, as raw bytes, the tenant record (its limits);
//   - it counts from the KV (countKeysNow, keys.go): on etcd a linearizable
//     read, which sees every commit that answered before it; the node's
//     in-memory count may lag behind its watch;
//   - its batch expects both records unchanged (Batch.Expect) and bumps the
//     sequence.
//
// Two guarded commits for one tenant cannot both succeed unless one read
// the sequence after the other had committed, and then counted the other's
// keys too: the KV makes the expectation and the write one atomic step (a
// Txn compare on etcd, pebbleKV's lock on Pebble). The loser's Apply writes
// nothing (errKVConflict); it reads, checks and builds again, up to
// keyAddAttempts times, then answers ErrUnavailable (503 `unavailable`:
// nothing was created, the call may simply be retried). Writes that only
// lower the counts (revoke, delete, an expiry passing) need no guard: a
// check that counted a key deleted since is only conservative. A change of
// the limits rewrites the tenant record, which the guard expects unchanged.
// An import also expects each imported secret's record absent, so two
// nodes never store one secret twice.
//
// The same commits guard each owner who is a user (guardOwner). DeleteUser
// revokes the user's active keys in a commit that expects the user's
// reference mark (pUserRefs, users.go) unchanged; a key add for a user
// rewrites that mark and expects the user's record unchanged. Of a
// delete and a key add on two nodes, either the delete reads the key and
// revokes it, or the add finds the user gone (and its owner is then a name
// that is not a user, as after the delete on one node).

// pKeyAdds holds each tenant's key-add sequence:
//
//	ka/<tenant> → uint64, big-endian: guarded key-adding commits so far
const pKeyAdds = "ka/"

// keyAddAttempts bounds the attempts of a key-adding call whose commit
// keeps meeting other nodes' (each attempt but the last loses to a commit
// that did succeed, so the cluster as a whole always progresses).
const keyAddAttempts = 8

// keyAddBackoff is the upper bound of the random pause before the second
// attempt (it grows linearly after), which spreads nodes that collided.
const keyAddBackoff = 2 * time.Millisecond

// keyAdds is what a key-adding call read before it counted: the tenant's
// sequence and record.
type keyAdds struct {
	tenant  string
	seq     []byte // nil: none yet
	trecRaw []byte
	trec    *tenantRecord
	owners  map[string]bool // guarded already (guardOwner)
}

// readKeyAdds reads the tenant's key-add sequence, then its record.
func (s *Store) readKeyAdds(tenant string) (*keyAdds, error) {
	ka := &keyAdds{tenant: tenant}
	switch v, err := s.kv.Get(k(pKeyAdds + tenant)); {
	case errors.Is(err, errKVNotFound):
	case err != nil:
		return nil, fmt.Errorf("read key-add sequence of %s: %w", tenant, err)
	default:
		ka.seq = v
	}
	raw, err := s.kv.Get(k(pTenant + tenant))
	if errors.Is(err, errKVNotFound) {
		return nil, notFound("tenant", tenant)
	}
	if err != nil {
		return nil, fmt.Errorf("read tenant: %w", err)
	}
	ka.trecRaw = raw
	ka.trec = new(tenantRecord)
	if err := json.Unmarshal(raw, ka.trec); err != nil {
		return nil, fmt.Errorf("decode tenant %s: %w", tenant, err)
	}
	return ka, nil
}

// guard makes c commit only if neither record changed since they were read,
// and bumps the sequence (so that it conflicts with every other guarded
// commit that read the same value).
func (ka *keyAdds) guard(c *commit) {
	key := k(pKeyAdds + ka.tenant)
	c.b.Expect(key, ka.seq)
	c.b.Expect(k(pTenant+ka.tenant), ka.trecRaw)
	var n uint64
	if len(ka.seq) == 8 {
		n = binary.BigEndian.Uint64(ka.seq)
	}
	c.b.Set(key, binary.BigEndian.AppendUint64(nil, n+1))
}

// guardOwner guards, once per owner and commit, a key the commit adds for
// owner: when owner is a user, guardUser.
func (s *Store) guardOwner(c *commit, ka *keyAdds, owner string) error {
	if ka.owners[owner] {
		return nil
	}
	if ka.owners == nil {
		ka.owners = map[string]bool{}
	}
	ka.owners[owner] = true
	raw, err := s.kv.Get(k(pUser+ka.tenant, owner))
	switch {
	case errors.Is(err, errKVNotFound):
		return nil // not a user: no delete to meet
	case err != nil:
		return fmt.Errorf("read user %s: %w", owner, err)
	}
	guardUser(c, ka.tenant, owner, raw)
	return nil
}

// retryKeyAdds runs add (which reads, checks and commits a guarded batch)
// again while its commit conflicts with another node's. The caller holds
// wmu: on one node there is no one else to conflict with.
func (s *Store) retryKeyAdds(tenant string, add func() error) error {
	return s.retryConflicts(fmt.Sprintf("other nodes added keys to tenant %q", tenant), add)
}
