package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrClosed is returned by every KV operation after Close. The gateway maps it
// (like any other storage error) to 503: it fails closed.
var ErrClosed = errors.New("store: closed")

// ErrUnavailable wraps the errors of writes refused after the KV failed
// (Pebble reported a fatal error): they answer 503 until a restart.
var ErrUnavailable = errors.New("store: unavailable")

// errKVNotFound is the KV's own "no such key"; the domain layer turns it into
// a typed not-found error naming what was missing.
var errKVNotFound = errors.New("store: kv: not found")

// errKVConflict is Apply's answer to a batch whose expectation (Batch.Expect)
// did not hold when it would have committed: nothing was written, and the
// caller may read again and retry.
var errKVConflict = errors.New("store: kv: an expected record changed")

// KV is the small ordered key-value interface the domain logic is written
// against. Pebble is the embedded implementation; a networked one (etcd)
// would deliver Watch notifications for writes made by other nodes too.
type KV interface {
	// Get returns a copy of the value stored under key, or errKVNotFound.
	Get(key []byte) ([]byte, error)
	// Apply writes the batch atomically. With sync it is durable before
	// Apply returns. Watchers are told the changed keys after the commit.
	// A batch with expectations (Batch.Expect) commits only if every one
	// holds at the commit, atomically with it, against every writer of the
	// KV (other nodes' included); otherwise Apply writes nothing and
	// returns errKVConflict.
	// Merge operations are combined with the stored value by the KV's
	// MergeFunc; a backend without native merges (etcd) applies them
	// read-modify-write inside the batch, as pebbleKV does for old stores.
	Apply(b *Batch, sync bool) error
	// Scan calls fn for each key with the prefix, in key order, starting at
	// start (inclusive; nil means the beginning of the prefix), until fn
	// returns false. Key and value are only valid during the call.
	Scan(prefix, start []byte, fn func(key, value []byte) bool) error
	// Watch registers fn to be called, synchronously after each commit, with
	// the keys that batch changed.
	Watch(fn func(keys [][]byte))
	Close() error
}

// MergeFunc combines two values of a key written with Batch.Merge: older is
// the value (or operand) written first, nil when there is none. It must be
// associative and must not fail, because Pebble also calls it inside
// compactions; it returns a new slice.
type MergeFunc func(key, older, newer []byte) []byte

// Batch collects writes for KV.Apply.
type Batch struct {
	ops     []batchOp
	expects []batchExpect
}

// batchExpect is a condition of a batch: key holds value, or is absent.
type batchExpect struct {
	key, value []byte
	absent     bool
}

type opKind uint8

const (
	opSet opKind = iota
	opDelete
	opMerge
)

type batchOp struct {
	key, value []byte
	kind       opKind
}

// Set records a put of value under key.
func (b *Batch) Set(key, value []byte) { b.ops = append(b.ops, batchOp{key: key, value: value}) }

// Delete records a delete of key.
func (b *Batch) Delete(key []byte) { b.ops = append(b.ops, batchOp{key: key, kind: opDelete}) }

// Merge records operand to be combined with key's current value by the KV's
// MergeFunc. It is a blind write: the KV does not read the key to apply it
// (except on stores created before merges existed, see openPebble).
func (b *Batch) Merge(key, operand []byte) {
	b.ops = append(b.ops, batchOp{key: key, value: operand, kind: opMerge})
}

// Expect makes the batch conditional on key holding value when it commits
// (nil value: on key being absent; an empty non-nil value is a present,
// empty record, as Get returns it). It is how a read-check-write stays
// atomic when other nodes write the same KV: read, decide, and commit only
// if what was read is unchanged (Apply's errKVConflict otherwise).
func (b *Batch) Expect(key, value []byte) {
	b.expects = append(b.expects, batchExpect{key: key, value: value, absent: value == nil})
}

// Len is the number of recorded operations (expectations not included).
func (b *Batch) Len() int { return len(b.ops) }

