package store

import "bytes"

// A store on a KV that other nodes write too (etcd: one that implements
// watchResetter) cannot trust what it derived from its own writes alone.
// Key counts per tenant (countTenantKeys) are kept in memory and adjusted
// by this node's creates and deletes; onSharedChange drops a tenant's
// count whenever a commit — this node's or another's — adds or removes one
// of its keys, so the next check counts from the store. Key limits are
// then checked against every node's keys; two nodes creating at the same
// moment can still both pass the check (README, Running several nodes).
func (s *Store) onSharedChange(keys [][]byte) {
	var tenants []string
	for _, key := range keys {
		rest, ok := bytes.CutPrefix(key, []byte(pKeyTenant))
		if !ok {
			continue
		}
		if i := bytes.IndexByte(rest, '/'); i > 0 {
			tenants = append(tenants, string(rest[:i]))
		}
	}
	if len(tenants) == 0 {
		return
	}
	s.cmu.Lock()
	for _, t := range tenants {
		delete(s.keyCounts, t)
	}
	s.cmu.Unlock()
}

// forgetKeyCounts drops every tenant's key count (after a watch reset).
func (s *Store) forgetKeyCounts() {
	s.cmu.Lock()
	s.keyCounts = nil
	s.cmu.Unlock()
}
