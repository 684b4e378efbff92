package store

import (
	"bytes"
	"fmt"
	"time"
)

// Event retention: audit events older than Options.EventRetention are
// deleted by a background pass, never by a request. Without it the event log
// grows forever — above all the gateway's "key.requests_denied" summaries,
// up to one per denied key per minute (denied.go) for as long as a client
// keeps sending a revoked key.
const (
	// DefaultEventRetention is how long events are kept unless configured.
	DefaultEventRetention = 90 * 24 * time.Hour
	// MinEventRetention is the shortest retention Open accepts: the audit
	// trail must at least cover the last day.
	MinEventRetention = 24 * time.Hour
	// DefaultEventPruneInterval is how often the background pass runs.
	DefaultEventPruneInterval = time.Hour
	// firstPruneDelay is when the first pass after Open runs (at most the
	// interval), so a process restarted more often than the interval still
	// prunes.
	firstPruneDelay = time.Minute
	// pruneBatchSize bounds the deletions of one write batch, so that a
	// first pass over years of events never builds one huge batch.
	pruneBatchSize = 1000
)

// PruneEvents deletes the events older than the retention (by the store's
// clock), in batches of at most pruneBatchSize, and returns how many it
// deleted. The background loop calls it; it is safe to call at any time.
func (s *Store) PruneEvents() (int, error) {
	return s.pruneEvents(nil)
}

// pruneEvents does one pass; it stops early (without error) when stop is
// closed. Event ids are "evt_<16 hex digits of the Unix nanosecond>" and
// sort by time within a tenant, so each tenant's old events are a prefix of
// its range: the scan deletes up to the first event at or after the cutoff,
// then jumps to the next tenant. It reads no newer event but that one.
func (s *Store) pruneEvents(stop <-chan struct{}) (int, error) {
	if s.retention <= 0 {
		return 0, nil // kept forever
	}
	cutoff := s.now().Add(-s.retention).UnixNano()
	if cutoff <= 0 {
		return 0, nil
	}
	bound := []byte(fmt.Sprintf("evt_%016x", uint64(cutoff)))
	prefix := []byte(pEvent)
	start := prefix
	deleted := 0
	for {
		var b Batch
		var next []byte // where the next scan starts; nil: the scan ended
		err := s.kv.Scan(prefix, start, func(key, _ []byte) bool {
			rest := key[len(prefix):] // <tenant>/<event id>
			slash := bytes.IndexByte(rest, '/')
			if slash < 0 {
				next = append(bytes.Clone(key), 0) // not an event: step over it
				return false
			}
			if bytes.Compare(rest[slash+1:], bound) >= 0 {
				// The tenant's remaining events are recent: go on with the
				// next tenant, at "e/<tenant>0" ('0' follows '/', and ids
				// have no '/').
				next = append(bytes.Clone(key[:len(prefix)+slash]), '/'+1)
				return false
			}
			if b.Len() == pruneBatchSize {
				next = bytes.Clone(key)
				return false
			}
			b.Delete(bytes.Clone(key))
			return true
		})
		if err != nil {
			return deleted, fmt.Errorf("prune events: %w", err)
		}
		if b.Len() > 0 {
			// Not synced: a deletion lost in a crash is redone next pass.
			if err := s.kv.Apply(&b, false); err != nil {
				return deleted, fmt.Errorf("prune events: %w", err)
			}
			deleted += b.Len()
		}
		if next == nil {
			return deleted, nil
		}
		start = next
		select {
		case <-stop:
			return deleted, nil
		default:
		}
	}
}

// pruneLoop runs pruneEvents shortly after Open and then every interval
// until Close.
func (s *Store) pruneLoop(every time.Duration) {
	defer close(s.pruneDone)
	t := time.NewTimer(min(firstPruneDelay, every))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			n, err := s.pruneEvents(s.stop)
			if err != nil {
				s.log.Errorf("event retention: %v", err)
			} else if n > 0 {
				s.log.Infof("event retention: deleted %d events older than %s", n, Duration(s.retention))
			}
			t.Reset(every)
		}
	}
}
