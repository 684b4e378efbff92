package store

// PendingUsage is how many keys have last-used or usage data buffered in
// memory, not yet flushed to the store.
func (s *Store) PendingUsage() int {
	n := 0
	for i := range s.usage.shards {
		sh := &s.usage.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
