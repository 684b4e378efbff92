package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// metaCopying marks a target that a storage copy is still filling: Open
// refuses it, so that a copy that failed half-way is never served as a
// store that lost records.
const metaCopying = pMeta + "copy_incomplete"

// OpenPebbleReadOnly opens the existing Pebble store in dir for reading
// (the source of a storage copy). It takes the store's lock, so it fails
// while a keygate server has the store open.
func OpenPebbleReadOnly(dir string, logger Logger) (KV, error) {
	if logger == nil {
		logger = nopLogger{}
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("pebble store %s: %w", dir, err)
	}
	desc, err := pebble.Peek(dir, vfs.Default)
	if err != nil || !desc.Exists {
		return nil, fmt.Errorf("%s holds no keygate store (%v)", dir, err)
	}
	kv, err := openPebbleConfig(pebbleConfig{Dir: dir, Logger: logger, BlockCache: 64 << 20, Merge: mergeValues,
		DiskReserve: -1, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%w (is a keygate server running on it? stop it first: the copy is offline)", err)
	}
	return kv, nil
}

// CopyStats counts what CopyKV wrote.
type CopyStats struct {
	Records int
	Bytes   int64
}

// CopyKV copies every record of src into dst, as they are: tenants,
// settings, users, tokens, groups, keys with their secrets' hashes, grace
// secrets, events and usage (merged), so every key and token keeps
// working with the same pepper. dst must hold nothing. The copy is not one
// transaction: dst is marked incomplete (metaCopying) before the first
// record and unmarked with the last batch, and Open refuses a marked
// store, so a copy that failed must be started again on an emptied
// target.
func CopyKV(dst, src KV) (CopyStats, error) {
	var st CopyStats
	empty := true
	if err := dst.Scan(nil, nil, func(key, _ []byte) bool { empty = false; return false }); err != nil {
		return st, fmt.Errorf("read the target: %w", err)
	}
	if !empty {
		return st, errors.New("the target already holds data: refusing to copy over it (choose another prefix, or delete the old data first)")
	}
	maxOps, maxBytes := etcdDefaultMaxTxnOps, etcdDefaultMaxRequest
	if l, ok := dst.(batchLimiter); ok {
		maxOps, maxBytes = l.batchLimits()
	}
	var mark Batch
	mark.Set([]byte(metaCopying), []byte("1"))
	if err := dst.Apply(&mark, true); err != nil {
		return st, fmt.Errorf("mark the target: %w", err)
	}
	var b Batch
	size := 0
	var werr error
	flush := func() bool {
		if b.Len() == 0 {
			return true
		}
		if err := dst.Apply(&b, true); err != nil {
			werr = fmt.Errorf("write records (%d copied so far): %w", st.Records, err)
			return false
		}
		b, size = Batch{}, 0
		return true
	}
	err := src.Scan(nil, nil, func(key, value []byte) bool {
		if bytes.Equal(key, []byte(metaCopying)) {
			return true
		}
		n := len(key) + len(value) + 16
		if b.Len() > 0 && (b.Len()+1 >= maxOps || size+n > maxBytes) && !flush() {
			return false
		}
		b.Set(bytes.Clone(key), bytes.Clone(value))
		size += n
		st.Records++
		st.Bytes += int64(len(key) + len(value))
		return true
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return st, fmt.Errorf("copy: %w; the target is marked incomplete: empty it before copying again", err)
	}
	b.Delete([]byte(metaCopying)) // with the last records
	if !flush() {
		return st, fmt.Errorf("copy: %w; the target is marked incomplete: empty it before copying again", werr)
	}
	return st, nil
}

// checkNotCopying refuses a store a storage copy has not finished.
func (s *Store) checkNotCopying() error {
	_, err := s.kv.Get([]byte(metaCopying))
	switch {
	case errors.Is(err, errKVNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read %s: %w", metaCopying, err)
	}
	return errors.New("store: a storage copy into this store did not finish: empty it and copy again")
}
