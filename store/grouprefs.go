package store

import (
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"
)

// Group references across nodes. A key (or the tenant's default_group) may
// only name a group that exists, and DeleteGroup refuses a group that is
// named: each checks, then writes. On one node wmu keeps the two apart;
// nodes that share an etcd each have their own, so a key could be created
// into a group another node is deleting at the same moment. Both sides
// therefore carry a guard (Batch.Expect, as in keyadds.go):
//
//   - a write that makes something name a group (CreateKey, CreateKeys,
//     ImportKeys, UpdateKey with a group, UpdateSettings with a
//     default_group) expects the group record unchanged since it checked
//     it, and writes a fresh random mark under gr/<tenant>/<group>;
//   - DeleteGroup reads that mark before it looks for keys and settings
//     naming the group, and its batch expects the mark and the group record
//     unchanged.
//
// If the referencing write commits after DeleteGroup read the mark, the
// mark changed (no two writes write the same one): the delete writes
// nothing and looks again. If it committed before, the delete's reads,
// which come after, see the key (on etcd every read is linearizable). If the
// delete commits first, the referencing write's expectation fails and its
// check, run again, finds no group. The loser of such a race reads, checks
// and builds again, up to keyAddAttempts times (retryConflicts).

// pGroupRefs holds each group's reference mark:
//
//	gr/<tenant>/<group> → random bytes, rewritten by each write naming it
const pGroupRefs = "gr/"

// groupRefs are the groups a write checked, by name: the group record as
// read, or nil for a group that does not exist.
type groupRefs map[string][]byte

// checkGroupExists adds a problem to f when the tenant has no group named
// group ("" is no group), and records what it read in refs.
func (s *Store) checkGroupExists(f fieldErrors, refs groupRefs, tenant, group string) {
	if group == "" {
		return
	}
	raw, seen := refs[group]
	if !seen {
		var err error
		if raw, err = s.kv.Get(k(pGroup+tenant, group)); err != nil {
			raw = nil // not found, or not readable: refused either way
		}
		refs[group] = raw
	}
	if raw == nil {
		f.add("group", fmt.Sprintf("no group %q in this tenant", truncate(group, 64)))
	}
}

// guard makes c commit only if every existing group in refs is unchanged,
// and marks each as referenced.
func (refs groupRefs) guard(c *commit, tenant string) {
	for g, raw := range refs {
		if raw == nil {
			continue
		}
		c.b.Expect(k(pGroup+tenant, g), raw)
		c.b.Set(k(pGroupRefs+tenant, g), []byte(rand.Text()))
	}
}

// readGroupRefMark reads a group's reference mark (nil: none yet).
func (s *Store) readGroupRefMark(tenant, group string) ([]byte, error) {
	v, err := s.kv.Get(k(pGroupRefs+tenant, group))
	switch {
	case errors.Is(err, errKVNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read references of group %q: %w", group, err)
	}
	return v, nil
}

// retryConflicts runs write (which reads, checks and commits a guarded
// batch) again while its commit conflicts with another node's; what says
// what kept conflicting. The caller holds wmu.
func (s *Store) retryConflicts(what string, write func() error) error {
	for attempt := 1; ; attempt++ {
		err := write()
		if !errors.Is(err, errKVConflict) {
			return err
		}
		if attempt == keyAddAttempts {
			return fmt.Errorf("%w: %s during each of %d attempts; nothing was changed, try again", ErrUnavailable, what, attempt)
		}
		time.Sleep(mrand.N(time.Duration(attempt) * keyAddBackoff))
	}
}
