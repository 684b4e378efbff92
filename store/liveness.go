package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Revocation across nodes (etcd). commit.go argues that a revoke that has
// answered is seen by every later Verify of the node that made it. This
// file extends that to every node sharing the etcd prefix, with S the
// configured max_staleness (EtcdConfig.MaxStaleness).
//
// # Fail closed when cut off (liveness)
//
// Every node keeps an etcd lease with TTL ≥ S (whole seconds, rounded up)
// and a record nodesPrefix+<node id> bound to it, whose value is the
// revision the node's watch has applied. Every S/4 the node makes a tick:
// at local time s it sends a keepalive of its lease (or grants a new one)
// and then puts its record; the put's answer carries a revision R_s. Once
// the watch has applied every commit up to R_s (the watch delivers commits
// in revision order and calls the store synchronously, so their effects are
// in the caches), the tick is fresh, and the node admits (admitting, which
// Verify checks first) until s + S − margin, margin = S/10. Without a fresh
// tick for that long Verify answers ErrUnavailable (503 `unavailable`) until
// one comes: after a gap the watch resumes from its revision (or, when
// etcd compacted it, the store reloads everything, WatchReset) and only a
// tick whose R_s the watch has reached admits again, so a node catches up
// before it admits.
//
// Two facts are used below:
//
//	(F1) a fresh tick made at s covers every commit that had answered before
//	     s: the put was sent after s, etcd is linearizable, so R_s is above
//	     that commit's revision, and the watch applied it;
//	(F2) a node stops admitting strictly before its lease can expire on the
//	     server: the keepalive (or grant) of a tick was sent after s, so the
//	     server expires the lease no earlier than s + TTL, and TTL ≥ S >
//	     S − margin, the node's own deadline from that tick (the margin
//	     covers the two clocks' rates; a leader change only extends leases).
//
// # Revocation acknowledged (awaitApplied)
//
// A commit that ends something (a revoke, a rotation without grace, a
// delete, a user delete, a tenant write such as a disable) at revision R
// answers only after awaitApplied(R): started at c, after the commit
// answered, it reads every node record (a linearizable read, at a revision
// ≥ R) and watches them until every other node's record holds a revision
// ≥ R or is gone (its lease ran out), at most until c + S; then it answers
// anyway.
//
// Claim: no node admits the revoked secret for a Verify that starts at a
// time t after the answer A. Node n admits at t only with a fresh tick s
// where t < s + S − margin. If s > c, the commit had answered before s and
// n applied it (F1). Otherwise s ≤ c. If that tick's put committed after
// awaitApplied's read (made at a revision ≥ R), R_s > R and the tick is
// fresh only once n applied R. Else the read saw n's record (put with a
// live lease), so awaitApplied waited for n, and the wait ended in one of
// three ways:
//
//   - the record held ≥ R: n's watch had applied R (the value is published
//     only after the store applied it) before A < t;
//   - the record was deleted: n closed (it revoked its lease after its store
//     stopped answering), or its lease expired before A; by (F2) n stopped
//     admitting from every tick of that lease before that, and a later
//     lease's tick puts a record at a revision above the deletion, above R,
//     so it is fresh only once n applied R;
//   - the bound: A ≥ c + S, and c + S ≤ A < t < s + S − margin gives
//     s > c + margin > c, contradicting s ≤ c.
//
// A node that stops heartbeating (frozen, cut off) thus delays a revoke by
// at most S, and a node that closes revokes its lease and delays nothing.
// A node's acknowledgement is a put per applied commit of another node
// that may end something (mayEnd: not one of usage, events or meta
// records, which nobody waits for; coalesced: at most one in flight), so
// its write rate is bounded by its round trips to etcd, plus 4/S
// heartbeats per second.
//
// # Watch stalls (watchdog)
//
// A watch stream can stay open and deliver nothing while unary calls still
// work. The node then fails closed (no tick becomes fresh, so it stops
// admitting by S − margin after its last fresh one, and it does not
// acknowledge, so revokes elsewhere answer by the bound), but it would stay
// closed until the stream recovers, perhaps never. Each tick's put is
// under the watched prefix, so a healthy watch delivers it: when the watch
// has applied nothing at all for a tick period (S/4) while a tick's
// revision is outstanding, the tick loop cancels the watch loop, waits for
// it to end, and starts a new watch at applied+1 (logged once per stall).
// Progress notifications (every 10 minutes by default) come too rarely to
// tell a stall, and WithRequireLeader only ends streams whose member lost
// its leader; both stay on. The restart is safe:
//
//   - applied is advanced only after the store has applied every commit up
//     to it, in revision order (deliver, or a progress notification that
//     says nothing below it is left), and the old loop has ended before
//     the new watch starts, so nothing is delivered twice concurrently or
//     out of order, and no commit above applied is skipped: the new watch
//     delivers all of them, or reports that etcd compacted some away, and
//     then the store reloads everything (WatchReset) before applied moves;
//   - freshness and acknowledgements still come only from applied reaching
//     a revision, so during and after the restart the argument above holds
//     unchanged: the restart only makes applied move again.
//
// Pebble (one node) has none of this: no lease, no wait.

