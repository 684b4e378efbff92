package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestMain stops the etcd server that the etcd tests share (started on
// first use, store/etcdtest).
func TestMain(m *testing.M) {
	code := m.Run()
	etcdtest.StopShared()
	os.Exit(code)
}

// etcdKVAt opens a KV on the server under prefix, closed when the test ends.
func etcdKVAt(t testing.TB, srv *etcdtest.Server, prefix string, timeout time.Duration) *etcdKV {
	t.Helper()
	kv, err := openEtcd(EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: prefix, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kv.Close() })
	return kv
}

// newEtcdKV opens a KV on the shared server under a fresh prefix.
func newEtcdKV(t testing.TB) *etcdKV {
	return etcdKVAt(t, etcdtest.Shared(t), etcdtest.Prefix(t), 0)
}

// keyRecorder collects watch notifications.
type keyRecorder struct {
	mu    sync.Mutex
	calls [][]string
	added chan struct{}
}

func newRecorder() *keyRecorder { return &keyRecorder{added: make(chan struct{}, 1000)} }

func (r *keyRecorder) fn(keys [][]byte) {
	var ks []string
	for _, k := range keys {
		ks = append(ks, string(k))
	}
	r.mu.Lock()
	r.calls = append(r.calls, ks)
	r.mu.Unlock()
	r.added <- struct{}{}
}

// waitFor waits (at most 10 s) until a call delivered key.
func (r *keyRecorder) waitFor(t testing.TB, key string) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, c := range r.calls {
			for _, k := range c {
				if k == key {
					r.mu.Unlock()
					return c
				}
			}
		}
		r.mu.Unlock()
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("watch never delivered %q", key)
		}
	}
}

func (r *keyRecorder) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		for _, k := range c {
			if k == key {
				n++
			}
		}
	}
	return n
}

func TestEtcdKVBatchIsOneAtomicTxn(t *testing.T) {
	kv := newEtcdKV(t)
	var b Batch
	b.Set([]byte("a"), []byte("1"))
	b.Set([]byte("b"), []byte("x"))
	b.Delete([]byte("b")) // a key twice in a batch: the last operation wins
	b.Set([]byte("c"), []byte(""))
	b.Set([]byte("m"), []byte("base"))
	b.Merge([]byte("m"), []byte("+1"))
	mustNil(t, kv.Apply(&b, true))
	got := func(key string) string {
		v, err := kv.Get([]byte(key))
		if errors.Is(err, errKVNotFound) {
			return "<none>"
		}
		mustNil(t, err)
		return string(v)
	}
	// mergeValues: a non-usage key's newer value wins.
	for key, want := range map[string]string{"a": "1", "b": "<none>", "c": "", "m": "+1"} {
		if g := got(key); g != want {
			t.Errorf("%s = %q, want %q", key, g, want)
		}
	}
	// A batch larger than the server's --max-txn-ops is refused whole,
	// with an error that says what to raise, and writes nothing.
	var big Batch
	for i := range etcdtest.MaxTxnOps + 1 {
		big.Set(fmt.Appendf(nil, "big/%06d", i), []byte("v"))
	}
	err := kv.Apply(&big, true)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "--max-txn-ops") {
		t.Fatalf("over-large batch: %v", err)
	}
	if g := got("big/000000"); g != "<none>" {
		t.Fatalf("a refused batch wrote part of itself: big/000000 = %q", g)
	}
}