// pebbleKV is the embedded KV.
//
// Every call counts itself in inflight and checks closed, so that Close
// never races an operation (Pebble panics on use after Close) and yet never
// waits on one forever: it gives up after closeWait (PITFALLS 11).
//
// Every call into Pebble runs under call, which recovers a panic: Pebble's
// Fatalf (our pebbleLogger panics in the calling goroutine) and the panics
// of its commit pipeline after a failed WAL write (PITFALLS 22). The first
// one marks the KV failed: from then on writes are refused without reaching
// Pebble (whose commit pipeline is wedged after such an error), reads go on.
type pebbleKV struct {
	db *pebble.DB

	inflight  atomic.Int64
	closed    atomic.Bool
	closeWait time.Duration

	wmu      sync.Mutex
	watchers atomic.Pointer[[]func(keys [][]byte)]

	// amu makes a batch's expectations atomic with its commit: a batch
	// with expectations holds it exclusively from its reads to its commit,
	// every other batch shares it (and so still commits concurrently with
	// the others, in Pebble's group commit).
	amu sync.RWMutex

	merge MergeFunc
	// emulateMerge: the store was created with Pebble's default merger,
	// whose name Pebble pins in the store, so merges are applied as
	// read-modify-write inside Apply instead.
	emulateMerge bool

	disk    *diskGuard // nil: no free-space check
	log     Logger
	failure atomic.Pointer[kvFailure]

	opened     atomic.Bool // pebble.Open has returned
	openFailed chan error  // a flush failed with ENOSPC during pebble.Open
}

// kvFailure is the first fatal error Pebble reported, as writes get it:
// insufficient_storage when it was ENOSPC, ErrUnavailable otherwise.
type kvFailure struct{ broken error }

// defaultCloseWait bounds Close: operations still running and Pebble's own
// Close each get at most this long, so a stop (SIGTERM) always ends.
const defaultCloseWait = 5 * time.Second

// mergerName is recorded by Pebble in every store and sstable it writes; a
// store can only be opened with the merger it was created with.
const mergerName = "keygate.merge.v1"

// pebbleConfig configures openPebbleConfig.
type pebbleConfig struct {
	Dir        string
	FS         vfs.FS // nil: the OS filesystem
	Logger     Logger
	BlockCache int64
	Merge      MergeFunc // not nil: combines the values of Batch.Merge writes
	// DiskReserve is the free space writes must leave on the filesystem
	// (0: DefaultDiskReserve; negative: no check).
	DiskReserve int64
	// Now is the clock of the log throttle (nil: time.Now).
	Now func() time.Time
	// ReadOnly opens an existing store for reading only (storage copy);
	// it still takes the store's lock.
	ReadOnly bool
}

// openPebble opens (creating if needed) a Pebble database in dir with the
// default disk reserve. fs may be nil for the OS filesystem; tests pass
// vfs.NewMem(). merge (not nil) combines the values of Batch.Merge writes.
func openPebble(dir string, fs vfs.FS, logger Logger, blockCache int64, merge MergeFunc) (*pebbleKV, error) {
	return openPebbleConfig(pebbleConfig{Dir: dir, FS: fs, Logger: logger, BlockCache: blockCache, Merge: merge})
}

func openPebbleConfig(cfg pebbleConfig) (*pebbleKV, error) {
	dir, fs := cfg.Dir, cfg.FS
	if fs == nil {
		fs = vfs.Default
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	kv := &pebbleKV{merge: cfg.Merge, closeWait: defaultCloseWait, log: cfg.Logger}
	kv.disk = newDiskGuard(fs, dir, cfg.DiskReserve, cfg.Logger)
	if err := kv.disk.checkOpen(); err != nil {
		return nil, err // names dir already
	}
	plog := &pebbleLogger{l: cfg.Logger, kv: kv, throttle: newLogThrottle(cfg.Now, pebbleLogPeriod)}
	opts := &pebble.Options{Logger: plog, FS: fs, ReadOnly: cfg.ReadOnly, EventListener: &pebble.EventListener{
		BackgroundError: plog.backgroundError,
	}}
	prev, err := storeMerger(dir, fs)
	if err != nil {
		return nil, fmt.Errorf("open pebble at %s: %w", dir, err)
	}
	switch prev {
	case "", mergerName:
		opts.Merger = &pebble.Merger{Name: mergerName, Merge: kv.pebbleMerge}
	case pebble.DefaultMerger.Name:
		kv.emulateMerge = true // a store from before merges existed
	default:
		return nil, fmt.Errorf("open pebble at %s: store was written with merger %q, not keygate's", dir, prev)
	}
	// A block cache that holds the index blocks of a large key set, and
	// bloom filters so that unknown secrets (garbage, rotated-out keys)
	// rarely cost a disk read: Pebble's defaults (8 MiB, no filters) made a
	// cache miss cost ~50 µs with 1M keys.
	cache := pebble.NewCache(cfg.BlockCache)
	defer cache.Unref()
	opts.Cache = cache
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := kv.open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble at %s: %w", dir, err)
	}
	kv.db = db
	return kv, nil
}

