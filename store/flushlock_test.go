package store

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// stuck bounds how long a test waits for an admin write that must not wait
// for a blocked flush: without the fix it waits forever, so this only turns
// a hang into a failure; it measures nothing.
const stuck = 10 * time.Second

// usedKeys creates n keys in the default tenant, records one admitted use
// of each and returns them with their secrets.
func usedKeys(t *testing.T, s *Store, clk *clock, n int) ([]*Key, []string) {
	t.Helper()
	enable(t, s, DefaultTenant)
	in := make([]KeyInput, n)
	for i := range in {
		in[i] = KeyInput{Name: fmt.Sprintf("k%d", i)}
	}
	keys, secrets, err := s.CreateKeys("op", DefaultTenant, "alice", in)
	mustNil(t, err)
	for _, sec := range secrets {
		v, _, err := s.Verify(DefaultTenant, sec, clk.Now())
		mustNil(t, err)
		s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
	}
	return keys, secrets
}

// blockFirstFlushWrite makes the store's next flush stop before its first
// write until release is closed; the batch it holds is sent on held.
func blockFirstFlushWrite(s *Store) (held chan *Batch, release chan struct{}) {
	held, release = make(chan *Batch, 1), make(chan struct{})
	var once sync.Once
	s.flushApply = func(b *Batch) error {
		once.Do(func() {
			held <- b
			<-release
		})
		return nil
	}
	return held, release
}

// usageKeyIDs are the key ids whose usage records b writes.
func usageKeyIDs(b *Batch) map[string]bool {
	ids := map[string]bool{}
	for _, op := range b.ops {
		if rest, ok := strings.CutPrefix(string(op.key), pKeyUsage); ok {
			id, _, _ := strings.Cut(rest, "/")
			ids[id] = true
		}
	}
	return ids
}

// TestFlushDoesNotBlockRevoke: while a flush of many keys is writing (held
// inside its first write), RevokeKey on the same store answers and the
// revoked key stops admitting; the flush then completes and every key's use
// is counted once.
func TestFlushDoesNotBlockRevoke(t *testing.T) {
	testEachKV(t, func(t *testing.T, backend string, s *Store, clk *clock) {
		keys, secrets := usedKeys(t, s, clk, 200)
		held, release := blockFirstFlushWrite(s)
		flushed := make(chan error, 1)
		go func() { flushed <- s.Flush() }()
		<-held

		revoked := make(chan error, 1)
		go func() { _, err := s.RevokeKey("op", DefaultTenant, keys[7].ID); revoked <- err }()
		select {
		case err := <-revoked:
			mustNil(t, err)
		case <-time.After(stuck):
			close(release)
			t.Fatal("RevokeKey waited for the usage flush")
		}
		if v := verdict(t, s, DefaultTenant, secrets[7], clk.Now()); v != VerdictRevoked {
			t.Fatalf("revoked key during a flush: %s", vname(v))
		}
		close(release)
		mustNil(t, <-flushed)
		for _, i := range []int{0, 7, 199} {
			u, err := s.Usage(DefaultTenant, keys[i].ID)
			mustNil(t, err)
			if u.Total != 1 || u.LastUsedAt == nil {
				t.Fatalf("key %d after the flush: total %d, last used %v", i, u.Total, u.LastUsedAt)
			}
		}
	})
}

// TestKeyDeletedDuringFlushHasNoUsage: keys deleted while a flush writes
// (one whose usage is in the write being held, and on etcd one in a later
// part) have no usage record afterwards; the others' usage is written.
func TestKeyDeletedDuringFlushHasNoUsage(t *testing.T) {
	testEachKV(t, func(t *testing.T, backend string, s *Store, clk *clock) {
		keys, _ := usedKeys(t, s, clk, 200)
		held, release := blockFirstFlushWrite(s)
		flushed := make(chan error, 1)
		go func() { flushed <- s.Flush() }()
		inHeld := usageKeyIDs(<-held)

		var victims []string
		for id := range inHeld {
			victims = append(victims, id)
			break
		}
		for _, key := range keys {
			if !inHeld[key.ID] {
				victims = append(victims, key.ID) // written by a later part
				break
			}
		}
		if backend == "etcd" && len(victims) != 2 {
			t.Fatalf("the flush wrote all %d keys in one part; the test needs several", len(keys))
		}
		deleted := make(chan error, 1)
		go func() {
			for _, id := range victims {
				if err := s.DeleteKey("op", DefaultTenant, id); err != nil {
					deleted <- err
					return
				}
			}
			deleted <- nil
		}()
		select {
		case err := <-deleted:
			mustNil(t, err)
		case <-time.After(stuck):
			close(release)
			t.Fatal("DeleteKey waited for the usage flush")
		}
		close(release)
		mustNil(t, <-flushed)

		for _, id := range victims {
			var left []string
			mustNil(t, s.kv.Scan(k(pKeyUsage+id), nil, func(key, _ []byte) bool {
				left = append(left, string(key))
				return true
			}))
			if len(left) > 0 {
				t.Errorf("key %s deleted during the flush has usage records: %v", id, left)
			}
		}
		gone := map[string]bool{}
		for _, id := range victims {
			gone[id] = true
		}
		for _, key := range keys {
			if gone[key.ID] {
				continue
			}
			u, err := s.Usage(DefaultTenant, key.ID)
			mustNil(t, err)
			if u.Total != 1 {
				t.Fatalf("surviving key %s after the flush: total %d", key.ID, u.Total)
			}
		}
	})
}

