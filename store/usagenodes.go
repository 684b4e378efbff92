package store

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Usage on several nodes. A single node (NodeID "") writes a key's usage as
// merge operands of ku/<key id>, as it always has. Nodes that share an etcd
// each write their own records, so that no two nodes ever contend for one
// (a merge on etcd is a read-modify-write guarded by the record's
// revision) and the writes a flush makes are bounded by the keys this node
// saw used, never by requests:
//
//	ku/<key id>/<node id>       totals and last use (a few dozen bytes)
//	ku/<key id>/<node id>/m<s>  the per-minute counts of one hour, in slot
//	                            s = hour mod usageSlots
//
// A flush rewrites a key's small totals record and the current hour's
// slot (at most 60 minutes), never a whole day of minutes. A slot is
// reused after usageSlots hours: merging into it drops the minutes that
// left the usage window (mergeUsage), so a key keeps at most usageSlots+1
// records per node. Reading a key's usage merges its own record (a single
// node's, or one a storage copy brought over) with all of these.

// MaxNodeIDLen bounds Options.NodeID.
const MaxNodeIDLen = 128

// CheckNodeID reports what is wrong with a node id ("" is valid: a single
// node). It is part of keys, so it is restricted to a safe alphabet.
func CheckNodeID(id string) error {
	if len(id) > MaxNodeIDLen {
		return fmt.Errorf("node id longer than %d bytes", MaxNodeIDLen)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:", c)) {
			return fmt.Errorf("node id %q: only letters, digits and - _ . : are allowed", id)
		}
	}
	return nil
}

// usageSlots is how many hourly minute records a node keeps per key: one
// more than the hours of the usage window, so the slot being written never
// holds minutes that are still in the window.
const usageSlots = int64(usageWindow/time.Hour) + 1

// usageInto adds the merges of a key's flushed usage to b, and the key's
// id to ids once per operation.
func (s *Store) usageInto(b *Batch, ids *[]string, id string, rec *usageRecord) {
	if s.nodeID == "" {
		b.Merge(k(pKeyUsage+id), encodeUsage(rec))
		*ids = append(*ids, id)
		return
	}
	base := usageRecord{LastUsedAt: rec.LastUsedAt, LastUsedIP: rec.LastUsedIP, Totals: rec.Totals}
	b.Merge(k(pKeyUsage+id, s.nodeID), encodeUsage(&base))
	*ids = append(*ids, id)
	for i := 0; i < len(rec.Minutes); {
		hour := rec.Minutes[i].Minute / 60
		j := i + 1
		for j < len(rec.Minutes) && rec.Minutes[j].Minute/60 == hour {
			j++
		}
		slot := "m" + strconv.FormatInt(hour%usageSlots, 10)
		b.Merge(k(pKeyUsage+id, s.nodeID, slot), encodeUsage(&usageRecord{Minutes: rec.Minutes[i:j]}))
		*ids = append(*ids, id)
		i = j
	}
}

