package store

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdConfig configures OpenEtcd.
type EtcdConfig struct {
	// Endpoints are the cluster's client URLs: host:port, or
	// https://host:port with TLS.
	Endpoints []string
	// Prefix namespaces every key (default DefaultEtcdPrefix).
	Prefix string
	// Username and Password authenticate to an etcd with auth enabled.
	Username, Password string
	// CAFile verifies the server's certificate; CertFile and KeyFile are
	// the client's certificate (mutual TLS). Any of them turns TLS on.
	CAFile, CertFile, KeyFile string
	// Timeout bounds every call (default DefaultEtcdTimeout): a call that
	// cannot complete in time fails with ErrUnavailable, never hangs.
	Timeout time.Duration
	// Merge combines the values of Batch.Merge writes (read-modify-write).
	Merge MergeFunc
	// Logger receives diagnostics (nil: none).
	Logger Logger
	// MaxStaleness, when positive, turns on the cross-node guarantee
	// (liveness.go): the node keeps a lease and publishes what it has
	// applied under nodes/NodeID, stops admitting when it has not heard
	// from etcd for MaxStaleness, and ending writes wait (at most
	// MaxStaleness) for the other nodes to apply them.
	MaxStaleness time.Duration
	// NodeID names this node's liveness record; unique per node.
	NodeID string
	// Now is the clock of the liveness deadline (nil: time.Now).
	Now func() time.Time
}

// DefaultEtcdPrefix namespaces keygate's keys in a shared etcd.
const DefaultEtcdPrefix = "/keygate/"

// DefaultEtcdTimeout is the deadline of one etcd call.
const DefaultEtcdTimeout = 2 * time.Second

// etcdScanPage is how many keys one range request of Scan returns.
const etcdScanPage = 500

// ownBeforeWatch bounds the own revisions recorded while no watch runs.
const ownBeforeWatch = 1024

// etcdMergeRetries bounds the read-modify-write retries of a batch with
// merges whose keys another writer changed meanwhile.
const etcdMergeRetries = 16

// etcdDefaultMaxTxnOps and etcdDefaultMaxRequest are etcd's default
// --max-txn-ops and (a margin below) --max-request-bytes: the bounds of
// the batches the store splits itself (usage flushes, storage copy).
const (
	etcdDefaultMaxTxnOps  = 128
	etcdDefaultMaxRequest = 1 << 20
)

// etcdKV is the KV on an etcd cluster, shared by every keygate node.
//
// A batch is one Txn, so it commits atomically and durably (etcd fsyncs
// its raft log before it answers). Merges have no native form in etcd:
// the batch reads the merged keys first, and the Txn commits only if none
// changed meanwhile (a compare on each one's mod revision), else it is
// retried. Usage, the only merged data, is written under a per-node key
// (usageKey), so the compares meet contention only when two nodes share a
// node id.
//
// Watch delivers the keys of every commit under the prefix, this node's
// (synchronously, at the end of Apply, as pebbleKV does) and other nodes'
// (from etcd's watch, one call per revision). The watch starts at the
// revision the KV was opened at, so nothing committed after the store read
// its initial state is missed. When etcd compacted away revisions the watch
// had not delivered yet (ErrCompacted, PITFALLS 24) it resumes from the
// current revision and calls the reset functions (WatchReset): the store
// must then consider everything changed.
//
// Every call runs under a deadline (Timeout); the client reconnects and
// retries on its own behind it. Failures are ErrUnavailable, which the
// gateway and the admin API answer with 503.
type etcdKV struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
	merge   MergeFunc
	log     Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool

	openRev int64 // the revision when the KV was opened

	wmu        sync.Mutex
	watchers   atomic.Pointer[[]func(keys [][]byte)]
	resets     atomic.Pointer[[]func()]
	started    bool
	watching   atomic.Bool // a watch loop runs (and prunes own)
	loopCancel context.CancelFunc
	loopDone   chan struct{}

	live *liveness // nil without MaxStaleness

	// streams numbers the watch streams opened; stall (tests only) makes
	// the stream with that number (-1: every stream) swallow everything it
	// receives from then on, as a stream that stays open but delivers
	// nothing would: the silent stall liveness.go's watchdog repairs.
	streams atomic.Int64
	stall   atomic.Int64

	// own holds the revisions of this node's commits whose keys Apply has
	// delivered already, so that the watch does not deliver them again.
	// A commit holds inflight (shared) from sending its Txn until its
	// revision is in own, and the watch takes it (exclusively) before it
	// looks there: its event may arrive before the Txn's answer does.
	omu      sync.Mutex
	own      map[int64]struct{}
	inflight sync.RWMutex
}