// nodesPrefix is where nodes publish their liveness records (under the
// etcd prefix); the store's own keys never start with it.
const nodesPrefix = "nodes/"

// livenessTicks is the number of ticks per max_staleness.
const livenessTicks = 4

// liveness keeps a node's lease and record and decides whether it admits.
type liveness struct {
	kv     *etcdKV
	key    string // the full etcd key of this node's record
	stale  time.Duration
	margin time.Duration
	ttl    int64 // seconds
	now    func() time.Time
	base   time.Time // admitUntil is measured from base (monotonic)

	admitUntil atomic.Int64 // nanoseconds since base; 0: never admitted
	applied    atomic.Int64 // the revision the watch has applied

	mu   sync.Mutex
	pend time.Time // the latest tick not yet fresh, and its revision
	pRev int64

	// The watchdog (loop goroutine only): lagAt is the send time of the
	// tick since which the watch has applied nothing although a tick's
	// revision is outstanding (zero: none), lagApplied what it had
	// applied then; stallLogged: this stall was logged.
	lagAt       time.Time
	lagApplied  int64
	stallLogged bool
	restarting  atomic.Bool
	restarts    atomic.Int64 // watch restarts (tests, diagnostics)

	ack     chan struct{}
	frozen  atomic.Bool // tests: a node that stops heartbeating
	cancel  context.CancelFunc
	done    chan struct{}
	started atomic.Bool
	lease   clientv3.LeaseID // loop goroutine only (and Close after it)
	freshCh chan struct{}    // closed on the first fresh tick
	onceF   sync.Once

	// onLost is called (from watchLost's goroutine) each time the node
	// stops admitting, so that requests it admitted earlier and that are
	// still running end too (the store tells its subscribers).
	onLost   atomic.Pointer[func()]
	lostDone chan struct{}

	// Other nodes' records as this node's watch last saw them; changed is
	// closed (and replaced) on every change.
	nmu     sync.Mutex
	nodes   map[string]nodeState
	changed chan struct{}
}

// nodeState is another node's record as the watch delivered it.
type nodeState struct {
	applied int64 // its value
	rev     int64 // the revision of the put or delete
	deleted bool
}

func newLiveness(kv *etcdKV, nodeID string, stale time.Duration, now func() time.Time) *liveness {
	if now == nil {
		now = time.Now
	}
	ttl := int64((stale + time.Second - 1) / time.Second)
	return &liveness{kv: kv, key: kv.prefix + nodesPrefix + nodeID, stale: stale, margin: stale / 10,
		ttl: max(ttl, 1), now: now, base: now(), ack: make(chan struct{}, 1), freshCh: make(chan struct{}),
		nodes: map[string]nodeState{}, changed: make(chan struct{})}
}

// observe records a change of a node record delivered by the watch.
func (l *liveness) observe(key string, value []byte, rev int64, deleted bool) {
	if key == l.key {
		return
	}
	n, _ := strconv.ParseInt(string(value), 10, 64)
	l.nmu.Lock()
	l.nodes[key] = nodeState{applied: n, rev: rev, deleted: deleted}
	close(l.changed)
	l.changed = make(chan struct{})
	l.nmu.Unlock()
}

// admitting reports whether the node may admit now: it had a fresh tick
// within max_staleness − margin.
func (l *liveness) admitting() bool {
	return int64(l.now().Sub(l.base)) < l.admitUntil.Load()
}