// nodeUsage merges the nodes' usage records of a key into own (the key's
// own record, nil when there is none); nil when there is no usage at all.
func (s *Store) nodeUsage(id string, own []byte) ([]byte, error) {
	out := own
	err := s.kv.Scan(k(pKeyUsage+id, ""), nil, func(_, v []byte) bool {
		if out == nil {
			out = encodeUsage(&usageRecord{})
		}
		out = mergeUsage(out, v)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read usage of %s: %w", id, err)
	}
	return out, nil
}

// deleteUsageInto adds the deletion of a key's usage records, its own and
// every node's, to b. A node that flushes usage it buffered before it saw
// the delete writes a record nobody reads again (the key id is never
// reused); it is not worth a failed delete, so a failed scan only leaves
// the nodes' records behind.
func (s *Store) deleteUsageInto(b *Batch, id string) {
	b.Delete(k(pKeyUsage + id))
	err := s.kv.Scan(k(pKeyUsage+id, ""), nil, func(key, _ []byte) bool {
		b.Delete(append([]byte(nil), key...))
		return true
	})
	if err != nil {
		s.log.Errorf("delete key %s: its per-node usage records are left behind: %v", id, err)
	}
}

// applyFlush commits a flush's batch b, whose first len(ids) operations are
// usage (ids[i] is the key of operation i) and the rest its denied-request
// events. On a KV
// with bounded batches (etcd) it commits them in chunks, the events with
// the first; the usage of the chunks that failed is kept for the next
// flush, so no count is written twice.
func (s *Store) applyFlush(b *Batch, ids []string, plan []deniedReport, deltas map[string]*usageDelta, now time.Time, eventsHeld bool) error {
	// eventsHeld: the caller holds wmu for b's events (flush); it is
	// released once the part that carries them has been written, before
	// anything here takes wmu again (sweepDeleted).
	release := func() {
		if eventsHeld {
			s.wmu.Unlock()
			eventsHeld = false
		}
	}
	defer release()
	maxOps, maxBytes := 0, 0
	if l, ok := s.kv.(batchLimiter); ok {
		maxOps, maxBytes = l.batchLimits()
	}
	if maxOps == 0 || b.Len() <= maxOps && int(b.size()) <= maxBytes {
		err := s.applyUsage(b)
		release()
		if err != nil {
			s.flushes.failures.Add(1)
			s.usage.restore(deltas, now) // the next flush retries them
			s.sweepDeleted(ids)          // a failed write may have committed (etcd timeout)
			return fmt.Errorf("flush usage (kept for the next flush): %w", err)
		}
		s.sweepDeleted(ids)
		s.denied.commit(plan, now)
		return nil
	}
	// Chunks: the events first, then usage ops up to the limits, never
	// splitting one key's operations (so a failed chunk's keys are exactly
	// the ones whose usage was not written).
	var chunks []Batch
	var chunkIDs [][]string
	cur := Batch{ops: append([]batchOp(nil), b.ops[len(ids):]...)}
	var curIDs []string
	size := int(cur.size())
	usage := b.ops[:len(ids)]
	for i := 0; i < len(usage); {
		j, groupSize := i, 0
		for ; j < len(usage) && ids[j] == ids[i]; j++ {
			groupSize += len(usage[j].key) + len(usage[j].value) + 16
		}
		if cur.Len() > 0 && (cur.Len()+(j-i) > maxOps || size+groupSize > maxBytes) {
			chunks, chunkIDs = append(chunks, cur), append(chunkIDs, curIDs)
			cur, curIDs, size = Batch{}, nil, 0
		}
		cur.ops = append(cur.ops, usage[i:j]...)
		curIDs = append(curIDs, ids[i])
		size += groupSize
		i = j
	}
	chunks, chunkIDs = append(chunks, cur), append(chunkIDs, curIDs)
	for i := range chunks {
		err := s.applyUsage(&chunks[i])
		release() // the events went with the first chunk
		if err != nil {
			s.flushes.failures.Add(1)
			left := map[string]*usageDelta{}
			for _, c := range chunkIDs[i:] {
				for _, id := range c {
					left[id] = deltas[id]
				}
			}
			s.usage.restore(left, now)
			s.sweepDeleted(chunkIDs[i]) // a failed write may have committed (etcd timeout)
			if i > 0 {
				s.denied.commit(plan, now) // the events went with the first chunk
			}
			return fmt.Errorf("flush usage (%d of %d parts written, the rest kept for the next flush): %w", i, len(chunks), err)
		}
		s.sweepDeleted(chunkIDs[i])
	}
	s.denied.commit(plan, now)
	return nil
}

// sweepDeleted deletes the usage records a flush just wrote for those of
// ids (the keys of the part it wrote) that were deleted meanwhile. A local
// delete reads the key's usage records, commits their deletion and marks
// the key deleted (usageBuffer.forget) all under wmu, so looking the marks
// up under wmu happens either before the delete read the records, which
// then include what the flush wrote, or after it marked the key, and then
// the records are deleted here (the key id is never reused, and later
// flushes skip it). Apart from the part carrying its events (flush), the
// flush holds wmu only for that look-up.
func (s *Store) sweepDeleted(ids []string) {
	s.wmu.Lock()
	gone := s.usage.deletedOf(ids)
	s.wmu.Unlock()
	for _, id := range gone {
		var b Batch
		s.deleteUsageInto(&b, id)
		if err := s.applyUsage(&b); err != nil {
			s.log.Errorf("usage flush: key %s was deleted while its usage was written; that usage record is left behind: %v", id, err)
		}
	}
}

// applyUsage writes a batch of usage records and events: they affect
// nothing cached (no effects to record), but the batch is registered as
// this store's own so the KV's watch echo is not decoded as another node's
// commit (commit.go).
func (s *Store) applyUsage(b *Batch) error {
	if s.flushApply != nil {
		if err := s.flushApply(b); err != nil {
			return err
		}
	}
	s.local.add(b)
	defer s.local.remove(b)
	return s.kv.Apply(b, true)
}