// open runs pebble.Open, which flushes the memtables recovered from the WAL
// before it returns and retries a failed flush forever: on a full disk it
// would never return, and the server would neither serve nor stop. A flush
// failing with ENOSPC during the open (backgroundError reports it on
// openFailed) therefore ends the wait with an error; the abandoned Open
// closes its DB should it ever finish.
func (p *pebbleKV) open(dir string, opts *pebble.Options) (*pebble.DB, error) {
	type result struct {
		db  *pebble.DB
		err error
	}
	p.openFailed = make(chan error, 1)
	done := make(chan result, 1)
	var abandoned atomic.Bool
	go func() {
		var db *pebble.DB
		err := p.call(func() error {
			var err error
			db, err = pebble.Open(dir, opts)
			return err
		})
		if err == nil && abandoned.Load() {
			_ = p.call(db.Close)
			return
		}
		done <- result{db, err}
	}()
	select {
	case r := <-done:
		p.opened.Store(true)
		return r.db, r.err
	case err := <-p.openFailed:
		abandoned.Store(true)
		select { // it may have finished meanwhile
		case r := <-done:
			if r.err == nil {
				_ = p.call(r.db.Close)
			}
		default:
		}
		return nil, fmt.Errorf("writing the data recovered from the WAL failed: %w: free some space and start again", err)
	}
}

// storeMerger returns the merger name recorded in an existing store's
// latest OPTIONS file, or "" when dir holds no store yet.
func storeMerger(dir string, fs vfs.FS) (string, error) {
	if _, err := fs.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	desc, err := pebble.Peek(dir, fs)
	if err != nil {
		return "", fmt.Errorf("peek: %w", err)
	}
	if !desc.Exists || desc.OptionsFilename == "" {
		return "", nil
	}
	f, err := fs.Open(desc.OptionsFilename)
	if err != nil {
		return "", fmt.Errorf("read options: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("read options: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "merger="); ok {
			return name, nil
		}
	}
	return "", nil
}

// pebbleMerge adapts the MergeFunc to Pebble's merger. Pebble hands it the
// operands of one key newest or oldest first; values are only valid during
// the call, which MergeFunc's fresh result takes care of.
func (p *pebbleKV) pebbleMerge(key, value []byte) (pebble.ValueMerger, error) {
	return &valueMerger{key: bytes.Clone(key), f: p.merge, cur: bytes.Clone(value)}, nil
}

type valueMerger struct {
	key []byte
	f   MergeFunc
	cur []byte
}

func (m *valueMerger) MergeNewer(value []byte) error {
	m.cur = m.f(m.key, m.cur, value)
	return nil
}

func (m *valueMerger) MergeOlder(value []byte) error {
	m.cur = m.f(m.key, value, m.cur)
	return nil
}

func (m *valueMerger) Finish(includesBase bool) ([]byte, io.Closer, error) {
	return m.cur, nil, nil
}

// enter counts an operation in; it fails once Close has begun.
func (p *pebbleKV) enter() error {
	p.inflight.Add(1)
	if p.closed.Load() {
		p.inflight.Add(-1)
		return ErrClosed
	}
	return nil
}

func (p *pebbleKV) exit() { p.inflight.Add(-1) }

// call runs fn, which calls into Pebble, and turns a panic into an error
// that marks the KV failed. pebbleLogger.Fatalf panics only when call is on
// its goroutine's stack (see guarded).
func (p *pebbleKV) call(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = p.fail(fmt.Sprint(r))
		}
	}()
	return fn()
}

// callFrame is the name of call in stack traces.
var callFrame = reflect.TypeOf(pebbleKV{}).PkgPath() + ".(*pebbleKV).call"

// guarded reports whether the current goroutine runs inside call, whose
// recover will catch a panic.
func guarded() bool {
	pcs := make([]uintptr, 256)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		if f.Function == callFrame {
			return true
		}
		if !more {
			return false
		}
	}
}

// fail records Pebble's first fatal error and returns the error writes get
// from now on.
func (p *pebbleKV) fail(msg string) error {
	f := &kvFailure{}
	if strings.Contains(msg, syscall.ENOSPC.Error()) {
		f.broken = &Error{Kind: KindInsufficientStorage, Code: "insufficient_storage",
			Message: "the key store ran out of disk space: changes are refused until keygate is restarted with space freed (reads keep working)"}
	} else {
		f.broken = fmt.Errorf("%w: pebble failed: %s", ErrUnavailable, msg)
	}
	if p.failure.CompareAndSwap(nil, f) && p.log != nil {
		p.log.Errorf("store: pebble failed: %s: writes are refused until keygate is restarted; reads go on", msg)
	}
	return p.failure.Load().broken
}

