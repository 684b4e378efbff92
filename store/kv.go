package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrClosed is returned by every KV operation after Close. The gateway maps it
// (like any other storage error) to 503: it fails closed.
var ErrClosed = errors.New("store: closed")

// errKVNotFound is the KV's own "no such key"; the domain layer turns it into
// a typed not-found error naming what was missing.
var errKVNotFound = errors.New("store: kv: not found")

// KV is the small ordered key-value interface the domain logic is written
// against. Pebble is the embedded implementation; a networked one (etcd)
// would deliver Watch notifications for writes made by other nodes too.
type KV interface {
	// Get returns a copy of the value stored under key, or errKVNotFound.
	Get(key []byte) ([]byte, error)
	// Apply writes the batch atomically. With sync it is durable before
	// Apply returns. Watchers are told the changed keys after the commit.
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
	ops []batchOp
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

// Len is the number of recorded operations.
func (b *Batch) Len() int { return len(b.ops) }

// pebbleKV is the embedded KV. Every call holds mu for reading so that Close
// (which takes it for writing) never races an operation: Pebble panics on use
// after Close.
type pebbleKV struct {
	mu       sync.RWMutex
	db       *pebble.DB
	closed   bool
	watchers []func(keys [][]byte)
	merge    MergeFunc
	// emulateMerge: the store was created with Pebble's default merger,
	// whose name Pebble pins in the store, so merges are applied as
	// read-modify-write inside Apply instead.
	emulateMerge bool
}

// mergerName is recorded by Pebble in every store and sstable it writes; a
// store can only be opened with the merger it was created with.
const mergerName = "keygate.merge.v1"

// openPebble opens (creating if needed) a Pebble database in dir. fs may be
// nil for the OS filesystem; tests pass vfs.NewMem(). merge (not nil)
// combines the values of Batch.Merge writes.
func openPebble(dir string, fs vfs.FS, logger Logger, blockCache int64, merge MergeFunc) (*pebbleKV, error) {
	if fs == nil {
		fs = vfs.Default
	}
	opts := &pebble.Options{Logger: pebbleLogger{logger}, FS: fs}
	kv := &pebbleKV{merge: merge}
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
	cache := pebble.NewCache(blockCache)
	defer cache.Unref()
	opts.Cache = cache
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble at %s: %w", dir, err)
	}
	kv.db = db
	return kv, nil
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

func (p *pebbleKV) Get(key []byte) ([]byte, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, ErrClosed
	}
	v, closer, err := p.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, errKVNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pebble get: %w", err)
	}
	out := bytes.Clone(v)
	if out == nil {
		out = []byte{}
	}
	_ = closer.Close()
	return out, nil
}

func (p *pebbleKV) Apply(b *Batch, sync bool) error {
	if b.Len() == 0 {
		return nil
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	var pb *pebble.Batch
	if p.emulateMerge {
		pb = p.db.NewIndexedBatch() // reads see the batch's own earlier writes
	} else {
		pb = p.db.NewBatch()
	}
	keys := make([][]byte, 0, len(b.ops))
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
			_ = pb.Close()
			p.mu.RUnlock()
			return fmt.Errorf("pebble batch: %w", err)
		}
		keys = append(keys, op.key)
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	err := p.db.Apply(pb, opts)
	_ = pb.Close()
	watchers := p.watchers
	p.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("pebble apply: %w", err)
	}
	for _, w := range watchers {
		w(keys)
	}
	return nil
}

// emulatedMerge is read-modify-write: the store serializes its writers, so
// nothing else writes the key between the read and the commit.
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
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	lower := prefix
	if start != nil && bytes.Compare(start, prefix) > 0 {
		lower = start
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("pebble iter: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("pebble iter value: %w", err)
		}
		if !fn(it.Key(), v) {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("pebble iter: %w", err)
	}
	return nil
}

func (p *pebbleKV) Watch(fn func(keys [][]byte)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watchers = append(p.watchers, fn)
}

func (p *pebbleKV) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if err := p.db.Close(); err != nil {
		return fmt.Errorf("close pebble: %w", err)
	}
	return nil
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

// pebbleLogger adapts Logger to Pebble's. Pebble's default Fatalf calls
// os.Exit, which would take the whole gateway down; ours logs and panics,
// which Pebble only does on corruption it cannot continue from.
type pebbleLogger struct{ l Logger }

func (p pebbleLogger) Infof(format string, args ...any)  { p.l.Infof(format, args...) }
func (p pebbleLogger) Errorf(format string, args ...any) { p.l.Errorf(format, args...) }
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Errorf("FATAL: "+format, args...)
	panic(fmt.Sprintf("pebble: "+format, args...))
}

var _ KV = (*pebbleKV)(nil)
