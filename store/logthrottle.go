package store

import (
	"sync"
	"time"
)

// logThrottle rate-limits repeated log lines: the first line of a kind is
// logged, then at most one a period, carrying the number suppressed since.
// A disk that stays full makes Pebble and the flusher report the same error
// over and over (Pebble retries a failed flush at once: thousands of lines a
// second); the log keeps the first and a count.
type logThrottle struct {
	now    func() time.Time
	period time.Duration

	mu    sync.Mutex
	kinds map[string]*throttled
}

type throttled struct {
	last       time.Time
	suppressed int
}

// maxThrottleKinds bounds the map; kinds are format strings, a small fixed
// set, so this is only a guard. Beyond it every new kind shares one slot.
const maxThrottleKinds = 256

func newLogThrottle(now func() time.Time, period time.Duration) *logThrottle {
	return &logThrottle{now: now, period: period, kinds: map[string]*throttled{}}
}

// allow reports whether a line of kind may be logged now and, if so, how
// many were suppressed since the last one logged.
func (t *logThrottle) allow(kind string) (ok bool, suppressed int) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.kinds[kind]
	if st == nil {
		if len(t.kinds) >= maxThrottleKinds {
			kind = "\x00other"
			st = t.kinds[kind]
		}
		if st == nil {
			t.kinds[kind] = &throttled{last: now}
			return true, 0
		}
	}
	if now.Sub(st.last) < t.period {
		st.suppressed++
		return false, 0
	}
	suppressed, st.suppressed, st.last = st.suppressed, 0, now
	return true, suppressed
}

// reset forgets kind, so its next line is logged at once (after a recovery).
func (t *logThrottle) reset(kind string) (suppressed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.kinds[kind]; st != nil {
		suppressed = st.suppressed
		delete(t.kinds, kind)
	}
	return suppressed
}