// failed is the error writes get after a fatal Pebble error, or nil.
func (p *pebbleKV) failed() error {
	if f := p.failure.Load(); f != nil {
		return f.broken
	}
	return nil
}

func (p *pebbleKV) Get(key []byte) ([]byte, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.exit()
	var out []byte
	err := p.call(func() error {
		v, closer, err := p.db.Get(key)
		if err != nil {
			return err
		}
		out = bytes.Clone(v)
		return closer.Close()
	})
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, errKVNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pebble get: %w", err)
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
}

func (p *pebbleKV) Apply(b *Batch, sync bool) error {
	if b.Len() == 0 {
		return nil
	}
	if err := p.enter(); err != nil {
		return err
	}
	keys, err := p.apply(b, sync)
	p.exit()
	if err != nil {
		return err
	}
	if ws := p.watchers.Load(); ws != nil {
		for _, w := range *ws {
			w(keys)
		}
	}
	return nil
}

// apply checks that the KV can take the write (no earlier fatal error,
// enough free disk space) and commits it.
func (p *pebbleKV) apply(b *Batch, sync bool) ([][]byte, error) {
	if err := p.failed(); err != nil {
		return nil, err
	}
	if err := p.disk.check(b.size()); err != nil {
		return nil, err
	}
	if len(b.expects) > 0 {
		p.amu.Lock()
		defer p.amu.Unlock()
		if err := p.checkExpects(b.expects); err != nil {
			return nil, err
		}
	} else {
		p.amu.RLock()
		defer p.amu.RUnlock()
	}
	keys := make([][]byte, 0, len(b.ops))
	err := p.call(func() error {
		var pb *pebble.Batch
		if p.emulateMerge {
			pb = p.db.NewIndexedBatch() // reads see the batch's own earlier writes
		} else {
			pb = p.db.NewBatch()
		}
		defer pb.Close()
		for _, op := range b.ops {
			var err error
			switch op.kind {
			case opDelete:
				err = pb.Delete(op.key, nil)
			case opMerge:
				if p.emulateMerge {
					err = p.emulatedMerge(pb, op.key, op.value)
				} else {
					err = pb.Merge(op.key, op.value, nil)
				}
			default:
				err = pb.Set(op.key, op.value, nil)
			}
			if err != nil {
				return fmt.Errorf("pebble batch: %w", err)
			}
			keys = append(keys, op.key)
		}
		opts := pebble.NoSync
		if sync {
			opts = pebble.Sync
		}
		if err := p.db.Apply(pb, opts); err != nil {
			return fmt.Errorf("pebble apply: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// checkExpects reads the expected keys; the caller holds amu exclusively,
// so no other batch commits until this one has.
func (p *pebbleKV) checkExpects(exps []batchExpect) error {
	for _, x := range exps {
		var cur []byte
		err := p.call(func() error {
			v, closer, err := p.db.Get(x.key)
			if err != nil {
				return err
			}
			cur = bytes.Clone(v)
			return closer.Close()
		})
		switch {
		case errors.Is(err, pebble.ErrNotFound):
			if !x.absent {
				return errKVConflict
			}
		case err != nil:
			return fmt.Errorf("pebble get: %w", err)
		case x.absent || !bytes.Equal(cur, x.value):
			return errKVConflict
		}
	}
	return nil
}

// emulatedMerge is read-modify-write. Merges come only from usage flushes,
// which the store serialises (Store.fmu); the only other writes of usage
// keys are a key delete's, and a flush sweeps what it wrote for a key
// deleted meanwhile (Store.sweepDeleted), so a merge never loses counts.
func (p *pebbleKV) emulatedMerge(pb *pebble.Batch, key, operand []byte) error {
	var old []byte
	v, closer, err := pb.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return err
	default:
		old = bytes.Clone(v)
		_ = closer.Close()
	}
	return pb.Set(key, p.merge(key, old, operand), nil)
}

func (p *pebbleKV) Scan(prefix, start []byte, fn func(key, value []byte) bool) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	lower := prefix
	if start != nil && bytes.Compare(start, prefix) > 0 {
		lower = start
	}
	// A panic in fn is the caller's, not Pebble's: it is carried past call
	// and raised again, so that it does not mark the KV failed.
	var fnPanic any
	visit := func(k, v []byte) (more bool) {
		defer func() {
			if r := recover(); r != nil {
				fnPanic, more = r, false
			}
		}()
		return fn(k, v)
	}
	err := p.call(func() error {
		it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return fmt.Errorf("pebble iter: %w", err)
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return fmt.Errorf("pebble iter value: %w", err)
			}
			if !visit(it.Key(), v) {
				break
			}
		}
		if err := it.Error(); err != nil {
			return fmt.Errorf("pebble iter: %w", err)
		}
		return nil
	})
	if fnPanic != nil {
		panic(fnPanic)
	}
	return err
}

func (p *pebbleKV) Watch(fn func(keys [][]byte)) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	var ws []func(keys [][]byte)
	if cur := p.watchers.Load(); cur != nil {
		ws = append(ws, *cur...)
	}
	ws = append(ws, fn)
	p.watchers.Store(&ws)
}

