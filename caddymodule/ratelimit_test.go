package caddymodule

import (
	"strconv"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

func TestLimiterSetSweepsFullBuckets(t *testing.T) {
	var ls limiterSet
	now := time.Unix(1_800_000_000, 0)
	rl := &store.RateLimit{RequestsPerSecond: 10, Burst: 5}
	// A key that used up its burst stays limited through every sweep.
	for range 5 {
		if !ls.allow("busy", rl, now).allowed {
			t.Fatal("burst refused")
		}
	}
	if ls.allow("busy", rl, now).allowed {
		t.Fatal("sixth request in the same instant allowed")
	}
	// Many keys use one token each; a second later their buckets are full.
	for i := range 3 * minSweep {
		ls.allow("k"+strconv.Itoa(i), rl, now)
	}
	ls.sweeps.Wait()
	if n := ls.n.Load(); n < minSweep {
		t.Fatalf("%d buckets before they refilled", n)
	}
	// New buckets trigger a sweep (in the background, once the set has
	// doubled since the last one), which drops the refilled old buckets.
	later := now.Add(time.Second)
	added := 0
	for ; added < 4*3*minSweep && ls.n.Load() > int64(added)+2; added++ {
		ls.allow("new"+strconv.Itoa(added), rl, later)
		if added%256 == 0 {
			ls.sweeps.Wait()
		}
	}
	ls.sweeps.Wait()
	if n := ls.n.Load(); n > int64(added)+2 {
		t.Fatalf("%d buckets after the old ones refilled and %d new ones, want about %d", n, added, added)
	}
	count := 0
	ls.m.Range(func(any, any) bool { count++; return true })
	if int64(count) != ls.n.Load() {
		t.Fatalf("count %d, map holds %d", ls.n.Load(), count)
	}
	// A bucket that is not full was kept: the busy key drained it again
	// just now, so it is still limited.
	for range 5 {
		ls.allow("busy", rl, later)
	}
	ls.sweep(later)
	if ls.allow("busy", rl, later).allowed {
		t.Fatal("a drained bucket was dropped by the sweep")
	}
	// An edited limit starts a fresh bucket.
	if d := ls.allow("busy", &store.RateLimit{RequestsPerSecond: 1, Burst: 2}, later); !d.allowed || d.limit != 2 {
		t.Fatalf("after the limit changed: %+v", d)
	}
}
