package store

import (
	"bytes"
	"testing"
	"time"
)

// countBlockingKV holds scans of the tenant key index (a key count) until
// release is closed, telling held when one starts.
type countBlockingKV struct {
	KV
	held    chan struct{}
	release chan struct{}
}

func (k *countBlockingKV) Scan(prefix, start []byte, fn func(key, value []byte) bool) error {
	if bytes.HasPrefix(prefix, []byte(pKeyTenant)) && k.held != nil {
		k.held <- struct{}{}
		<-k.release
	}
	return k.KV.Scan(prefix, start, fn)
}

// TestKeyCountReadOutsideLock: counting a tenant's keys reads the KV (on
// etcd, a network call) without holding the lock that applying other
// nodes' commits takes (forgetKeyCount, from the watch); and a count that
// such a change overtook is not remembered.
func TestKeyCountReadOutsideLock(t *testing.T) {
	kv := memPebble(t)
	bkv := &countBlockingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = bkv })
	enable(t, s, DefaultTenant)
	mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	s.forgetKeyCount(DefaultTenant)

	bkv.held, bkv.release = make(chan struct{}), make(chan struct{})
	counted := make(chan error, 1)
	go func() { _, err := s.countTenantKeys(DefaultTenant); counted <- err }()
	<-bkv.held
	forgot := make(chan struct{})
	go func() { s.forgetKeyCount(DefaultTenant); close(forgot) }()
	select {
	case <-forgot:
	case <-time.After(stuck):
		close(bkv.release)
		t.Fatal("applying another node's key change waited for a key count in progress")
	}
	close(bkv.release)
	bkv.held = nil
	mustNil(t, <-counted)
	s.cmu.Lock()
	_, kept := s.keyCounts[DefaultTenant]
	s.cmu.Unlock()
	if kept {
		t.Fatal("a count overtaken by a change was remembered")
	}
}
