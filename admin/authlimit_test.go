package admin

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

// fakeClock is an adjustable Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// TestAuthFailuresThrottled: every refused token is logged with the client
// address and a hint, never the token; after AuthFailureBurst failures the
// address gets 429 + Retry-After without its token being checked (the
// right token included), until the allowance refills; other addresses are
// unaffected; the hook counts both (issue #9 item 6).
func TestAuthFailuresThrottled(t *testing.T) {
	st := openStore(t)
	must[*store.User](t)(st.PutUser("test", "default", "carol", []store.Role{store.RoleDeveloper}))
	_, userToken, err := st.CreateToken("test", "default", "carol", store.TokenInput{})
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	logs := &recordingLogger{}
	var failures, throttled atomic.Int64
	h := New(st, Config{
		OperatorTokens: []string{testOperatorToken}, Now: clk.Now, Logger: logs,
		ClientIP:         func(r *http.Request) string { return r.Header.Get("Test-Client-IP") },
		AuthFailureBurst: 5, AuthFailureInterval: 2 * time.Second,
		OnAuthFailure: func(th bool) {
			if th {
				throttled.Add(1)
			} else {
				failures.Add(1)
			}
		},
	})
	send := func(ip, token string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest("GET", "/v1/me", nil)
		req.Header.Set("Test-Client-IP", ip)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	const attacker, other = "198.51.100.7", "203.0.113.9"
	var wrong []string
	for i := range 5 {
		bad := store.NewSecret(store.TokenPrefix)
		if i == 4 {
			bad = testOperatorToken + "-wrong"
		}
		wrong = append(wrong, bad)
		if rec := send(attacker, bad); rec.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, rec.Code)
		}
	}
	// The burst is spent: 429 with Retry-After, even for the right token.
	for _, tok := range []string{store.NewSecret(store.TokenPrefix), testOperatorToken, userToken} {
		rec := send(attacker, tok)
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "2" {
			t.Fatalf("throttled address: %d Retry-After %q %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
		}
		if !strings.Contains(rec.Body.String(), `"rate_limited"`) {
			t.Fatalf("429 body %s", rec.Body)
		}
	}
	// Another address is not affected, neither for successes nor failures.
	if rec := send(other, testOperatorToken); rec.Code != http.StatusOK {
		t.Fatalf("other address, operator: %d", rec.Code)
	}
	if rec := send(other, userToken); rec.Code != http.StatusOK {
		t.Fatalf("other address, user token: %d", rec.Code)
	}
	if rec := send(other, "nope-nope-nope-nope"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("other address, bad token: %d", rec.Code)
	}
	// Requests without a token are plain 401s: not counted, not logged.
	for range 20 {
		if rec := send(attacker+"1", ""); rec.Code != http.StatusUnauthorized {
			t.Fatalf("no token: %d", rec.Code)
		}
	}
	// One failure is forgiven per interval.
	clk.Advance(time.Second)
	if rec := send(attacker, testOperatorToken); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("half an interval later: %d %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	clk.Advance(time.Second)
	if rec := send(attacker, "still-wrong-token-000"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("after an interval: %d", rec.Code)
	}
	if rec := send(attacker, testOperatorToken); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("right after the forgiven failure: %d", rec.Code)
	}
	clk.Advance(2 * time.Second)
	if rec := send(attacker, testOperatorToken); rec.Code != http.StatusOK {
		t.Fatalf("the right token once the address may try again: %d", rec.Code)
	}

	if f, th := failures.Load(), throttled.Load(); f != 7 || th != 5 {
		t.Fatalf("hook counted %d failures and %d throttled, want 7 and 5", f, th)
	}
	logs.mu.Lock()
	lines := append([]string(nil), logs.lines...)
	logs.mu.Unlock()
	if len(lines) != 7 {
		t.Fatalf("%d log lines, want one per failure (7):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, line := range lines[:5] {
		if !strings.Contains(line, attacker) {
			t.Errorf("line %d does not name the client address: %s", i, line)
		}
		if hint := tokenHint(wrong[i]); !strings.Contains(line, hint) {
			t.Errorf("line %d lacks the hint %q: %s", i, hint, line)
		}
	}
	if !strings.Contains(lines[4], "slowed down") {
		t.Errorf("the failure that spends the burst does not say so: %s", lines[4])
	}
	all := strings.Join(lines, "\n")
	for _, secret := range append(wrong, testOperatorToken, userToken, "still-wrong-token-000", "nope-nope-nope-nope") {
		for i := 0; i+8 <= len(secret); i++ { // no 8 consecutive characters of any token
			if strings.Contains(all, secret[i:i+8]) && !strings.HasPrefix(secret[i:], "kga_") {
				t.Fatalf("the log holds part of a token (%q):\n%s", secret[i:i+8], all)
			}
		}
	}
}

// TestAuthThrottleBounded: the throttle remembers at most maxClients
// addresses whatever the number of addresses failing, counts an IPv6 /64
// as one client, and when full it first forgets addresses whose allowance
// has refilled (only a table full of throttled addresses makes it forget
// arbitrary ones, rather than grow).
func TestAuthThrottleBounded(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	th := newAuthThrottle(3, time.Second, 100)
	for i := range 10_000 {
		th.fail(throttleKey(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)), now)
		now = now.Add(time.Millisecond)
	}
	if n := th.size(); n > 100 || n == 0 {
		t.Fatalf("throttle remembers %d addresses, bound 100", n)
	}
	// Addresses in one /64 share a bucket; IPv4-mapped IPv6 is IPv4.
	th = newAuthThrottle(3, time.Second, 100)
	for i := range 3 {
		th.fail(throttleKey(fmt.Sprintf("2001:db8:1:2::%x", i+1)), now)
	}
	if th.wait(throttleKey("2001:db8:1:2:ffff::9"), now) == 0 {
		t.Fatal("another address of the same /64 is not throttled")
	}
	if th.wait(throttleKey("2001:db8:1:3::1"), now) != 0 {
		t.Fatal("another /64 is throttled")
	}
	for range 3 {
		th.fail(throttleKey("::ffff:192.0.2.1"), now)
	}
	if th.wait(throttleKey("192.0.2.1"), now) == 0 {
		t.Fatal("IPv4-mapped address counted apart from its IPv4 form")
	}
	// Refilled addresses are what a full table drops first.
	th = newAuthThrottle(3, time.Second, 10)
	for range 3 {
		th.fail("victim-of-own-typos", now)
	}
	for i := range 9 {
		th.fail(fmt.Sprintf("once-%d", i), now)
	}
	now = now.Add(2 * time.Second) // the nine have refilled; the first has not
	th.fail("newcomer", now)
	if th.size() != 2 {
		t.Fatalf("after the sweep: %d addresses, want 2", th.size())
	}
}