// Close waits (at most closeWait) for running operations, then closes
// Pebble (again at most closeWait). When either wait runs out it returns an
// error and leaves Pebble open: the process is about to exit, and the next
// open recovers from the WAL as after a crash. Later calls get ErrClosed.
func (p *pebbleKV) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	deadline := time.Now().Add(p.closeWait)
	for n := p.inflight.Load(); n > 0; n = p.inflight.Load() {
		if time.Now().After(deadline) {
			return fmt.Errorf("close pebble: %d operations still running after %v; left open", n, p.closeWait)
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- p.call(p.db.Close) }()
	t := time.NewTimer(p.closeWait)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("close pebble: %w", err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("close pebble: not closed after %v; left to the process exit", p.closeWait)
	}
}

// prefixEnd is the smallest key greater than every key with the prefix.
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// Logger receives the store's (and Pebble's) diagnostics. The Caddy glue
// passes a zap-backed one.
type Logger interface {
	Infof(format string, args ...any)
	Errorf(format string, args ...any)
}

type nopLogger struct{}

func (nopLogger) Infof(string, ...any)  {}
func (nopLogger) Errorf(string, ...any) {}

// pebbleLogPeriod is how often a repeated Pebble error line is logged.
const pebbleLogPeriod = 10 * time.Second

// backgroundBackoff slows Pebble's retries of a flush or compaction that
// failed for lack of disk space: Pebble retries at once, which on a full
// disk is a busy loop (a core and thousands of log lines a second).
const backgroundBackoff = 500 * time.Millisecond

// pebbleLogger adapts Logger to Pebble's. Pebble's default Fatalf calls
// os.Exit, which would take the whole gateway down (PITFALLS 10). Ours
// marks the KV failed and then: on a goroutine that runs inside
// pebbleKV.call (a write or read of ours) it panics, and call recovers; on
// one of Pebble's own background goroutines, where a panic would end the
// process, it parks that goroutine for good, leaving Pebble's files as they
// are for the next open to recover. Repeated error lines are rate-limited.
type pebbleLogger struct {
	l        Logger
	kv       *pebbleKV    // nil: nothing to mark failed
	throttle *logThrottle // nil: no rate limit
}

func (p *pebbleLogger) Infof(format string, args ...any) { p.l.Infof(format, args...) }

func (p *pebbleLogger) Errorf(format string, args ...any) {
	if p.throttle != nil {
		ok, suppressed := p.throttle.allow(format)
		if !ok {
			return
		}
		if suppressed > 0 {
			p.l.Errorf(format+" (%d similar lines suppressed in the last %v)", append(args, suppressed, p.throttle.period)...)
			return
		}
	}
	p.l.Errorf(format, args...)
}

func (p *pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Errorf("pebble FATAL: %s", msg)
	if p.kv != nil {
		_ = p.kv.fail(msg)
		if !guarded() {
			p.l.Errorf("pebble: a background goroutine stopped after a fatal error; restart keygate to recover")
			select {} // a panic here would end the process
		}
	}
	panic("pebble: " + msg)
}

// backgroundError is Pebble's EventListener.BackgroundError: a failed flush
// or compaction, which Pebble retries at once. Logged (rate-limited); out of
// disk space, the retry is slowed down.
func (p *pebbleLogger) backgroundError(err error) {
	p.Errorf("pebble: background error: %s", err)
	if errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), syscall.ENOSPC.Error()) {
		if p.kv != nil && !p.kv.opened.Load() {
			select {
			case p.kv.openFailed <- err:
			default:
			}
		}
		time.Sleep(backgroundBackoff)
	}
}

var _ KV = (*pebbleKV)(nil)
