package store

import (
	"sync/atomic"
	"time"
)

// FlushStats are cumulative usage-flush figures for metrics.
type FlushStats struct {
	Flushes      uint64
	TotalSeconds float64
}

type flushCounters struct {
	n     atomic.Uint64
	nanos atomic.Int64
}

func (s *Store) flushObserved(d time.Duration) {
	s.flushes.n.Add(1)
	s.flushes.nanos.Add(int64(d))
}

// FlushStats returns how many usage flushes ran and how long they took.
func (s *Store) FlushStats() FlushStats {
	return FlushStats{Flushes: s.flushes.n.Load(), TotalSeconds: time.Duration(s.flushes.nanos.Load()).Seconds()}
}