// OpenEtcd connects to an etcd cluster. It fails when no endpoint answers
// within the timeout.
func OpenEtcd(cfg EtcdConfig) (KV, error) { return openEtcd(cfg) }

func openEtcd(cfg EtcdConfig) (*etcdKV, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultEtcdTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = nopLogger{}
	}
	if cfg.Merge == nil {
		cfg.Merge = mergeValues
	}
	tlsConf, err := cfg.tls()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.Timeout,
		DialKeepAliveTime:    cfg.Timeout,
		DialKeepAliveTimeout: cfg.Timeout,
		Username:             cfg.Username,
		Password:             cfg.Password,
		TLS:                  tlsConf,
		Logger:               zap.NewNop(), // failures reach the store as errors
	})
	if err != nil {
		return nil, fmt.Errorf("%w: etcd %v: %v", ErrUnavailable, cfg.Endpoints, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kv := &etcdKV{cli: cli, prefix: cfg.Prefix, timeout: cfg.Timeout, merge: cfg.Merge, log: cfg.Logger,
		ctx: ctx, cancel: cancel, own: map[int64]struct{}{}}
	cctx, ccancel := kv.callCtx()
	resp, err := cli.Get(cctx, cfg.Prefix, clientv3.WithCountOnly())
	ccancel()
	if err != nil {
		cancel()
		_ = cli.Close()
		return nil, fmt.Errorf("%w: etcd %v: %v", ErrUnavailable, cfg.Endpoints, err)
	}
	kv.openRev = resp.Header.Revision
	if cfg.MaxStaleness > 0 {
		kv.live = newLiveness(kv, cfg.NodeID, cfg.MaxStaleness, cfg.Now)
		kv.live.applied.Store(kv.openRev)
	}
	return kv, nil
}

// tls builds the client's TLS configuration, or nil without TLS.
func (c *EtcdConfig) tls() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" {
		for _, ep := range c.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				return &tls.Config{MinVersion: tls.VersionTLS12}, nil // the system's roots
			}
		}
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd tls ca: no certificate in %s", c.CAFile)
		}
		conf.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("etcd tls: a client certificate needs both cert and key")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd tls client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

func (e *etcdKV) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.ctx, e.timeout)
}

// fail turns an etcd error into the store's: ErrClosed after Close,
// ErrUnavailable otherwise (an etcd error never carries a value).
func (e *etcdKV) fail(op string, err error) error {
	if e.closed.Load() {
		return ErrClosed
	}
	switch {
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("%w: etcd %s: the change needs more operations in one transaction than the etcd server's --max-txn-ops allows; "+
			"raise it (README, Running several nodes)", ErrUnavailable, op)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("%w: etcd %s: the change is larger than the etcd server's --max-request-bytes allows; raise it "+
			"(README, Running several nodes)", ErrUnavailable, op)
	}
	return fmt.Errorf("%w: etcd %s: %v", ErrUnavailable, op, err)
}

func (e *etcdKV) key(k []byte) string { return e.prefix + string(k) }

