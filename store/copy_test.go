package store

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestCopyPebbleToEtcd: a Pebble store with keys, a grace secret, a user's
// token, a group, events and usage is copied to etcd; a store opened on
// etcd verifies the same secrets and reads the same records; a second copy
// into the same prefix is refused, and so is a copy from a store that is
// open.
func TestCopyPebbleToEtcd(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	pepper := []byte("the same pepper on both sides")
	src := diskStore(t, dir, clk, func(o *Options) { o.Pepper = pepper })
	enable(t, src, "acme")
	_, err := src.PutGroup("op", "acme", "readers", GroupInput{Description: "read only"})
	mustNil(t, err)
	active, activeSecret := mustKey(t, src, "acme", "alice", KeyInput{Group: "readers"})
	revoked, revokedSecret := mustKey(t, src, "acme", "bob", KeyInput{})
	_, err = src.RevokeKey("op", "acme", revoked.ID)
	mustNil(t, err)
	rotated, oldSecret := mustKey(t, src, "acme", "carol", KeyInput{})
	_, newSecret, err := src.RotateKey("op", "acme", rotated.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	_, err = src.PutUser("op", "acme", "dora", []Role{RoleDeveloper})
	mustNil(t, err)
	_, token, err := src.CreateToken("op", "acme", "dora", TokenInput{Name: "laptop"})
	mustNil(t, err)
	view, _, err := src.Verify("acme", activeSecret, clk.Now())
	mustNil(t, err)
	for range 7 {
		src.RecordUse(view, netip.MustParseAddr("192.0.2.7"), OutcomeOK, clk.Now())
	}
	mustNil(t, src.Flush())
	wantEvents := len(allEvents(t, src, "acme", EventQuery{}))

	// The copy is offline: Pebble's lock refuses it while the store is open.
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	if _, err := OpenPebbleReadOnly(dir, nil); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("copy from an open store: %v", err)
	}
	mustNil(t, src.Close())

	from, err := OpenPebbleReadOnly(dir, nil)
	mustNil(t, err)
	defer from.Close()
	to := etcdKVAt(t, srv, prefix, 0)
	st, err := CopyKV(to, from)
	mustNil(t, err)
	if st.Records < 10 {
		t.Fatalf("copied %d records", st.Records)
	}
	n := 0
	mustNil(t, from.Scan(nil, nil, func(_, _ []byte) bool { n++; return true }))
	if n != st.Records {
		t.Fatalf("source has %d records, %d copied", n, st.Records)
	}

	dst := memStore(t, clk, func(o *Options) { o.KV, o.NodeID, o.Pepper = etcdKVAt(t, srv, prefix, 0), "node-1", pepper })
	now := clk.Now()
	for _, c := range []struct {
		secret string
		want   Verdict
	}{{activeSecret, VerdictValid}, {revokedSecret, VerdictRevoked}, {oldSecret, VerdictValid}, {newSecret, VerdictValid}} {
		if v := verdict(t, dst, "acme", c.secret, now); v != c.want {
			t.Errorf("after the copy: %s, want %s", vname(v), vname(c.want))
		}
	}
	if v := verdict(t, dst, "acme", oldSecret, now.Add(2*time.Hour)); v == VerdictValid {
		t.Error("the grace secret outlives its grace period after the copy")
	}
	if _, u, err := dst.AuthenticateToken(token); err != nil || u.ID != "dora" {
		t.Errorf("token after the copy: %v %v", u, err)
	}
	if _, err := dst.GetGroup("acme", "readers"); err != nil {
		t.Error(err)
	}
	u, err := dst.Usage("acme", active.ID)
	mustNil(t, err)
	if u.Total != 7 || u.LastUsedIP == nil || *u.LastUsedIP != "192.0.2.7" {
		t.Errorf("usage after the copy: total %d, last ip %v", u.Total, u.LastUsedIP)
	}
	if got := len(allEvents(t, dst, "acme", EventQuery{})); got != wantEvents {
		t.Errorf("events after the copy: %d, want %d", got, wantEvents)
	}
	// The new node adds its own usage to the copied record.
	view, _, err = dst.Verify("acme", activeSecret, now)
	mustNil(t, err)
	dst.RecordUse(view, netip.MustParseAddr("192.0.2.8"), OutcomeOK, now.Add(time.Minute))
	mustNil(t, dst.Flush())
	u, err = dst.Usage("acme", active.ID)
	mustNil(t, err)
	if u.Total != 8 || *u.LastUsedIP != "192.0.2.8" {
		t.Errorf("usage summed over the copy and node-1: total %d, last ip %s", u.Total, *u.LastUsedIP)
	}

	// A second copy into the same prefix is refused, and writes nothing.
	if _, err := CopyKV(to, from); err == nil || !strings.Contains(err.Error(), "already holds data") {
		t.Fatalf("second copy: %v", err)
	}
}

// TestInterruptedCopyRefused: a target a copy did not finish is not opened.
func TestInterruptedCopyRefused(t *testing.T) {
	kv := newEtcdKV(t)
	var b Batch
	b.Set([]byte(metaCopying), []byte("1"))
	b.Set([]byte(pMeta+"schema"), []byte("2"))
	mustNil(t, kv.Apply(&b, true))
	if _, err := Open(Options{KV: kv, FlushInterval: -1}); err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Fatalf("open of a half-copied store: %v", err)
	}
}
