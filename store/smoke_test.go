package store

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func openMem(t testing.TB) *Store {
	t.Helper()
	s, err := Open(Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSmokeLifecycle(t *testing.T) {
	s := openMem(t)
	if _, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "k1"}); KindOf(err) != KindDisabled {
		t.Fatalf("want disabled, got %v", err)
	}
	if _, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{APIKeysEnabled: Some(true)}); err != nil {
		t.Fatal(err)
	}
	key, secret, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "k1", IPAllowlist: []string{"10.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	v, verdict, err := s.Verify(DefaultTenant, secret, now)
	if err != nil || verdict != VerdictValid || v.ID != key.ID {
		t.Fatalf("verify: %v %v %v", v, verdict, err)
	}
	if !v.Allow.Contains(netip.MustParseAddr("::ffff:10.1.2.3")) || v.Allow.Contains(netip.MustParseAddr("11.0.0.1")) {
		t.Fatal("allowlist")
	}
	s.RecordUse(v, netip.MustParseAddr("10.1.2.3"), OutcomeOK, now)
	if _, err := s.RevokeKey("op", DefaultTenant, key.ID); err != nil {
		t.Fatal(err)
	}
	if _, verdict, _ := s.Verify(DefaultTenant, secret, now); verdict != VerdictRevoked {
		t.Fatalf("after revoke: %v", verdict)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKey(DefaultTenant, key.ID)
	if err != nil || got.LastUsedAt == nil || got.Status != StatusRevoked {
		t.Fatalf("get: %+v %v", got, err)
	}
	evs, _, err := s.ListEvents(DefaultTenant, EventQuery{})
	if err != nil || len(evs) < 3 {
		t.Fatalf("events: %d %v", len(evs), err)
	}
}