func (e *etcdKV) Get(key []byte) ([]byte, error) {
	if e.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := e.callCtx()
	defer cancel()
	resp, err := e.cli.Get(ctx, e.key(key))
	if err != nil {
		return nil, e.fail("get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errKVNotFound
	}
	if v := resp.Kvs[0].Value; v != nil {
		return v, nil
	}
	return []byte{}, nil
}

// etcdOp is the net effect of a batch on one key: etcd refuses a Txn that
// names a key twice.
type etcdOp struct {
	key   []byte
	kind  opKind // opSet, opDelete, or opMerge (operand onto the stored value)
	value []byte
}

// collapse folds the batch's operations into one per key, in the order of
// each key's first operation.
func (e *etcdKV) collapse(b *Batch) []*etcdOp {
	byKey := make(map[string]*etcdOp, len(b.ops))
	out := make([]*etcdOp, 0, len(b.ops))
	for _, op := range b.ops {
		cur := byKey[string(op.key)]
		if cur == nil {
			cur = &etcdOp{key: op.key, kind: op.kind, value: op.value}
			byKey[string(op.key)] = cur
			out = append(out, cur)
			continue
		}
		switch op.kind {
		case opSet, opDelete:
			cur.kind, cur.value = op.kind, op.value
		case opMerge:
			switch cur.kind {
			case opSet:
				cur.value = e.merge(op.key, cur.value, op.value)
			case opDelete:
				cur.kind, cur.value = opSet, e.merge(op.key, nil, op.value)
			case opMerge:
				cur.value = e.merge(op.key, cur.value, op.value) // associative
			}
		}
	}
	return out
}

// BatchLimits are the bounds within which callers that may split their
// writes (usage flushes, storage copy) keep each batch: etcd's defaults.
func (e *etcdKV) batchLimits() (ops, bytes int) { return etcdDefaultMaxTxnOps, etcdDefaultMaxRequest }

func (e *etcdKV) Apply(b *Batch, _ bool) error {
	_, err := e.applyRev(b)
	return err
}

// applyRev is Apply that also returns the commit's revision (0: the batch
// changed nothing).
func (e *etcdKV) applyRev(b *Batch) (int64, error) {
	if b.Len() == 0 {
		return 0, nil
	}
	if e.closed.Load() {
		return 0, ErrClosed
	}
	ops := e.collapse(b)
	var merges []*etcdOp
	for _, op := range ops {
		if op.kind == opMerge {
			merges = append(merges, op)
		}
	}
	rev, err := e.commitOwn(ops, merges, b.expects)
	if err != nil {
		return 0, err
	}
	// The batch's own keys, as pebbleKV passes them (repeats included): the
	// store tells its own commits from other nodes' by them (commit.go,
	// localCommits.isEcho), and collapsed ones made a batch that wrote a
	// key twice (meta/last_event, one per event) look like another node's.
	keys := make([][]byte, len(b.ops))
	for i, op := range b.ops {
		keys[i] = op.key
	}
	if ws := e.watchers.Load(); ws != nil {
		for _, w := range *ws {
			w(keys)
		}
	}
	return rev, nil
}

// commitOwn commits ops (retrying while merged keys change) and records
// the revision as this node's own before the watch may look for it.
func (e *etcdKV) commitOwn(ops, merges []*etcdOp, expects []batchExpect) (int64, error) {
	e.inflight.RLock()
	defer e.inflight.RUnlock()
	for attempt := 0; ; attempt++ {
		if attempt == etcdMergeRetries {
			return 0, fmt.Errorf("%w: etcd txn: merged keys kept changing (%d attempts)", ErrUnavailable, attempt)
		}
		ok, rev, err := e.commit(ops, merges, expects)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue
		}
		if rev != 0 {
			// The watch prunes what it passes. Commits made before it
			// starts (Store.init's) are recorded too, since it starts at
			// openRev+1 and passes them; the bound keeps a KV that is
			// never watched (storage copy) from growing the map.
			e.omu.Lock()
			if e.watching.Load() || len(e.own) < ownBeforeWatch {
				e.own[rev] = struct{}{}
			}
			e.omu.Unlock()
		}
		return rev, nil
	}
}

// admitting reports whether this node may admit (liveness.go); always
// without MaxStaleness.
func (e *etcdKV) admitting() bool { return e.live == nil || e.live.admitting() }

func (e *etcdKV) onLost(fn func()) {
	if e.live != nil {
		e.live.onLost.Store(&fn)
	}
}

// awaitApplied waits, bounded by MaxStaleness, until every other live node
// has applied rev (liveness.go); it returns the nodes that did not.
func (e *etcdKV) awaitApplied(rev int64) []string {
	if e.live == nil || rev == 0 {
		return nil
	}
	return e.live.awaitApplied(rev)
}