func TestEtcdKVMergeReadModifyWrite(t *testing.T) {
	kv := newEtcdKV(t)
	u := func(n uint64) []byte {
		var r usageRecord
		r.Totals[OutcomeOK] = n
		return encodeUsage(&r)
	}
	key := []byte(pKeyUsage + "key_1/node-a")
	// Two KVs (two nodes) merging into one record concurrently: the
	// compare on the mod revision makes every operand count once.
	other := etcdKVAt(t, etcdtest.Shared(t), kv.prefix, 0)
	var wg sync.WaitGroup
	for _, w := range []*etcdKV{kv, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				var b Batch
				b.Merge(key, u(1))
				if err := w.Apply(&b, true); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	raw, err := kv.Get(key)
	mustNil(t, err)
	var r usageRecord
	mustNil(t, decodeUsage(raw, &r))
	if r.Totals[OutcomeOK] != 40 {
		t.Fatalf("total after 40 concurrent merges = %d", r.Totals[OutcomeOK])
	}
}

func TestEtcdKVScanPages(t *testing.T) {
	kv := newEtcdKV(t)
	const n = etcdScanPage*2 + 37 // three pages
	for i := 0; i < n; i += 1000 {
		var b Batch
		for j := i; j < min(n, i+1000); j++ {
			b.Set(fmt.Appendf(nil, "s/%05d", j), fmt.Appendf(nil, "v%d", j))
		}
		mustNil(t, kv.Apply(&b, true))
	}
	var b Batch
	b.Set([]byte("r"), []byte("before"))
	b.Set([]byte("t"), []byte("after"))
	mustNil(t, kv.Apply(&b, true))
	// Another prefix on the same server sees none of it.
	empty := etcdKVAt(t, etcdtest.Shared(t), kv.prefix+"other/", 0)
	mustNil(t, empty.Scan(nil, nil, func(k, _ []byte) bool { t.Errorf("other prefix sees %q", k); return true }))

	var keys []string
	mustNil(t, kv.Scan([]byte("s/"), nil, func(k, v []byte) bool {
		if want := "v" + strings.TrimLeft(string(k[2:]), "0"); string(v) != want && !(string(v) == "v0" && string(k) == "s/00000") {
			t.Fatalf("%s = %s", k, v)
		}
		keys = append(keys, string(k))
		return true
	}))
	if len(keys) != n || keys[0] != "s/00000" || keys[n-1] != fmt.Sprintf("s/%05d", n-1) {
		t.Fatalf("scan: %d keys, %q … %q", len(keys), keys[0], keys[len(keys)-1])
	}
	for i := 1; i < len(keys); i++ {
		if keys[i] <= keys[i-1] {
			t.Fatalf("out of order: %q after %q", keys[i], keys[i-1])
		}
	}
	// From start, and stopping early.
	keys = nil
	mustNil(t, kv.Scan([]byte("s/"), []byte("s/00990"), func(k, _ []byte) bool {
		keys = append(keys, string(k))
		return len(keys) < 20
	}))
	if len(keys) != 20 || keys[0] != "s/00990" || keys[19] != "s/01009" {
		t.Fatalf("scan from s/00990: %v", keys)
	}
	// The empty prefix: everything under the KV's prefix.
	total := 0
	mustNil(t, kv.Scan(nil, nil, func(_, _ []byte) bool { total++; return true }))
	if total != n+2 {
		t.Fatalf("full scan: %d keys, want %d", total, n+2)
	}
}

func TestEtcdKVWatchDeliversOtherNodesCommits(t *testing.T) {
	a := newEtcdKV(t)
	b := etcdKVAt(t, etcdtest.Shared(t), a.prefix, 0)
	var pre Batch
	pre.Set([]byte("t/gone"), []byte("1"))
	mustNil(t, b.Apply(&pre, true))
	rec := newRecorder()
	a.Watch(rec.fn)

	var w Batch
	w.Set([]byte("kh/from-b"), []byte("1"))
	w.Delete([]byte("t/gone"))
	mustNil(t, b.Apply(&w, true))
	got := rec.waitFor(t, "kh/from-b")
	if strings.Join(got, ",") != "kh/from-b,t/gone" {
		t.Fatalf("one commit, one call with its keys: got %v", got)
	}

	// This node's own commit is delivered by Apply, before it returns,
	// and not a second time by the watch.
	var own Batch
	own.Set([]byte("kh/own"), []byte("1"))
	mustNil(t, a.Apply(&own, true))
	if rec.count("kh/own") == 0 {
		t.Fatal("own commit not delivered before Apply returned")
	}
	var marker Batch
	marker.Set([]byte("marker"), []byte("1"))
	mustNil(t, b.Apply(&marker, true))
	rec.waitFor(t, "marker") // the watch has passed the own commit
	// The watch usually skips it; it may deliver it again when it saw
	// the commit before Apply did (harmless: invalidation is idempotent).
	if n := rec.count("kh/own"); n > 2 {
		t.Fatalf("own commit delivered %d times", n)
	}
}

// TestEtcdKVOwnCommitsBeforeWatchAreOwn: the watch starts at the revision
// the KV was opened at, so it passes the commits this node made before
// Watch (Store.init's); Apply delivered those, and so they are not
// delivered again as if another node had made them.
func TestEtcdKVOwnCommitsBeforeWatchAreOwn(t *testing.T) {
	a := newEtcdKV(t)
	b := etcdKVAt(t, etcdtest.Shared(t), a.prefix, 0)
	var early Batch
	early.Set([]byte("t/early"), []byte("1"))
	mustNil(t, a.Apply(&early, true))
	rec := newRecorder()
	a.Watch(rec.fn)
	var marker Batch
	marker.Set([]byte("marker"), []byte("1"))
	mustNil(t, b.Apply(&marker, true))
	rec.waitFor(t, "marker") // the watch has passed the early commit
	if n := rec.count("t/early"); n != 0 {
		t.Fatalf("a commit of this node made before Watch was delivered %d times by the watch", n)
	}
}

func TestEtcdKVCompactedWatchResets(t *testing.T) {
	srv := etcdtest.Shared(t)
	a := newEtcdKV(t)
	b := etcdKVAt(t, srv, a.prefix, 0)
	rec := newRecorder()
	a.Watch(rec.fn)
	resets := make(chan struct{}, 10)
	a.WatchReset(func() { resets <- struct{}{} })

	var w Batch
	w.Set([]byte("first"), []byte("1"))
	mustNil(t, b.Apply(&w, true))
	rec.waitFor(t, "first")

	// The watch misses commits that are then compacted away.
	a.stopWatch()
	from, err := a.currentRevision()
	mustNil(t, err)
	for i := range 3 {
		var m Batch
		m.Set(fmt.Appendf(nil, "missed/%d", i), []byte("1"))
		mustNil(t, b.Apply(&m, true))
	}
	cur, err := a.currentRevision()
	mustNil(t, err)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Compact(ctx, cur); err != nil {
		t.Fatal(err)
	}
	a.wmu.Lock()
	a.startWatch(from + 1)
	a.wmu.Unlock()
	for i := range 2 { // when the gap is found, and once resumed
		select {
		case <-resets:
		case <-time.After(10 * time.Second):
			t.Fatalf("reset %d not called after compaction", i+1)
		}
	}
	// It goes on delivering after the reset.
	var after Batch
	after.Set([]byte("after"), []byte("1"))
	mustNil(t, b.Apply(&after, true))
	rec.waitFor(t, "after")
}

// TestEtcdStoreCompactionInvalidates: a node whose watch missed a revoke
// (compacted away) stops serving its cached verdict once the watch resumes.
func TestEtcdStoreCompactionInvalidates(t *testing.T) {
	srv := etcdtest.Shared(t)
	clk := newClock()
	prefix := etcdtest.Prefix(t)
	kvA := etcdKVAt(t, srv, prefix, 0)
	a := memStore(t, clk, func(o *Options) { o.KV = kvA })
	kvB := etcdKVAt(t, srv, prefix, 0)
	b := memStore(t, clk, func(o *Options) { o.KV = kvB })
	rec := newRecorder()
	kvA.Watch(rec.fn)
	enable(t, b, "acme")
	key, secret := mustKey(t, b, "acme", "alice", KeyInput{})
	// a's watch passes the key's creation before a caches the key: a late
	// delivery would empty a's cache while the watch is stopped.
	var marker Batch
	marker.Set([]byte(pMeta+"test-marker"), []byte("1"))
	mustNil(t, kvB.Apply(&marker, true))
	rec.waitFor(t, pMeta+"test-marker")
	if v := waitVerdict(t, a, "acme", secret, VerdictValid); v != VerdictValid {
		t.Fatalf("node a: %s", vname(v))
	}
	a.Wait()

	kvA.stopWatch()
	from, err := kvA.currentRevision()
	mustNil(t, err)
	if _, err := b.RevokeKey("op", "acme", key.ID); err != nil {
		t.Fatal(err)
	}
	mustKey(t, b, "acme", "bob", KeyInput{}) // the revoke's revision is compacted below this one
	if v := verdict(t, a, "acme", secret, clk.Now()); v != VerdictValid {
		t.Fatalf("the test needs a's cached verdict while its watch is stopped, got %s", vname(v))
	}
	cur, err := kvA.currentRevision()
	mustNil(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := srv.Client(t).Compact(ctx, cur); err != nil {
		t.Fatal(err)
	}
	kvA.wmu.Lock()
	kvA.startWatch(from + 1)
	kvA.wmu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for a.resets.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.resets.Load(); n != 2 {
		t.Fatalf("store resets after the compaction: %d, want 2", n)
	}
	if v := verdict(t, a, "acme", secret, clk.Now()); v != VerdictRevoked {
		t.Fatalf("after the reset node a says %s for a key revoked through b", vname(v))
	}
}

// waitVerdict verifies until the verdict is want (another node's write
// reaches this one through the watch), at most 10 s; it returns the last.
func waitVerdict(t testing.TB, s *Store, tenant, secret string, want Verdict) Verdict {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := verdict(t, s, tenant, secret, s.now())
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEtcdUnavailableFailsWithinDeadline: with etcd gone, every call fails
// with ErrUnavailable within its deadline instead of hanging, the store's
// errors are internal ones (503), and all works again once etcd is back.
func TestEtcdUnavailableFailsWithinDeadline(t *testing.T) {
	srv, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	const timeout = 500 * time.Millisecond
	kv := etcdKVAt(t, srv, "/keygate/", timeout)
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = kv })
	enable(t, s, "acme")
	_, secret := mustKey(t, s, "acme", "alice", KeyInput{})

	view, _, err := s.Verify("acme", secret, clk.Now())
	mustNil(t, err)
	s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())

	srv.Pause()
	bounded := func(what string, call func() error) {
		t.Helper()
		start := time.Now()
		err := call()
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with etcd stopped: %v, want ErrUnavailable", what, err)
		}
		if took > timeout+time.Second {
			t.Errorf("%s took %v with a %v deadline", what, took, timeout)
		}
	}
	bounded("Get", func() error { _, err := kv.Get([]byte("x")); return err })
	bounded("Apply", func() error { var b Batch; b.Set([]byte("x"), nil); return kv.Apply(&b, true) })
	bounded("Scan", func() error { return kv.Scan(nil, nil, func(_, _ []byte) bool { return true }) })
	bounded("CreateKey", func() error { _, _, err := s.CreateKey("op", "acme", "bob", KeyInput{Name: "k2"}); return err })
	bounded("Verify (miss)", func() error {
		_, _, err := s.Verify("acme", NewSecret(KeyPrefix), clk.Now())
		return err
	})
	if _, _, err := s.CreateKey("op", "acme", "bob", KeyInput{Name: "k2"}); KindOf(err) != KindInternal {
		t.Errorf("admin write with etcd stopped: kind %d (%v), want internal (503)", KindOf(err), err)
	} else if strings.Contains(err.Error(), secret) {
		t.Error("error names a secret")
	}

	// A usage flush fails too, and keeps the counts for the next one.
	bounded("Flush", s.Flush)
	if s.PendingUsage() != 1 {
		t.Errorf("after a failed flush %d keys' usage pending, want 1", s.PendingUsage())
	}

	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, _, err := s.CreateKey("op", "acme", "bob", KeyInput{Name: "k3"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd back, writes still fail: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mustNil(t, s.Flush())
	if u, err := s.Usage("acme", view.ID); err != nil || u.Total != 1 {
		t.Fatalf("usage kept through the outage: %+v %v", u, err)
	}
}

func TestEtcdClosedKV(t *testing.T) {
	kv := newEtcdKV(t)
	mustNil(t, kv.Close())
	mustNil(t, kv.Close())
	if _, err := kv.Get([]byte("a")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	var b Batch
	b.Set([]byte("a"), nil)
	if err := kv.Apply(&b, true); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v", err)
	}
}

// TestEtcdKVNoOpTxnNotTakenForOwn: a batch that changes nothing (deletes of
// absent keys) makes no etcd revision; the revision its answer names is
// another node's commit, which the watch must still deliver.
func TestEtcdKVNoOpTxnNotTakenForOwn(t *testing.T) {
	a := newEtcdKV(t)
	b := etcdKVAt(t, etcdtest.Shared(t), a.prefix, 0)
	rec := newRecorder()
	a.Watch(rec.fn)
	a.stopWatch()
	var w Batch
	w.Set([]byte("kh/other"), []byte("1"))
	mustNil(t, b.Apply(&w, true))
	rev, err := a.currentRevision()
	mustNil(t, err)
	var noop Batch
	noop.Delete([]byte("e/absent"))
	mustNil(t, a.Apply(&noop, true))
	a.wmu.Lock()
	a.startWatch(rev)
	a.wmu.Unlock()
	rec.waitFor(t, "kh/other")
}
