package caddymodule

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keygate/keygate/store"
)

// limiterSet holds one token bucket per key (a group's rate_limit applies to
// each of its keys). It lives in the shared state so buckets survive reloads.
type limiterSet struct {
	m sync.Map // key id → *keyLimiter
}

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
	kl, _ := v.(*keyLimiter)
	if !ok || kl.limit != *rl {
		// New key, or the group's limit was edited: start a fresh bucket.
		kl = &keyLimiter{limit: *rl, lim: rate.NewLimiter(rate.Limit(rl.RequestsPerSecond), rl.Burst)}
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