// commit runs one attempt of a batch: it reads the merged keys, then
// commits every operation in one Txn guarded by their mod revisions and by
// the batch's expectations (a value compare; a create revision of 0 for an
// absent key). ok is false when a merged key changed in between (the
// caller retries); a failed expectation is errKVConflict, told apart by
// the failure branch's reads of the expected keys, made in the same
// revision as the failed compares.
func (e *etcdKV) commit(ops, merges []*etcdOp, exps []batchExpect) (ok bool, rev int64, err error) {
	ctx, cancel := e.callCtx()
	defer cancel()
	base := map[string][]byte{}
	var cmps []clientv3.Cmp
	if len(merges) > 0 {
		gets := make([]clientv3.Op, len(merges))
		for i, m := range merges {
			gets[i] = clientv3.OpGet(e.key(m.key))
		}
		resp, err := e.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return false, 0, e.fail("read merged keys", err)
		}
		for i, m := range merges {
			var modRev int64
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
				base[string(m.key)] = kvs[0].Value
				modRev = kvs[0].ModRevision
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.key(m.key)), "=", modRev))
		}
	}
	var elseGets []clientv3.Op
	for _, x := range exps {
		if x.absent {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(e.key(x.key)), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.Value(e.key(x.key)), "=", string(x.value)))
		}
		elseGets = append(elseGets, clientv3.OpGet(e.key(x.key)))
	}
	puts := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		switch op.kind {
		case opDelete:
			puts = append(puts, clientv3.OpDelete(e.key(op.key)))
		case opMerge:
			puts = append(puts, clientv3.OpPut(e.key(op.key), string(e.merge(op.key, base[string(op.key)], op.value))))
		default:
			puts = append(puts, clientv3.OpPut(e.key(op.key), string(op.value)))
		}
	}
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(puts...).Else(elseGets...).Commit()
	if err != nil {
		return false, 0, e.fail("txn", err)
	}
	if !resp.Succeeded {
		for i, x := range exps {
			kvs := resp.Responses[i].GetResponseRange().GetKvs()
			if x.absent != (len(kvs) == 0) || !x.absent && !bytes.Equal(kvs[0].Value, x.value) {
				return false, 0, errKVConflict
			}
		}
		return false, 0, nil
	}
	// A Txn that changed nothing (only deletes of absent keys, as when
	// two nodes prune the same events) makes no revision: the header then
	// names the latest one, someone else's commit, which must not be
	// taken for ours (rev 0).
	changed := false
	for i, op := range ops {
		if op.kind != opDelete || resp.Responses[i].GetResponseDeleteRange().GetDeleted() > 0 {
			changed = true
			break
		}
	}
	if !changed {
		return true, 0, nil
	}
	return true, resp.Header.Revision, nil
}