// TestFlushPartFailsWhileKeyDeleted: on etcd, a key of the second part of
// a flush is deleted while that part is written, and the third part fails:
// the first two parts' usage is written once, the deleted key's is swept,
// and the failed parts' usage is written by the next flush, once; the
// denied-request events go with the first part (which holds wmu for their
// ids: TestFlushEventsCommitInIDOrder), once.
func TestFlushPartFailsWhileKeyDeleted(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = newEtcdKV(t), "node-1" })
	keys, secrets := usedKeys(t, s, clk, 200)
	for _, sec := range secrets[:3] {
		v, _, err := s.Verify(DefaultTenant, sec, clk.Now())
		mustNil(t, err)
		s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeForbidden, clk.Now())
	}
	var victim string
	parts := 0
	s.flushApply = func(b *Batch) error {
		if b.ops[len(b.ops)-1].kind != opMerge {
			return nil // the sweep of the deleted key's records
		}
		parts++
		switch parts {
		case 2:
			denied := map[string]bool{keys[0].ID: true, keys[1].ID: true, keys[2].ID: true}
			for id := range usageKeyIDs(b) {
				if !denied[id] {
					victim = id
					break
				}
			}
			done := make(chan error, 1)
			go func() { done <- s.DeleteKey("op", DefaultTenant, victim) }()
			select {
			case err := <-done:
				return err
			case <-time.After(stuck):
				t.Error("DeleteKey waited for the usage flush")
				return errKVConflict
			}
		case 3:
			return errKVConflict // any failure
		}
		return nil
	}
	if err := s.Flush(); err == nil || !strings.Contains(err.Error(), "(2 of ") {
		t.Fatalf("flush with a failing second part: %v", err)
	}
	s.flushApply = nil
	mustNil(t, s.Flush())
	if s.PendingUsage() != 0 {
		t.Fatalf("%d keys' usage still pending", s.PendingUsage())
	}
	mustNil(t, s.kv.Scan(k(pKeyUsage+victim), nil, func(key, _ []byte) bool {
		t.Errorf("deleted key has a usage record %s", key)
		return true
	}))
	for i, key := range keys {
		if key.ID == victim {
			continue
		}
		u, err := s.Usage(DefaultTenant, key.ID)
		mustNil(t, err)
		want := uint64(1)
		if i < 3 {
			want = 2
		}
		if u.Total != want {
			t.Fatalf("key %d after a failed part and a retry: total %d, want %d", i, u.Total, want)
		}
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"}); len(evs) != 3 {
		t.Fatalf("%d denied-request events, want 3", len(evs))
	}
}

// TestFlushFailedButCommittedSwept: a flush write that reports failure but
// committed (as an etcd call that timed out may have) for a key deleted
// meanwhile leaves no usage record of it.
func TestFlushFailedButCommittedSwept(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	keys, _ := usedKeys(t, s, clk, 3)
	var once sync.Once
	s.flushApply = func(b *Batch) error {
		var err error
		once.Do(func() {
			mustNil(t, s.DeleteKey("op", DefaultTenant, keys[1].ID))
			mustNil(t, s.kv.Apply(b, true))
			err = errors.New("timed out (committed all the same)")
		})
		return err
	}
	if err := s.Flush(); err == nil {
		t.Fatal("the flush did not report its failed write")
	}
	mustNil(t, s.kv.Scan(k(pKeyUsage+keys[1].ID), nil, func(key, _ []byte) bool {
		t.Errorf("deleted key has a usage record %s", key)
		return true
	}))
}

// TestFlushEventsCommitInIDOrder: a flush that writes a denied-request
// summary takes its event id and commits it before any other write takes a
// later one, so meta/last_event (which a reopened store continues from)
// never goes back: here a revoke sent while the flush's write is held.
func TestFlushEventsCommitInIDOrder(t *testing.T) {
	testEachKV(t, func(t *testing.T, _ string, s *Store, clk *clock) {
		keys, secrets := usedKeys(t, s, clk, 2)
		v, _, err := s.Verify(DefaultTenant, secrets[0], clk.Now())
		mustNil(t, err)
		s.RecordUse(v, netip.MustParseAddr("192.0.2.1"), OutcomeForbidden, clk.Now()) // reported at once
		held, release := blockFirstFlushWrite(s)
		flushed := make(chan error, 1)
		go func() { flushed <- s.Flush() }()
		<-held
		revoked := make(chan error, 1)
		go func() { _, err := s.RevokeKey("op", DefaultTenant, keys[1].ID); revoked <- err }()
		// Give the revoke the chance to commit first, as it did when the
		// flush took its ids without wmu; it must wait for the flush's
		// events instead, so the wait ends by the timer.
		var revokeErr error
		answered := false
		select {
		case revokeErr = <-revoked:
			answered = true
		case <-time.After(300 * time.Millisecond):
		}
		close(release)
		mustNil(t, <-flushed)
		if !answered {
			revokeErr = <-revoked
		}
		mustNil(t, revokeErr)

		var newest string
		for _, e := range allEvents(t, s, DefaultTenant, EventQuery{}) {
			newest = max(newest, e.ID)
		}
		last, err := s.kv.Get([]byte(metaLastEvent))
		mustNil(t, err)
		if string(last) != newest {
			t.Fatalf("meta/last_event is %s, the newest event %s: a reopened store would reuse ids", last, newest)
		}
	})
}
