package store

// PendingUsage is how many keys have last-used or usage data buffered in
// memory, not yet flushed to the store, including those a running flush
// is writing (a key used again meanwhile counts twice until it is done).
// Zero means everything recorded so far is in the store.
func (s *Store) PendingUsage() int {
	n := 0
	for i := range s.usage.shards {
		sh := &s.usage.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	// Read last: keys a flush takes while the shards are counted are then
	// counted twice rather than not at all.
	return n + int(s.usage.inFlight.Load())
}