// Scan reads the range in pages of etcdScanPage keys, all at the revision
// of the first page, so that a scan sees one consistent state.
func (e *etcdKV) Scan(prefix, start []byte, fn func(key, value []byte) bool) error {
	if e.closed.Load() {
		return ErrClosed
	}
	from := prefix
	if start != nil && bytes.Compare(start, prefix) > 0 {
		from = start
	}
	end := prefixEnd(prefix)
	endKey := prefixEnd([]byte(e.prefix)) // the empty prefix: everything of ours
	if end != nil {
		endKey = []byte(e.key(end))
	}
	next := e.key(from)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(string(endKey)), clientv3.WithLimit(etcdScanPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		ctx, cancel := e.callCtx()
		resp, err := e.cli.Get(ctx, next, opts...)
		cancel()
		if err != nil {
			return e.fail("scan", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if !fn(kv.Key[len(e.prefix):], kv.Value) {
				return nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		next = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// count is the number of keys with the prefix, read as one linearizable
// count-only range (no values cross the network).
func (e *etcdKV) count(prefix []byte) (int, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	end := prefixEnd(prefix)
	endKey := prefixEnd([]byte(e.prefix))
	if end != nil {
		endKey = []byte(e.key(end))
	}
	ctx, cancel := e.callCtx()
	defer cancel()
	resp, err := e.cli.Get(ctx, e.key(prefix), clientv3.WithRange(string(endKey)), clientv3.WithCountOnly())
	if err != nil {
		return 0, e.fail("count", err)
	}
	return int(resp.Count), nil
}

// Watch registers fn; the first registration starts watching etcd from the
// revision the KV was opened at.
func (e *etcdKV) Watch(fn func(keys [][]byte)) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	var ws []func(keys [][]byte)
	if cur := e.watchers.Load(); cur != nil {
		ws = append(ws, *cur...)
	}
	ws = append(ws, fn)
	e.watchers.Store(&ws)
	if !e.started && !e.closed.Load() {
		e.started = true
		e.startWatch(e.openRev + 1)
		if e.live != nil {
			e.live.start()
			select { // the first fresh tick, so that the store admits at once
			case <-e.live.freshCh:
			case <-time.After(e.timeout):
			}
		}
	}
}

// startWatch starts the watch loop from revision from; the caller holds wmu.
func (e *etcdKV) startWatch(from int64) {
	e.watching.Store(true)
	ctx, cancel := context.WithCancel(e.ctx)
	e.loopCancel, e.loopDone = cancel, make(chan struct{})
	go e.watchLoop(ctx, from)
}

// stopWatch stops the watch loop (tests: to make it miss commits).
func (e *etcdKV) stopWatch() {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.loopCancel != nil {
		e.loopCancel()
		<-e.loopDone
	}
}

// restartWatch replaces the watch loop by a new one that resumes after the
// last revision the store applied (liveness.go's watchdog: the watch
// stopped delivering although etcd answers). It gives up, leaving the node
// failed closed, when the old loop does not end within the call timeout
// (it is inside a store callback): two loops would deliver out of order.
func (e *etcdKV) restartWatch() bool {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.closed.Load() || e.loopCancel == nil || e.live == nil {
		return false
	}
	e.loopCancel()
	select {
	case <-e.loopDone:
	case <-time.After(e.timeout):
		return false
	}
	e.startWatch(e.live.applied.Load() + 1)
	return true
}

// WatchReset registers fn to be called when the watch may have missed
// commits (compaction): once when that is found, and again once the watch
// has resumed from the current revision. Until the second call the store
// must not trust what it derived from earlier notifications.
func (e *etcdKV) WatchReset(fn func()) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	var rs []func()
	if cur := e.resets.Load(); cur != nil {
		rs = append(rs, *cur...)
	}
	rs = append(rs, fn)
	e.resets.Store(&rs)
}

func (e *etcdKV) reset() {
	if rs := e.resets.Load(); rs != nil {
		for _, r := range *rs {
			r()
		}
	}
}

// etcdWatchBackoff is the pause before a watch that ended is opened again.
const etcdWatchBackoff = 200 * time.Millisecond

func (e *etcdKV) watchLoop(ctx context.Context, from int64) {
	defer close(e.loopDone)
	for ctx.Err() == nil {
		next, compacted := e.watch(ctx, from)
		if compacted {
			e.log.Errorf("etcd watch: revisions %d… were compacted before they were delivered; reloading", from)
			e.reset()
			cur, err := e.currentRevision()
			for err != nil && ctx.Err() == nil {
				e.log.Errorf("etcd watch: %v; retrying", err)
				select {
				case <-ctx.Done():
				case <-time.After(etcdWatchBackoff):
				}
				cur, err = e.currentRevision()
			}
			if ctx.Err() != nil {
				return
			}
			e.omu.Lock()
			clear(e.own)
			e.omu.Unlock()
			from = cur + 1
			// The watch from cur+1 misses nothing committed after cur;
			// what was committed up to cur the store reads afresh now.
			e.reset()
			if e.live != nil {
				e.live.advance(cur, true)
			}
			continue
		}
		from = next
		select {
		case <-ctx.Done():
		case <-time.After(etcdWatchBackoff):
		}
	}
}

func (e *etcdKV) currentRevision() (int64, error) {
	ctx, cancel := e.callCtx()
	defer cancel()
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, e.fail("revision", err)
	}
	return resp.Header.Revision, nil
}

// watch delivers commits from revision from until the watch ends, and
// returns the revision to resume at, or compacted.
func (e *etcdKV) watch(ctx context.Context, from int64) (next int64, compacted bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Progress notifications move the resume point of an idle watch
	// forward, so that resuming it after a break does not run into
	// compaction (and a needless reset).
	ch := e.cli.Watch(clientv3.WithRequireLeader(ctx), e.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithProgressNotify())
	next = from
	stream, stalled := e.streams.Add(1), false
	for resp := range ch {
		if st := e.stall.Load(); stalled || st == -1 || st == stream {
			stalled = true // test hook: this stream delivers nothing more
			continue
		}
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return next, true
		}
		if err := resp.Err(); err != nil {
			e.log.Errorf("etcd watch: %v; resuming at revision %d", err, next)
			return next, false
		}
		if resp.IsProgressNotify() {
			next = max(next, resp.Header.Revision+1)
			if e.live != nil {
				e.live.advance(resp.Header.Revision, false)
			}
			continue
		}
		e.deliver(resp.Events)
		if len(resp.Events) > 0 {
			next = resp.Events[len(resp.Events)-1].Kv.ModRevision + 1
		}
	}
	return next, false
}

// deliver calls the watchers once per revision (one commit) in events,
// skipping this node's commits, which Apply delivered already.
func (e *etcdKV) deliver(events []*clientv3.Event) {
	ws := e.watchers.Load()
	for i := 0; i < len(events); {
		rev := events[i].Kv.ModRevision
		j := i
		var keys [][]byte
		for ; j < len(events) && events[j].Kv.ModRevision == rev; j++ {
			ev := events[j]
			k := ev.Kv.Key[len(e.prefix):]
			if bytes.HasPrefix(k, []byte(nodesPrefix)) { // liveness records, not the store's
				if e.live != nil {
					e.live.observe(string(ev.Kv.Key), ev.Kv.Value, rev, ev.Type == mvccpb.DELETE)
				}
				continue
			}
			if ev.Type == mvccpb.PUT || ev.Type == mvccpb.DELETE {
				keys = append(keys, bytes.Clone(k))
			}
		}
		i = j
		e.inflight.Lock() // commits in flight record their revisions first
		e.omu.Lock()
		_, mine := e.own[rev]
		for r := range e.own {
			if r <= rev {
				delete(e.own, r)
			}
		}
		e.omu.Unlock()
		e.inflight.Unlock()
		if !mine && ws != nil && len(keys) > 0 {
			for _, w := range *ws {
				w(keys)
			}
		}
		if e.live != nil { // the store has applied rev: publish it
			e.live.advance(rev, !mine && mayEnd(keys))
		}
	}
}

// mayEnd reports whether a commit that changed keys can be one another
// node waits for (Store.commit awaits only commits that end a secret or
// write a tenant record). Usage, events and meta records never are: another
// node's usage flush needs no acknowledgement of its own (the next tick
// publishes it), which keeps the acknowledgement puts from doubling the
// writes of every flush.
func mayEnd(keys [][]byte) bool {
	for _, k := range keys {
		if !keyHasPrefix(k, pKeyUsage) && !keyHasPrefix(k, pEvent) && !keyHasPrefix(k, pMeta) {
			return true
		}
	}
	return false
}

func keyHasPrefix(k []byte, p string) bool { return len(k) >= len(p) && string(k[:len(p)]) == p }

// Close stops the watch and closes the client. Later calls get ErrClosed.
func (e *etcdKV) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	if e.live != nil {
		e.live.stop()
	}
	e.cancel()
	e.wmu.Lock()
	done := e.loopDone
	e.wmu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-time.After(defaultCloseWait):
			e.log.Errorf("etcd close: the watch did not stop within %v", defaultCloseWait)
		}
	}
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// watchResetter is implemented by a KV whose watch can miss commits.
type watchResetter interface{ WatchReset(fn func()) }

// keyCounter is implemented by a KV that counts a range without reading it.
type keyCounter interface {
	count(prefix []byte) (int, error)
}

// batchLimiter is implemented by a KV whose batches are bounded; callers
// that may split their writes keep each batch within ops and bytes.
type batchLimiter interface{ batchLimits() (ops, bytes int) }

var (
	_ KV            = (*etcdKV)(nil)
	_ watchResetter = (*etcdKV)(nil)
	_ batchLimiter  = (*etcdKV)(nil)
	_ keyCounter    = (*etcdKV)(nil)
	_ livenessKV    = (*etcdKV)(nil)
)
