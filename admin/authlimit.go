package admin

import (
	"crypto/sha256"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Defaults of the failed-authentication throttle (see Config).
const (
	DefaultAuthFailureBurst    = 10
	DefaultAuthFailureInterval = time.Second
	DefaultAuthFailureClients  = 16384
)

// authThrottle slows down client addresses that keep presenting bad admin
// tokens. Each address has a bucket of burst failures that refills by one
// every interval; an address whose bucket is empty is answered 429 with
// Retry-After, without its token being looked at (otherwise the answer
// would still tell a guesser when it is right), until a failure has been
// forgiven. Successes cost nothing and change nothing, so the callers of
// other addresses are never affected.
//
// IPv6 addresses are counted per /64 (one host usually owns a whole /64).
// At most maxClients addresses are remembered: when the table is full,
// addresses whose bucket has refilled are dropped, and failing that an
// arbitrary one, so memory stays bounded whatever the number of addresses.
type authThrottle struct {
	burst      float64
	interval   time.Duration
	maxClients int

	mu        sync.Mutex
	clients   map[string]*failBucket
	lastSweep time.Time
}

// failBucket is what is left of an address's failure allowance at a time.
type failBucket struct {
	left float64
	at   time.Time
}

func newAuthThrottle(burst int, interval time.Duration, maxClients int) *authThrottle {
	if burst <= 0 {
		burst = DefaultAuthFailureBurst
	}
	if interval <= 0 {
		interval = DefaultAuthFailureInterval
	}
	if maxClients <= 0 {
		maxClients = DefaultAuthFailureClients
	}
	return &authThrottle{burst: float64(burst), interval: interval, maxClients: maxClients, clients: map[string]*failBucket{}}
}

// level is b's allowance at now.
func (t *authThrottle) level(b *failBucket, now time.Time) float64 {
	elapsed := now.Sub(b.at)
	if elapsed <= 0 {
		return b.left
	}
	return math.Min(t.burst, b.left+float64(elapsed)/float64(t.interval))
}

// wait is how long the client must wait before its token is looked at
// again; 0 when it may go ahead.
func (t *authThrottle) wait(client string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.clients[client]
	if !ok {
		return 0
	}
	left := t.level(b, now)
	if left >= 1 {
		return 0
	}
	return time.Duration((1 - left) * float64(t.interval))
}

// fail records a failed authentication of client and reports whether the
// client is now throttled.
func (t *authThrottle) fail(client string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.clients[client]
	if !ok {
		if len(t.clients) >= t.maxClients {
			t.evict(now)
		}
		b = &failBucket{left: t.burst, at: now}
		t.clients[client] = b
	}
	b.left = math.Max(0, t.level(b, now)-1)
	b.at = now
	return b.left < 1
}

// evict makes room for one address: at most once a second it drops every
// address whose allowance has refilled (they carry no information); if
// that frees nothing, it drops an arbitrary address.
func (t *authThrottle) evict(now time.Time) {
	if now.Sub(t.lastSweep) >= time.Second {
		t.lastSweep = now
		for c, b := range t.clients {
			if t.level(b, now) >= t.burst {
				delete(t.clients, c)
			}
		}
	}
	for c := range t.clients {
		if len(t.clients) < t.maxClients {
			break
		}
		delete(t.clients, c)
	}
}

// size is the number of addresses remembered.
func (t *authThrottle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}

// throttleKey is the bucket an address counts in: the address itself for
// IPv4, its /64 for IPv6, the (bounded) text when it is not an address.
func throttleKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		if len(ip) > 64 {
			ip = ip[:64]
		}
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// remoteIP is the default Config.ClientIP: the host of r.RemoteAddr.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tokenHint describes a refused token for a log line without revealing any
// of its characters: keygate's public prefix when it has one (kga_, kg_),
// a short SHA-256 fingerprint (so repeated tries of one token can be told
// apart from many different ones) and its length. A mistyped operator token
// therefore puts nothing of the real token in the log.
func tokenHint(token string) string {
	prefix := ""
	for _, p := range []string{"kga_", "kg_"} {
		if strings.HasPrefix(token, p) {
			prefix = p + "… "
			break
		}
	}
	sum := sha256.Sum256([]byte(token))
	return fmt.Sprintf("%ssha256:%x (%d chars)", prefix, sum[:4], len(token))
}

// retryAfter is the Retry-After value for a wait: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return fmt.Sprint(max(1, int64(math.Ceil(d.Seconds()))))
}
