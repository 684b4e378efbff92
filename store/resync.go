package store

// onReset is called by a KV whose watch may have missed commits (etcd: the
// revisions it had not delivered were compacted away, PITFALLS 24): any
// secret may have changed, and so may any tenant or group. Every stripe's
// generation is bumped, so no cached verdict is served again and no fill
// that read before the reset is kept (verify.go); the tenant and group
// state is read afresh, and so are key counts. The KV calls it when it finds the gap and again
// once its watch has resumed, so a fill that read in between is dropped
// too.
func (s *Store) onReset() {
	for i := range s.vcache.gens {
		s.vcache.gens[i].Add(1)
	}
	s.forgetKeyCounts()
	if err := s.reloadHot(); err != nil {
		s.log.Errorf("reload tenants and groups after the watch resumed: %v", err)
	}
	s.resets.Add(1)
}
