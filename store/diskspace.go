package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// DefaultDiskReserve is the free space (bytes) the store keeps on its
// filesystem by default: writes are refused below it. It leaves Pebble room
// to flush its memtables (4 MiB each) and finish compactions after writes
// stop, and the rest of the host room to breathe.
const DefaultDiskReserve = 256 << 20

// errInsufficientStorage is what a write refused for lack of disk space
// returns. Its message goes to admin API clients: it names neither the path
// nor the figures, which the log has.
var errInsufficientStorage = &Error{Kind: KindInsufficientStorage, Code: "insufficient_storage",
	Message: "the key store's disk is full: changes are refused until space is freed (reads keep working)"}

// diskGuard keeps Pebble away from ENOSPC: a failed WAL or MANIFEST write is
// fatal to Pebble (PITFALLS 22), so every write first checks the free space
// of the store's filesystem (statfs, about a microsecond) against the
// reserve and is refused while it is short. Nothing else changes state, so
// writes succeed again as soon as space returns.
type diskGuard struct {
	fs      vfs.FS
	dir     string
	reserve uint64
	log     Logger

	refused atomic.Uint64 // writes refused, for metrics

	mu   sync.Mutex
	full bool // the last check refused: log transitions only
}

// newDiskGuard returns nil (no checks) when reserve is negative.
func newDiskGuard(fs vfs.FS, dir string, reserve int64, log Logger) *diskGuard {
	if reserve < 0 {
		return nil
	}
	if reserve == 0 {
		reserve = DefaultDiskReserve
	}
	return &diskGuard{fs: fs, dir: dir, reserve: uint64(reserve), log: log}
}

// available is the free space for unprivileged writers (statfs f_bavail);
// ok is false when the filesystem cannot tell (in-memory test filesystems),
// and then nothing is checked.
func (g *diskGuard) available() (avail uint64, ok bool, err error) {
	u, err := g.fs.GetDiskUsage(g.dir)
	if errors.Is(err, vfs.ErrUnsupported) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("free space of %s: %w", g.dir, err)
	}
	return u.AvailBytes, true, nil
}

// checkOpen fails a start on a filesystem already below the reserve, with
// an error that names the path, the free space and the reserve: opening
// would make Pebble write (WAL, MANIFEST, recovered memtables) and fail.
func (g *diskGuard) checkOpen() error {
	if g == nil {
		return nil
	}
	avail, ok, err := g.available()
	if err != nil || !ok {
		return err
	}
	if avail < g.reserve {
		return fmt.Errorf("only %d bytes free on the filesystem of %s, below the disk reserve of %d bytes: "+
			"free some space (or lower the api_keys disk_reserve option) and start again", avail, g.dir, g.reserve)
	}
	return nil
}

// check refuses a write of about need bytes that would leave less than the
// reserve free. A failing statfs does not block writes (the write itself
// will tell).
func (g *diskGuard) check(need uint64) error {
	if g == nil {
		return nil
	}
	avail, ok, err := g.available()
	if err != nil {
		g.log.Errorf("store: %v", err)
		return nil
	}
	if !ok {
		return nil
	}
	short := avail < g.reserve+need
	g.mu.Lock()
	changed := short != g.full
	g.full = short
	g.mu.Unlock()
	if short {
		g.refused.Add(1)
	}
	if changed && short {
		g.log.Errorf("store: disk nearly full: %d bytes free on the filesystem of %s, reserve %d bytes: "+
			"writes are refused (admin API 507, usage kept in memory) until space is freed", avail, g.dir, g.reserve)
	} else if changed {
		g.log.Infof("store: %d bytes free again on the filesystem of %s (reserve %d bytes): writes resume", avail, g.dir, g.reserve)
	}
	if short {
		return errInsufficientStorage
	}
	return nil
}

// refusedWrites is how many writes the guard refused.
func (g *diskGuard) refusedWrites() uint64 {
	if g == nil {
		return 0
	}
	return g.refused.Load()
}

// size is about how many bytes the batch adds to the WAL and memtable.
func (b *Batch) size() uint64 {
	n := 0
	for _, op := range b.ops {
		n += len(op.key) + len(op.value) + 16
	}
	return uint64(n)
}
