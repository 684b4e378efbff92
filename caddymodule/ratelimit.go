package caddymodule

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/keygate/keygate/store"
)

// limiterSet holds one token bucket per key (a group's rate_limit applies to
// each of its keys). It lives in the shared state so buckets survive reloads.
//
// Buckets that are full again are dropped now and then (see sweep): a full
// bucket behaves exactly like a new one, so this forgets nothing, and the
// buckets of deleted or idle keys do not pile up.
type limiterSet struct {
	m        sync.Map     // key id → *keyLimiter
	n        atomic.Int64 // buckets in m
	sweepAt  atomic.Int64 // sweep when n reaches this (at least minSweep)
	sweeping atomic.Bool
	sweeps   sync.WaitGroup // background sweeps (tests wait for them)
}

// minSweep buckets are kept without sweeping.
const minSweep = 1024

type keyLimiter struct {
	limit store.RateLimit
	lim   *rate.Limiter
}

// decision of one rate-limit check.
type decision struct {
	allowed    bool
	limit      int     // bucket size
	remaining  int     // whole tokens left after this request
	resetAfter float64 // seconds until the bucket is full again
	retryAfter float64 // seconds until one token is available (when denied)
}

// allow takes one token from the key's bucket at now.
func (ls *limiterSet) allow(keyID string, rl *store.RateLimit, now time.Time) decision {
	v, ok := ls.m.Load(keyID)
	if !ok {
		var loaded bool
		if v, loaded = ls.m.LoadOrStore(keyID, newKeyLimiter(rl)); !loaded {
			ls.added(now)
		}
	}
	kl := v.(*keyLimiter)
	if kl.limit != *rl {
		// The group's limit was edited: start a fresh bucket.
		kl = newKeyLimiter(rl)
		ls.m.Store(keyID, kl)
	}
	d := decision{limit: rl.Burst, allowed: kl.lim.AllowN(now, 1)}
	tokens := kl.lim.TokensAt(now)
	d.remaining = max(0, int(math.Floor(tokens)))
	d.resetAfter = (float64(rl.Burst) - tokens) / rl.RequestsPerSecond
	if !d.allowed {
		d.retryAfter = (1 - tokens) / rl.RequestsPerSecond
	}
	return d
}

func newKeyLimiter(rl *store.RateLimit) *keyLimiter {
	return &keyLimiter{limit: *rl, lim: rate.NewLimiter(rate.Limit(rl.RequestsPerSecond), rl.Burst)}
}

// added counts a new bucket and, once the set has doubled since the last
// sweep, sweeps in the background: no request waits for a pass over every
// bucket, and the cost is O(1) per new bucket.
func (ls *limiterSet) added(now time.Time) {
	if ls.n.Add(1) < max(ls.sweepAt.Load(), minSweep) || !ls.sweeping.CompareAndSwap(false, true) {
		return
	}
	ls.sweeps.Add(1)
	go func() {
		defer ls.sweeps.Done()
		ls.sweep(now)
		ls.sweeping.Store(false)
	}()
}

// sweep drops the buckets that are full at now, then lets the set grow to
// twice what is left before the next sweep. One request racing the drop of
// its key's full bucket may take its token from the dropped bucket: at most
// one extra request, from a bucket that had its whole burst available
// anyway.
func (ls *limiterSet) sweep(now time.Time) {
	ls.m.Range(func(k, v any) bool {
		kl := v.(*keyLimiter)
		if kl.lim.TokensAt(now) >= float64(kl.limit.Burst) && ls.m.CompareAndDelete(k, kl) {
			ls.n.Add(-1)
		}
		return true
	})
	ls.sweepAt.Store(2 * ls.n.Load())
}
