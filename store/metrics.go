package store

import (
	"sync/atomic"
	"time"
)

// FlushStats are cumulative usage-flush figures for metrics.
type FlushStats struct {
	Flushes      uint64
	TotalSeconds float64
	// Failures counts flushes that could not write (disk full, store
	// failed); their usage was kept in memory for the next one.
	Failures uint64
	// PendingMinutes is how many per-minute usage counts are buffered in
	// memory now (bounded by Options.UsageBufferLimit).
	PendingMinutes int64
	// DroppedRequests counts requests whose per-minute usage count was
	// dropped because the buffer was full; they still count in their key's
	// totals and last use.
	DroppedRequests uint64
}

type flushCounters struct {
	n        atomic.Uint64
	nanos    atomic.Int64
	failures atomic.Uint64
	failing  atomic.Uint64 // consecutive failures of the background flusher
}

func (s *Store) flushObserved(d time.Duration) {
	s.flushes.n.Add(1)
	s.flushes.nanos.Add(int64(d))
}

// FlushStats returns how many usage flushes ran and how long they took, how
// many failed, and what the in-memory usage buffer holds and dropped.
func (s *Store) FlushStats() FlushStats {
	return FlushStats{
		Flushes:         s.flushes.n.Load(),
		TotalSeconds:    time.Duration(s.flushes.nanos.Load()).Seconds(),
		Failures:        s.flushes.failures.Load(),
		PendingMinutes:  s.usage.minutes.Load(),
		DroppedRequests: s.usage.dropped.Load(),
	}
}

// StorageStats describe the state of the store's disk for metrics.
type StorageStats struct {
	// WritesRefused counts writes refused because the free space of the
	// store's filesystem was below the disk reserve.
	WritesRefused uint64
	// Failed is true once Pebble reported a fatal error: writes are refused
	// until a restart.
	Failed bool
}

// StorageStats returns the disk-space figures of the embedded store (zero
// for other KVs).
func (s *Store) StorageStats() StorageStats {
	p, ok := s.kv.(*pebbleKV)
	if !ok {
		return StorageStats{}
	}
	return StorageStats{WritesRefused: p.disk.refusedWrites(), Failed: p.failure.Load() != nil}
}
