package store

import (
	"net/netip"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)
	minute := clk.Now().Truncate(time.Minute)
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2")
	m0 := minute.Add(10 * time.Second)
	s.RecordUse(view, ip1, OutcomeOK, m0)
	s.RecordUse(view, ip1, OutcomeOK, m0.Add(time.Second))
	s.RecordUse(view, ip1, OutcomeIPNotAllowed, m0.Add(2*time.Second))
	m1 := m0.Add(time.Minute)
	s.RecordUse(view, ip2, OutcomeOK, m1)
	s.RecordUse(view, netip.MustParseAddr("198.51.100.9"), OutcomeIPNotAllowed, m1.Add(time.Second)) // denied: not the last use
	s.RecordUse(view, netip.Addr{}, OutcomeRateLimited, m1.Add(2*time.Second))

	check := func(stage string) {
		t.Helper()
		u, err := s.Usage(DefaultTenant, key.ID)
		mustNil(t, err)
		if u.KeyID != key.ID || u.Total != 6 || u.Outcomes["ok"] != 3 || u.Outcomes["ip_not_allowed"] != 2 ||
			u.Outcomes["rate_limited"] != 1 || len(u.Outcomes) != 3 {
			t.Fatalf("%s: totals %d %v", stage, u.Total, u.Outcomes)
		}
		if len(u.PerMinute) != 2 {
			t.Fatalf("%s: %d minutes", stage, len(u.PerMinute))
		}
		p0, p1 := u.PerMinute[0], u.PerMinute[1]
		if !p0.Time.Equal(minute) || p0.Total != 3 || p0.Outcomes["ok"] != 2 || p0.Outcomes["ip_not_allowed"] != 1 {
			t.Fatalf("%s: first minute %+v", stage, p0)
		}
		if !p1.Time.Equal(minute.Add(time.Minute)) || p1.Total != 3 || p1.Outcomes["ok"] != 1 || p1.Outcomes["rate_limited"] != 1 {
			t.Fatalf("%s: second minute %+v", stage, p1)
		}
		if u.LastUsedAt == nil || !u.LastUsedAt.Equal(m1) || u.LastUsedIP == nil || *u.LastUsedIP != ip2.String() {
			t.Fatalf("%s: last used %v %v", stage, u.LastUsedAt, u.LastUsedIP)
		}
		k, err := s.GetKey(DefaultTenant, key.ID)
		mustNil(t, err)
		if k.LastUsedAt == nil || !k.LastUsedAt.Equal(m1) || *k.LastUsedIP != ip2.String() {
			t.Fatalf("%s: key last used %v", stage, k.LastUsedAt)
		}
	}
	check("buffered") // before a flush, from memory
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"}); len(evs) != 0 {
		t.Fatal("denied event before a flush")
	}
	flushes := s.FlushStats().Flushes
	mustNil(t, s.Flush())
	if s.FlushStats().Flushes != flushes+1 {
		t.Fatal("flush not counted")
	}
	check("flushed")
	// Flushed data is in the store, not only in memory.
	rec, err := s.usageRecord(key.ID)
	mustNil(t, err)
	if rec == nil || rec.LastUsedAt == nil || !rec.LastUsedAt.Equal(m1) || rec.LastUsedIP != ip2.String() || rec.Totals[OutcomeOK] != 3 {
		t.Fatalf("stored usage %+v", rec)
	}
	page, err := s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	if lu := page.Keys[0].LastUsedAt; lu == nil || !lu.Equal(m1) {
		t.Fatalf("listed last use %v", lu)
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"})
	if len(evs) != 1 {
		t.Fatalf("%d denied events", len(evs))
	}
	e := evs[0]
	if e.KeyID == nil || *e.KeyID != key.ID || e.Actor != "gateway" || e.Detail["ip_not_allowed"] != float64(2) ||
		e.Detail["rate_limited"] != float64(1) || e.Detail["ok"] != nil {
		t.Fatalf("denied event %+v %v", e, e.Detail)
	}
	// A flush with nothing new writes nothing.
	mustNil(t, s.Flush())
	if s.FlushStats().Flushes != flushes+1 {
		t.Fatal("empty flush wrote")
	}
	// Only admitted requests: counts add up, no further denied event.
	s.RecordUse(view, ip1, OutcomeOK, m1.Add(3*time.Second))
	mustNil(t, s.Flush())
	u, err := s.Usage(DefaultTenant, key.ID)
	mustNil(t, err)
	if u.Total != 7 || u.PerMinute[1].Outcomes["ok"] != 2 || *u.LastUsedIP != ip1.String() {
		t.Fatalf("after second flush: %+v", u)
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"}); len(evs) != 1 {
		t.Fatalf("%d denied events after an all-ok flush", len(evs))
	}
	// Minutes older than 24 h fall out of the window.
	clk.Advance(25 * time.Hour)
	s.RecordUse(view, ip1, OutcomeOK, clk.Now())
	mustNil(t, s.Flush())
	u, err = s.Usage(DefaultTenant, key.ID)
	mustNil(t, err)
	if u.Total != 1 || len(u.PerMinute) != 1 || !u.From.Equal(clk.Now().Add(-24*time.Hour)) || !u.To.Equal(clk.Now()) {
		t.Fatalf("after a day: total %d, %d minutes, %v–%v", u.Total, len(u.PerMinute), u.From, u.To)
	}
	if _, err := s.Usage(DefaultTenant, "key_nope"); KindOf(err) != KindNotFound {
		t.Fatalf("usage of an unknown key: %v", err)
	}
}