// advance records that the watch applied every commit up to rev; acked:
// one of them was a store commit, which other nodes may wait for.
func (l *liveness) advance(rev int64, acked bool) {
	for {
		cur := l.applied.Load()
		if rev <= cur || l.applied.CompareAndSwap(cur, rev) {
			break
		}
	}
	l.mu.Lock()
	if l.pRev != 0 && l.applied.Load() >= l.pRev {
		l.fresh(l.pend)
		l.pRev = 0
	}
	l.mu.Unlock()
	if acked {
		select {
		case l.ack <- struct{}{}:
		default:
		}
	}
}

// fresh makes the tick made at s admit until s + S − margin.
func (l *liveness) fresh(s time.Time) {
	until := int64(s.Sub(l.base) + l.stale - l.margin)
	for {
		cur := l.admitUntil.Load()
		if until <= cur || l.admitUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	l.onceF.Do(func() { close(l.freshCh) })
}

// start runs the heartbeat loop (once); freshCh tells the first fresh tick.
func (l *liveness) start() {
	if !l.started.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithCancel(l.kv.ctx)
	l.cancel, l.done, l.lostDone = cancel, make(chan struct{}), make(chan struct{})
	go l.loop(ctx)
	go l.watchLost(ctx)
}

// watchLost calls onLost when the node stops admitting. It polls the
// deadline (an atomic load) every max_staleness/20, on its own goroutine so
// that a tick blocked on an unreachable etcd cannot delay it: running
// requests end within max_staleness/20 of the deadline, itself a tenth of
// max_staleness before the lease could expire.
func (l *liveness) watchLost(ctx context.Context) {
	defer close(l.lostDone)
	t := time.NewTicker(max(l.stale/20, 5*time.Millisecond))
	defer t.Stop()
	was := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := l.admitting()
		if was && !now {
			if f := l.onLost.Load(); f != nil {
				(*f)()
			}
		}
		was = now
	}
}

func (l *liveness) loop(ctx context.Context) {
	defer close(l.done)
	period := l.stale / livenessTicks
	t := time.NewTicker(period)
	defer t.Stop()
	l.tick(ctx, period)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.tick(ctx, period)
		case <-l.ack:
			l.publish(ctx, period)
		}
	}
}

// tick renews the lease and puts the record; the tick is fresh once the
// watch reaches the put's revision.
func (l *liveness) tick(ctx context.Context, within time.Duration) {
	if l.frozen.Load() {
		return
	}
	s := l.now()
	cctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if l.lease != 0 {
		if _, err := l.kv.cli.KeepAliveOnce(cctx, l.lease); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				l.lease = 0 // expired: a new one below
			} else {
				return
			}
		}
	}
	if l.lease == 0 {
		g, err := l.kv.cli.Grant(cctx, l.ttl)
		if err != nil {
			return
		}
		l.lease = g.ID
	}
	rev, err := l.put(cctx)
	if err != nil {
		return
	}
	l.mu.Lock()
	applied := l.applied.Load()
	if applied >= rev {
		l.fresh(s)
	} else if rev > l.pRev {
		l.pend, l.pRev = s, rev
	}
	l.mu.Unlock()
	l.watchdog(s, rev, applied)
}

// watchdog restarts a watch that has applied nothing for a tick period
// (max_staleness/4) while etcd answers the ticks, whose own puts the watch
// must deliver: the stream is stalled, not slow (see "Watch stalls" above).
// A watch that makes any progress is left alone.
func (l *liveness) watchdog(s time.Time, rev, applied int64) {
	switch {
	case applied >= rev: // caught up
		l.lagAt, l.stallLogged = time.Time{}, false
		return
	case l.lagAt.IsZero() || applied != l.lagApplied: // behind, or still moving
		l.lagAt, l.lagApplied = s, applied
		return
	case s.Sub(l.lagAt) < l.stale/(livenessTicks+1): // a tick period, less the ticker's jitter
		return
	}
	idle := s.Sub(l.lagAt)
	l.lagAt = time.Time{} // the next period is measured from the restart
	if !l.restarting.CompareAndSwap(false, true) {
		return
	}
	if !l.stallLogged { // once per stall, however many restarts it takes
		l.stallLogged = true
		l.kv.log.Errorf("etcd watch: no event after revision %d for %v although etcd answers (at revision %d); restarting the watch from there",
			applied, idle, rev)
	}
	l.restarts.Add(1)
	go func() { // it waits for the old loop to end: not on the tick's goroutine
		defer l.restarting.Store(false)
		if !l.kv.restartWatch() && !l.kv.closed.Load() {
			l.kv.log.Errorf("etcd watch: the stalled watch did not stop; this node keeps answering 503 until it does")
		}
	}()
}

