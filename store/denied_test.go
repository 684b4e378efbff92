package store

import (
	"net/netip"
	"testing"
	"time"
)

// TestDeniedSummaries: a key that keeps being denied gets one
// "key.requests_denied" event per interval, not one per flush, and no denial
// is lost or reported twice — across a failed flush and a graceful stop.
func TestDeniedSummaries(t *testing.T) {
	kv := memPebble(t)
	fkv := &failingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = fkv })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)
	ip := netip.MustParseAddr("192.0.2.1")
	deny := func(n int) {
		for range n {
			s.RecordUse(view, ip, OutcomeForbidden, clk.Now())
		}
	}
	events := func() []*Event {
		return allEvents(t, s, DefaultTenant, EventQuery{KeyID: key.ID, Type: "key.requests_denied"})
	}
	reported := func() (sum float64) {
		for _, e := range events() {
			sum += e.Detail["forbidden"].(float64)
		}
		return sum
	}

	deny(3)
	mustNil(t, s.Flush()) // the first denials are reported at once
	if evs := events(); len(evs) != 1 || reported() != 3 {
		t.Fatalf("after the first flush: %d events, %v denials reported", len(evs), reported())
	}
	// Twelve flushes 5 s apart, denied all the time: still one event.
	for range 11 {
		clk.Advance(5 * time.Second)
		deny(2)
		mustNil(t, s.Flush())
	}
	if evs := events(); len(evs) != 1 {
		t.Fatalf("%d events within one interval, want 1", len(evs))
	}
	// A failed flush reports nothing and loses nothing.
	clk.Advance(5 * time.Second)
	deny(1)
	fkv.fail.Store(true)
	if s.Flush() == nil {
		t.Fatal("flush on a failing store succeeded")
	}
	fkv.fail.Store(false)
	mustNil(t, s.Flush()) // the interval has passed: 22 carried + 1
	if evs := events(); len(evs) != 2 || reported() != 3+22+1 {
		t.Fatalf("after the interval: %d events, %v denials reported, want 2 and 26", len(evs), reported())
	}
	// Pending denials are reported by a graceful stop.
	clk.Advance(5 * time.Second)
	deny(4)
	mustNil(t, s.Flush())
	if len(events()) != 2 {
		t.Fatal("an event before the interval passed")
	}
	mustNil(t, s.flush(true))
	if evs := events(); len(evs) != 3 || reported() != 30 {
		t.Fatalf("after the final flush: %d events, %v denials reported, want 3 and 30", len(evs), reported())
	}
	// A key quiet for an interval is forgotten.
	clk.Advance(2 * deniedSummaryInterval)
	mustNil(t, s.Flush())
	s.wmu.Lock()
	n := len(s.denied)
	s.wmu.Unlock()
	if n != 0 {
		t.Fatalf("%d quiet keys still remembered", n)
	}
}
