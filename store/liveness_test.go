package store

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestLivenessDeadline: a tick is fresh only once the watch has applied its
// revision, and it admits until its send time + max_staleness − margin,
// strictly before the lease (TTL ≥ max_staleness from the send) can expire.
func TestLivenessDeadline(t *testing.T) {
	clk := newClock()
	l := newLiveness(&etcdKV{prefix: "/p/"}, "n1", 2*time.Second, clk.Now)
	if l.admitting() {
		t.Fatal("admits before any tick")
	}
	if l.ttl < 2 {
		t.Fatalf("lease TTL %ds below max_staleness 2s", l.ttl)
	}
	s := clk.Now()
	l.pend, l.pRev = s, 10
	l.advance(9, false)
	if l.admitting() {
		t.Fatal("admits before the watch reached the tick's revision")
	}
	l.advance(10, false)
	if !l.admitting() {
		t.Fatal("does not admit after a fresh tick")
	}
	clk.Advance(2*time.Second - 200*time.Millisecond - time.Nanosecond)
	if !l.admitting() {
		t.Fatal("stopped admitting before max_staleness − margin")
	}
	clk.Advance(time.Nanosecond)
	if l.admitting() {
		t.Fatal("still admits at max_staleness − margin after the tick's send")
	}
	if !clk.Now().Before(s.Add(time.Duration(l.ttl) * time.Second)) {
		t.Fatal("the node's deadline is not before its lease's expiry")
	}
}

// livenessCluster opens n stores on one etcd prefix with distinct node ids
// and the cross-node guarantee on.
func livenessCluster(t *testing.T, srv *etcdtest.Server, n int, stale time.Duration, tweak ...func(i int, c *EtcdConfig)) ([]*Store, []*etcdKV) {
	t.Helper()
	prefix := etcdtest.Prefix(t)
	var stores []*Store
	var kvs []*etcdKV
	for i := range n {
		cfg := EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: prefix,
			MaxStaleness: stale, Timeout: stale, NodeID: fmt.Sprintf("n%d", i+1)}
		for _, f := range tweak {
			f(i, &cfg)
		}
		kv, err := openEtcd(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kv.Close() })
		s := memStore(t, nil, func(o *Options) { o.KV = kv; o.NodeID = fmt.Sprintf("n%d", i+1) })
		stores = append(stores, s)
		kvs = append(kvs, kv)
	}
	return stores, kvs
}