func TestUsageOfDeletedKeyNotResurrected(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	other, otherSecret := mustKey(t, s, DefaultTenant, "bob", KeyInput{})
	view, _, _ := s.Verify(DefaultTenant, secret, clk.Now())
	otherView, _, _ := s.Verify(DefaultTenant, otherSecret, clk.Now())
	ip := netip.MustParseAddr("192.0.2.1")
	s.RecordUse(view, ip, OutcomeOK, clk.Now())
	mustNil(t, s.Flush())
	s.RecordUse(view, ip, OutcomeForbidden, clk.Now())
	mustNil(t, s.DeleteKey("op", DefaultTenant, key.ID))
	// A request holding the view from before the delete still records.
	s.RecordUse(view, ip, OutcomeOK, clk.Now())
	s.RecordUse(otherView, ip, OutcomeOK, clk.Now())
	mustNil(t, s.Flush())
	for _, p := range []string{pKeyUsage + key.ID, pKeyID + key.ID} {
		if _, err := s.kv.Get([]byte(p)); err != errKVNotFound {
			t.Fatalf("%s after delete and flush: %v", p, err)
		}
	}
	if _, err := s.GetKey(DefaultTenant, key.ID); KindOf(err) != KindNotFound {
		t.Fatalf("deleted key: %v", err)
	}
	page, err := s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	if page.Total != 1 || page.Keys[0].ID != other.ID {
		t.Fatalf("keys after flush %+v", page)
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{KeyID: key.ID, Type: "key.requests_denied"}); len(evs) != 0 {
		t.Fatal("denied event of a deleted key")
	}
	// The surviving key's usage was flushed normally.
	if u, err := s.Usage(DefaultTenant, other.ID); err != nil || u.Total != 1 {
		t.Fatalf("other key's usage: %+v %v", u, err)
	}
}

func TestBackgroundFlush(t *testing.T) {
	s := memStore(t, nil, func(o *Options) { o.FlushInterval = 5 * time.Millisecond })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, _ := s.Verify(DefaultTenant, secret, time.Now())
	s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, time.Now())
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, err := s.usageRecord(key.ID)
		mustNil(t, err)
		// The stats are counted just after the write lands.
		if rec != nil && rec.LastUsedAt != nil && s.FlushStats().Flushes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background flusher did not write usage")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if s.FlushStats().Flushes == 0 || s.FlushStats().TotalSeconds <= 0 {
		t.Fatalf("flush stats %+v", s.FlushStats())
	}
}

func TestOutcomeNames(t *testing.T) {
	want := []string{"ok", "key_revoked", "key_expired", "api_keys_disabled", "ip_not_allowed", "forbidden", "rate_limited"}
	for i, w := range want {
		if Outcome(i).String() != w {
			t.Errorf("outcome %d = %s, want %s", i, Outcome(i), w)
		}
	}
	if Outcome(200).String() != "unknown" {
		t.Error("unknown outcome")
	}
}