// TestTokenHint: the hint shows no character of a token beyond keygate's
// public prefix; the same token always gets the same fingerprint.
func TestTokenHint(t *testing.T) {
	for _, token := range []string{"kga_0123456789abcdefghijklmnop", "short", "\x00\nab-long-enough-token", "operator-token-123456"} {
		hint := tokenHint(token)
		if hint != tokenHint(token) {
			t.Fatalf("tokenHint(%q) is not stable", token)
		}
		rest := strings.TrimPrefix(strings.TrimPrefix(token, "kga_"), "kg_")
		for i := 0; i+3 <= len(rest); i++ {
			if strings.Contains(hint, rest[i:i+3]) && !strings.Contains(fmt.Sprintf("%x", sha256.Sum256([]byte(token))), rest[i:i+3]) {
				t.Errorf("tokenHint(%q) = %q shows %q", token, hint, rest[i:i+3])
			}
		}
		if !strings.Contains(hint, fmt.Sprintf("(%d chars)", len(token))) {
			t.Errorf("tokenHint(%q) = %q: no length", token, hint)
		}
	}
	if got := tokenHint("kga_0123456789abcdefghijklmnop"); !strings.HasPrefix(got, "kga_… sha256:") {
		t.Errorf("kga_ token hint = %q, want the public prefix first", got)
	}
	if tokenHint("operator-token-123456") == tokenHint("operator-token-123457") {
		t.Error("two tokens share a fingerprint")
	}
}

// BenchmarkThrottleWait is what every authenticated request pays for the
// throttle: one lookup of its address.
func BenchmarkThrottleWait(b *testing.B) {
	th := newAuthThrottle(0, 0, 0)
	now := time.Now()
	for i := range 10_000 {
		th.fail(fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255), now)
	}
	b.ResetTimer()
	for range b.N {
		if th.wait(throttleKey("192.0.2.1"), now) != 0 {
			b.Fatal("throttled")
		}
	}
}

// BenchmarkThrottleFailManyClients: failures from ever new addresses with
// the table full (the eviction path).
func BenchmarkThrottleFailManyClients(b *testing.B) {
	th := newAuthThrottle(0, 0, 0)
	now := time.Now()
	b.ResetTimer()
	for i := range b.N {
		th.fail(fmt.Sprintf("2001:db8:%x:%x::1", i>>16&0xffff, i&0xffff), now)
		now = now.Add(time.Microsecond)
	}
	if th.size() > DefaultAuthFailureClients {
		b.Fatalf("%d addresses", th.size())
	}
}