// TestEtcdRevocationAcknowledgedAcrossNodes: Verify loops on nodes 1 and 3
// while keys are revoked, rotated without grace and a tenant disabled
// through node 2: no Verify that started after the call answered admits.
func TestEtcdRevocationAcknowledgedAcrossNodes(t *testing.T) {
	srv := etcdtest.Shared(t)
	st, _ := livenessCluster(t, srv, 3, 2*time.Second)
	const rounds = 4
	type target struct {
		tenant, id, secret string
		op                 func() error
		answered           atomic.Pointer[time.Time]
	}
	var targets []*target
	for r := range rounds {
		tn := fmt.Sprintf("t%d", r)
		enable(t, st[1], tn)
		for kind := range 3 {
			k, sec := mustKey(t, st[1], tn, fmt.Sprintf("o%d", kind), KeyInput{})
			tg := &target{tenant: tn, id: k.ID, secret: sec}
			switch kind {
			case 0:
				tg.op = func() error { _, err := st[1].RevokeKey("op", tn, k.ID); return err }
			case 1:
				tg.op = func() error { _, _, err := st[1].RotateKey("op", tn, k.ID, RotateInput{}); return err }
			case 2:
				tg.op = func() error {
					_, err := st[1].UpdateSettings("op", tn, SettingsPatch{APIKeysEnabled: Some(false)})
					return err
				}
			}
			targets = append(targets, tg)
		}
	}
	for _, tg := range targets {
		for _, n := range []int{0, 2} {
			if v := waitVerdict(t, st[n], tg.tenant, tg.secret, VerdictValid); v != VerdictValid {
				t.Fatalf("node %d: a key created through node 2 is %s", n+1, vname(v))
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var checks atomic.Int64
	for _, n := range []int{0, 2} {
		for w := range 2 {
			wg.Go(func() {
				for i := w; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					tg := targets[i%len(targets)]
					start := time.Now()
					_, v, err := st[n].Verify(tg.tenant, tg.secret, st[n].now())
					ok := err == nil && v == VerdictValid && st[n].TenantEnabled(tg.tenant)
					checks.Add(1)
					if a := tg.answered.Load(); ok && a != nil && start.After(*a) {
						t.Errorf("node %d admitted a %s key in a Verify that started %v after the change answered",
							n+1, tg.tenant, start.Sub(*a))
					}
				}
			})
		}
	}
	var took []time.Duration
	for _, tg := range targets {
		time.Sleep(20 * time.Millisecond)
		begin := time.Now()
		if err := tg.op(); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		took = append(took, now.Sub(begin))
		tg.answered.Store(&now)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if checks.Load() < int64(len(targets)*10) {
		t.Fatalf("only %d concurrent checks ran", checks.Load())
	}
	slices.Sort(took)
	t.Logf("3 nodes under Verify load: %d ending changes, latency p50 %v max %v; %d concurrent Verify checks",
		len(took), took[len(took)/2], took[len(took)-1], checks.Load())
}

// TestEtcdRevokeLatency3Nodes measures revokes through one of three nodes:
// they answer on the other nodes' acknowledgements, well before the
// max_staleness bound.
func TestEtcdRevokeLatency3Nodes(t *testing.T) {
	srv := etcdtest.Shared(t)
	const stale = 2 * time.Second
	st, _ := livenessCluster(t, srv, 3, stale)
	enable(t, st[1], "acme")
	const n = 200
	ids := make([]string, n)
	for i := range ids {
		k, _ := mustKey(t, st[1], "acme", fmt.Sprintf("o%d", i), KeyInput{})
		ids[i] = k.ID
	}
	took := make([]time.Duration, n)
	for i, id := range ids {
		begin := time.Now()
		if _, err := st[1].RevokeKey("op", "acme", id); err != nil {
			t.Fatal(err)
		}
		took[i] = time.Since(begin)
	}
	slices.Sort(took)
	p50, p99 := took[n/2], took[n*99/100]
	t.Logf("revoke latency, 3 nodes: p50 %v p99 %v max %v", p50, p99, took[n-1])
	if p50 > stale/4 {
		t.Fatalf("revoke p50 %v: the nodes' acknowledgements are not used (bound %v)", p50, stale)
	}
}

// TestEtcdStoppedEveryNodeStopsAdmitting: with etcd gone every node answers
// unavailable within max_staleness + 1 s, from its cache too, and admits
// again once etcd is back.
func TestEtcdStoppedEveryNodeStopsAdmitting(t *testing.T) {
	srv, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	const stale = 2 * time.Second
	st, _ := livenessCluster(t, srv, 3, stale)
	enable(t, st[0], "acme")
	_, secret := mustKey(t, st[0], "acme", "alice", KeyInput{})
	views := make([]*KeyView, len(st))
	told := make([]chan time.Time, len(st)) // when each node's subscribers heard All
	for i, s := range st {
		if v := waitVerdict(t, s, "acme", secret, VerdictValid); v != VerdictValid {
			t.Fatalf("node %d: %s", i+1, vname(v))
		}
		view, _, err := s.Verify("acme", secret, s.now())
		mustNil(t, err)
		views[i] = view
		ch := make(chan time.Time, 8)
		told[i] = ch
		s.Subscribe(func(inv Invalidation) {
			if inv.All {
				ch <- time.Now()
			}
		})
	}
	srv.Pause()
	paused := time.Now()
	for i, s := range st {
		for {
			start := time.Now()
			_, _, err := s.Verify("acme", secret, s.now())
			if errors.Is(err, ErrUnavailable) {
				break
			}
			if err != nil {
				t.Fatalf("node %d: %v, want ErrUnavailable", i+1, err)
			}
			if late := start.Sub(paused); late > stale+time.Second {
				t.Fatalf("node %d admitted in a Verify that started %v after etcd stopped (max_staleness %v)", i+1, late, stale)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Requests a node admitted before and still running end too: its
	// subscribers (the gateway's stream registry) are told, and AdmitsUntil
	// no longer admits.
	for i, s := range st {
		select {
		case at := <-told[i]:
			if late := at.Sub(paused); late > stale+time.Second {
				t.Errorf("node %d told its subscribers %v after etcd stopped (max_staleness %v)", i+1, late, stale)
			}
		case <-time.After(stale + 2*time.Second):
			t.Fatalf("node %d never told its subscribers that it stopped admitting", i+1)
		}
		if _, code, ok := s.AdmitsUntil(views[i], s.now()); ok || code != "unavailable" {
			t.Errorf("node %d: AdmitsUntil while cut off = %v %q, want false unavailable", i+1, ok, code)
		}
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for i, s := range st {
		for {
			_, v, err := s.Verify("acme", secret, s.now())
			if err == nil && v == VerdictValid {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d after etcd came back: %s %v", i+1, vname(v), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestEtcdFrozenNodeBoundsRevoke: a node that stops heartbeating delays a
// revoke through another node by at most max_staleness (plus the call), and
// has itself stopped admitting by then.
func TestEtcdFrozenNodeBoundsRevoke(t *testing.T) {
	srv := etcdtest.Shared(t)
	const stale = 2 * time.Second
	st, kvs := livenessCluster(t, srv, 3, stale)
	enable(t, st[1], "acme")
	k, secret := mustKey(t, st[1], "acme", "alice", KeyInput{})
	if v := waitVerdict(t, st[2], "acme", secret, VerdictValid); v != VerdictValid {
		t.Fatalf("node 3: %s", vname(v))
	}
	kvs[2].live.frozen.Store(true)
	begin := time.Now()
	if _, err := st[1].RevokeKey("op", "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	t.Logf("revoke with a frozen node took %v", took)
	if took > stale+500*time.Millisecond {
		t.Fatalf("a frozen node held a revoke %v (max_staleness %v)", took, stale)
	}
	if took < stale/2 {
		t.Fatalf("revoke answered after %v without the frozen node's acknowledgement", took)
	}
	if _, _, err := st[2].Verify("acme", secret, st[2].now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("the frozen node still admits after the revoke answered: %v", err)
	}
	if v := verdict(t, st[0], "acme", secret, st[0].now()); v != VerdictRevoked {
		t.Fatalf("node 1 after the revoke: %s", vname(v))
	}
	// Heartbeating again, it takes a new lease (the old one ran out) and
	// admits again, knowing the revoke.
	time.Sleep(time.Duration(kvs[2].live.ttl) * time.Second) // the lease is surely gone
	kvs[2].live.frozen.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, v, err := st[2].Verify("acme", secret, st[2].now())
		if err == nil {
			if v != VerdictRevoked {
				t.Fatalf("node 3 back: %s", vname(v))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 3 heartbeating again still: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A node that closes revokes its lease: nothing waits for it.
	k2, _ := mustKey(t, st[1], "acme", "bob", KeyInput{})
	mustNil(t, st[2].Close())
	begin = time.Now()
	if _, err := st[1].RevokeKey("op", "acme", k2.ID); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > stale/2 {
		t.Fatalf("a revoke waited %v for a closed node", took)
	}
}

// TestEtcdStalledWatchStopsAdmitting: a node whose lease stays alive but
// whose watch delivers nothing, even once restarted (every stream stalls),
// does not acknowledge a revoke, which answers within max_staleness anyway:
// by then the node no longer admits (its ticks are not fresh). Its
// watchdog keeps restarting the watch (logging the stall once), and once a
// stream delivers again the node admits, knowing the revoke.
func TestEtcdStalledWatchStopsAdmitting(t *testing.T) {
	srv := etcdtest.Shared(t)
	const stale = 2 * time.Second
	log := &logRecorder{}
	st, kvs := livenessCluster(t, srv, 2, stale, func(i int, c *EtcdConfig) {
		if i == 0 {
			c.Logger = log
		}
	})
	enable(t, st[1], "acme")
	k, secret := mustKey(t, st[1], "acme", "alice", KeyInput{})
	if v := waitVerdict(t, st[0], "acme", secret, VerdictValid); v != VerdictValid {
		t.Fatalf("node 1: %s", vname(v))
	}
	kvs[0].stall.Store(-1) // every stream, the restarted ones too
	begin := time.Now()
	if _, err := st[1].RevokeKey("op", "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > stale+500*time.Millisecond || took < stale/2 {
		t.Fatalf("revoke with a stalled watch on the other node took %v, want about max_staleness %v", took, stale)
	}
	if _, v, err := st[0].Verify("acme", secret, st[0].now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("node 1 with a stalled watch after the revoke answered: %s %v, want ErrUnavailable", vname(v), err)
	}
	if n := kvs[0].live.restarts.Load(); n < 2 {
		t.Fatalf("the watchdog restarted the stalled watch %d times in max_staleness", n)
	}
	kvs[0].stall.Store(0) // the next restarted stream delivers
	deadline := time.Now().Add(stale + 2*time.Second)
	for {
		_, v, err := st[0].Verify("acme", secret, st[0].now())
		if err == nil {
			if v != VerdictRevoked {
				t.Fatalf("node 1 caught up: %s", vname(v))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 with its watch back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lines := log.matching("restarting the watch"); len(lines) != 1 {
		t.Fatalf("the stall was logged %d times, want once: %q", len(lines), lines)
	}
}

// TestEtcdWatchdogRestartsStalledWatch: a node whose watch stream stalls
// silently (open, no events, unary calls fine) restarts it from the last
// revision it applied and admits again within about a tick period, without
// ever admitting stale: a key revoked through another node during the
// stall is rejected by every Verify that starts after the revoke answered,
// and a key created during the stall is admitted after it.
func TestEtcdWatchdogRestartsStalledWatch(t *testing.T) {
	srv := etcdtest.Shared(t)
	const stale = 2 * time.Second
	st, kvs := livenessCluster(t, srv, 3, stale)
	enable(t, st[1], "acme")
	k, secret := mustKey(t, st[1], "acme", "alice", KeyInput{})
	if v := waitVerdict(t, st[0], "acme", secret, VerdictValid); v != VerdictValid {
		t.Fatalf("node 1: %s", vname(v))
	}
	var answered atomic.Pointer[time.Time]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var unavailable atomic.Int64
	wg.Go(func() { // node 1 under requests through the whole stall
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			_, v, err := st[0].Verify("acme", secret, st[0].now())
			if errors.Is(err, ErrUnavailable) {
				unavailable.Add(1)
			} else if a := answered.Load(); err == nil && v == VerdictValid && a != nil && start.After(*a) {
				t.Errorf("node 1 admitted the key in a Verify that started %v after its revoke answered", start.Sub(*a))
			}
			time.Sleep(time.Millisecond)
		}
	})
	stalledAt := time.Now()
	kvs[0].stall.Store(kvs[0].streams.Load()) // the current stream only
	_, secret2 := mustKey(t, st[1], "acme", "bob", KeyInput{})
	if _, err := st[1].RevokeKey("op", "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	answered.Store(&now)
	t.Logf("revoke through node 2 answered %v after node 1's watch stalled", now.Sub(stalledAt))
	if now.Sub(stalledAt) >= stale {
		t.Errorf("the revoke waited for max_staleness (%v): node 1 did not recover and acknowledge", now.Sub(stalledAt))
	}
	if v := waitVerdict(t, st[0], "acme", secret2, VerdictValid); v != VerdictValid {
		t.Fatalf("node 1 after the stall: a key created meanwhile is %s", vname(v))
	}
	if took := time.Since(stalledAt); took > stale {
		t.Fatalf("node 1 admitted again %v after its watch stalled (max_staleness %v)", took, stale)
	}
	if _, v, err := st[0].Verify("acme", secret, st[0].now()); err != nil || v != VerdictRevoked {
		t.Fatalf("node 1 after the stall: the revoked key is %s %v", vname(v), err)
	}
	close(stop)
	wg.Wait()
	if n := kvs[0].live.restarts.Load(); n != 1 {
		t.Fatalf("%d watch restarts for one stall", n)
	}
	t.Logf("node 1 answered 503 to %d Verify calls during the stall", unavailable.Load())
}

// TestAcknowledgedCommitsMayEnd: every commit that awaits the other nodes'
// acknowledgement (an ending one) has keys mayEnd accepts, so the nodes
// acknowledge it; a usage flush's does not, so applying another node's
// flush costs no acknowledgement put.
func TestAcknowledgedCommitsMayEnd(t *testing.T) {
	ending := 0
	runLifecycle(t, func(t *testing.T, l *lifecycle, st lifecycleStep, c committed) {
		if c.fx.ending() {
			ending++
			if !mayEnd(c.keys) {
				t.Errorf("an ending commit (%d keys) would not be acknowledged by the other nodes", len(c.keys))
			}
		}
	})
	if ending == 0 {
		t.Fatal("no ending commit in the lifecycle")
	}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.NodeID = "n1" })
	enable(t, s, "acme")
	var mu sync.Mutex
	var batches [][][]byte
	s.kv.Watch(func(keys [][]byte) { mu.Lock(); batches = append(batches, keys); mu.Unlock() })
	view := &KeyView{ID: "key_1", Tenant: "acme"}
	s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
	s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeRevoked, clk.Now()) // a denied-requests event too
	mustNil(t, s.Flush())
	mu.Lock()
	defer mu.Unlock()
	if len(batches) != 1 {
		t.Fatalf("%d batches for one flush", len(batches))
	}
	if mayEnd(batches[0]) {
		t.Fatalf("a usage flush (%q) would be acknowledged by every other node", batches[0])
	}
}