// publish puts the applied revision at once (another node may wait for it).
func (l *liveness) publish(ctx context.Context, within time.Duration) {
	if l.frozen.Load() || l.lease == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	_, _ = l.put(cctx)
}

func (l *liveness) put(ctx context.Context) (int64, error) {
	resp, err := l.kv.cli.Put(ctx, l.key, strconv.FormatInt(l.applied.Load(), 10), clientv3.WithLease(l.lease))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.lease = 0
		}
		return 0, err
	}
	return resp.Header.Revision, nil
}

// stop ends the loop and revokes the lease, so that no revoke waits for a
// node that has closed.
func (l *liveness) stop() {
	if !l.started.Load() {
		return
	}
	l.cancel()
	<-l.done
	<-l.lostDone
	if l.lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), l.kv.timeout)
		_, _ = l.kv.cli.Revoke(ctx, l.lease)
		cancel()
	}
}

// awaitApplied waits until every other live node has applied rev, or its
// lease ran out, at most max_staleness from now (see the argument above).
// It reads the records once and then follows them through this node's own
// watch (a watch per call would start behind and wait for etcd's 100 ms
// catch-up loop).
// It returns the nodes that did not answer in time (for a log line).
func (l *liveness) awaitApplied(rev int64) []string {
	ctx, cancel := context.WithTimeout(l.kv.ctx, l.stale)
	defer cancel()
	pfx := l.kv.prefix + nodesPrefix
	waiting := map[string]bool{}
	resp, err := l.kv.cli.Get(ctx, pfx, clientv3.WithPrefix())
	for err != nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(etcdWatchBackoff / 4):
		}
		resp, err = l.kv.cli.Get(ctx, pfx, clientv3.WithPrefix())
	}
	if err != nil {
		return []string{"(node records unreadable)"}
	}
	for _, kv := range resp.Kvs {
		if string(kv.Key) != l.key && !appliedAtLeast(kv.Value, rev) {
			waiting[string(kv.Key)] = true
		}
	}
	// The records' later changes arrive through this node's own watch
	// (observe): a record that holds ≥ rev, or was deleted after the read.
	read := resp.Header.Revision
	for len(waiting) > 0 {
		l.nmu.Lock()
		for k := range waiting {
			if st, ok := l.nodes[k]; ok && (st.applied >= rev || st.deleted && st.rev > read) {
				delete(waiting, k)
			}
		}
		ch := l.changed
		l.nmu.Unlock()
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return l.names(waiting)
		}
	}
	return nil
}

// names lists the node ids of the waiting records.
func (l *liveness) names(waiting map[string]bool) []string {
	pfx := l.kv.prefix + nodesPrefix
	var late []string
	for k := range waiting {
		late = append(late, k[len(pfx):])
	}
	sort.Strings(late)
	return late
}

func appliedAtLeast(v []byte, rev int64) bool {
	n, err := strconv.ParseInt(string(v), 10, 64)
	return err == nil && n >= rev
}

// livenessKV is implemented by a KV shared by nodes that fail closed when
// cut off and acknowledge revocations (etcd with a max_staleness).
type livenessKV interface {
	// applyRev is Apply returning the commit's revision (0: none).
	applyRev(b *Batch) (int64, error)
	// admitting reports whether this node may admit now.
	admitting() bool
	// awaitApplied waits for the other nodes to apply rev (bounded).
	awaitApplied(rev int64) []string
	// onLost registers fn, called each time this node stops admitting.
	onLost(fn func())
}

// errStale is Verify's error while the node is cut off from etcd.
var errStale = fmt.Errorf("%w: no contact with etcd within max_staleness", ErrUnavailable)
