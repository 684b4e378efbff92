package store

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// logRecorder is a Logger that keeps its lines.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Infof(format string, args ...any)  { l.add("INFO "+format, args...) }
func (l *logRecorder) Errorf(format string, args ...any) { l.add("ERROR "+format, args...) }

func (l *logRecorder) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// matching returns the lines containing sub.
func (l *logRecorder) matching(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			out = append(out, s)
		}
	}
	return out
}

var (
	roomyDisk = vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 2 << 30, UsedBytes: 1 << 30}
	fullDisk  = vfs.DiskUsage{AvailBytes: 100 << 10, TotalBytes: 2 << 30, UsedBytes: 2<<30 - 100<<10}
)

const testReserve = 8 << 20

// TestDiskReserve: below the reserve every write is refused with
// KindInsufficientStorage before it reaches Pebble; verification (reads)
// goes on; usage stays in memory; once space returns the same store takes
// writes again and the buffered usage is flushed.
func TestDiskReserve(t *testing.T) {
	pebbleOnly(t)
	clk := newClock()
	fs := vfs.NewMem()
	fs.TestingSetDiskUsage(roomyDisk)
	logs := &logRecorder{}
	s := memStore(t, clk, func(o *Options) { o.FS, o.DiskReserve, o.Logger = fs, testReserve, logs })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	_, cold := mustKey(t, s, DefaultTenant, "bob", KeyInput{}) // never verified before the disk fills

	fs.TestingSetDiskUsage(fullDisk)
	_, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "refused"})
	wantErr(t, err, KindInsufficientStorage, "insufficient_storage")
	_, err = s.RevokeKey("op", DefaultTenant, key.ID)
	wantErr(t, err, KindInsufficientStorage, "insufficient_storage")
	if e := wantErr(t, err, KindInsufficientStorage, ""); strings.Contains(e.Message, "db") {
		t.Fatalf("the client-facing message names the path: %q", e.Message)
	}
	// Reads go on: a cached key and one read from Pebble.
	for _, sec := range []string{secret, cold} {
		view, v, err := s.Verify(DefaultTenant, sec, clk.Now())
		if err != nil || v != VerdictValid {
			t.Fatalf("Verify on a full disk: %s %v", vname(v), err)
		}
		s.RecordUse(view, netip.MustParseAddr("192.0.2.7"), OutcomeOK, clk.Now())
	}
	if err := s.Flush(); KindOf(err) != KindInsufficientStorage {
		t.Fatalf("Flush on a full disk: %v", err)
	}
	if n := s.PendingUsage(); n != 2 {
		t.Fatalf("%d keys' usage kept in memory, want 2", n)
	}
	if got := logs.matching("disk nearly full"); len(got) != 1 || !strings.Contains(got[0], "db") ||
		!strings.Contains(got[0], fmt.Sprint(fullDisk.AvailBytes)) || !strings.Contains(got[0], fmt.Sprint(testReserve)) {
		t.Fatalf("want one log line naming the path, free bytes and reserve; got %q", got)
	}
	if st := s.StorageStats(); st.WritesRefused != 3 || st.Failed {
		t.Fatalf("storage stats %+v", st)
	}

	// A write that would itself eat into the reserve is refused too.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: testReserve + 1000, TotalBytes: 2 << 30})
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "refused", Description: strings.Repeat("x", 1000)})
	wantErr(t, err, KindInsufficientStorage, "insufficient_storage")

	fs.TestingSetDiskUsage(roomyDisk)
	mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "after"})
	mustNil(t, s.Flush())
	if n := s.PendingUsage(); n != 0 {
		t.Fatalf("%d keys' usage still pending after space returned", n)
	}
	got, err := s.GetKey(DefaultTenant, key.ID)
	mustNil(t, err)
	if got.LastUsedAt == nil || *got.LastUsedIP != "192.0.2.7" {
		t.Fatalf("usage recorded while the disk was full was not written: %+v", got)
	}
	if len(logs.matching("writes resume")) != 1 {
		t.Fatalf("recovery not logged: %q", logs.lines)
	}
}

// TestOpenBelowReserve: a start on a filesystem already below the reserve
// fails at once with an error naming the path, the free bytes and the
// reserve, without opening Pebble.
func TestOpenBelowReserve(t *testing.T) {
	fs := vfs.NewMem()
	fs.TestingSetDiskUsage(fullDisk)
	start := time.Now()
	_, err := Open(Options{Dir: "keys", FS: fs, FlushInterval: -1, DiskReserve: testReserve})
	if err == nil {
		t.Fatal("Open on a full disk succeeded")
	}
	for _, want := range []string{"keys", fmt.Sprintf("%d bytes free", fullDisk.AvailBytes), fmt.Sprintf("reserve of %d bytes", testReserve)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Open took %v to fail", took)
	}
	if names, _ := fs.List("keys"); len(names) != 0 {
		t.Errorf("Open wrote %v on a full disk", names)
	}
	// A negative reserve disables the check.
	s, err := Open(Options{Dir: "keys", FS: fs, FlushInterval: -1, DiskReserve: -1})
	mustNil(t, err)
	mustNil(t, s.Close())
}

// enospcFS makes every write of the wrapped filesystem fail with ENOSPC
// while it is on, as a full disk does (the statfs check sees nothing: an
// in-memory filesystem reports no usage).
func enospcFS() (vfs.FS, *errorfs.Toggle) {
	tog := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpCreate, errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync,
			errorfs.OpFileSyncData, errorfs.OpFileSyncTo, errorfs.OpFileFlush, errorfs.OpFilePreallocate:
			return syscall.ENOSPC
		}
		return nil
	})}
	return errorfs.Wrap(vfs.NewMem(), tog), tog
}

// TestPebbleENOSPCContained: when Pebble's WAL write does fail with ENOSPC
// (the reserve check bypassed), Pebble calls Fatalf and wedges its commit
// pipeline. The panic is contained in the write that hit it: the write
// returns insufficient_storage, later writes fail the same way at once
// instead of hanging, reads go on, usage stays in memory, and Close returns.
func TestPebbleENOSPCContained(t *testing.T) {
	pebbleOnly(t)
	clk := newClock()
	fs, tog := enospcFS()
	logs := &logRecorder{}
	s := memStore(t, clk, func(o *Options) { o.FS, o.Logger = fs, logs })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})

	tog.On()
	_, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "hits ENOSPC"})
	wantErr(t, err, KindInsufficientStorage, "insufficient_storage")
	if !s.StorageStats().Failed {
		t.Fatal("the store does not know Pebble failed")
	}
	if len(logs.matching("pebble FATAL")) == 0 {
		t.Fatalf("Pebble's fatal error was not logged: %q", logs.lines)
	}

	tog.Off() // even with space back, the wedged Pebble is not written to again
	done := make(chan error, 1)
	go func() {
		_, err := s.RevokeKey("op", DefaultTenant, key.ID)
		done <- err
	}()
	select {
	case err := <-done:
		wantErr(t, err, KindInsufficientStorage, "insufficient_storage")
	case <-time.After(5 * time.Second):
		t.Fatal("a write after Pebble's fatal error hangs")
	}
	view, v, err := s.Verify(DefaultTenant, secret, clk.Now())
	if err != nil || v != VerdictValid {
		t.Fatalf("Verify after Pebble's fatal error: %s %v", vname(v), err)
	}
	if _, err := s.GetKey(DefaultTenant, key.ID); err != nil {
		t.Fatalf("GetKey after Pebble's fatal error: %v", err)
	}
	s.RecordUse(view, netip.Addr{}, OutcomeOK, clk.Now())
	if err := s.Flush(); KindOf(err) != KindInsufficientStorage || s.PendingUsage() != 1 {
		t.Fatalf("Flush: %v, %d pending", err, s.PendingUsage())
	}

	start := time.Now()
	cerr := s.Close() // may report that Pebble could not close cleanly
	t.Logf("Close: %v; log: %q", cerr, logs.lines)
	if took := time.Since(start); took > 2*defaultCloseWait+time.Second {
		t.Fatalf("Close took %v", took)
	}
	if _, err := s.kv.Get([]byte("x")); err != ErrClosed {
		t.Fatalf("Get after Close: %v", err)
	}
}

// TestFatalfOffGuard: a Fatalf on one of Pebble's own goroutines (a
// background flush or compaction), where a panic would end the process,
// parks that goroutine and marks the KV failed; in a call of ours it
// panics, and call turns that into an error.
func TestFatalfOffGuard(t *testing.T) {
	kv := memPebble(t)
	defer kv.Close()
	plog := &pebbleLogger{l: nopLogger{}, kv: kv}

	err := kv.call(func() error { plog.Fatalf("inside: %s", "boom"); return nil })
	if err == nil || !strings.Contains(err.Error(), "inside: boom") {
		t.Fatalf("guarded Fatalf: %v", err)
	}
	kv.failure.Store(nil)

	returned := make(chan struct{})
	go func() {
		plog.Fatalf("background: %s", syscall.ENOSPC)
		close(returned)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for kv.failed() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if KindOf(kv.failed()) != KindInsufficientStorage {
		t.Fatalf("after a background Fatalf: %v", kv.failed())
	}
	select {
	case <-returned:
		t.Fatal("Fatalf returned on a background goroutine")
	case <-time.After(20 * time.Millisecond):
	}
	var b Batch
	b.Set([]byte("k"), []byte("v"))
	if err := kv.Apply(&b, true); KindOf(err) != KindInsufficientStorage {
		t.Fatalf("write after a background Fatalf: %v", err)
	}
}

// TestCloseBounded: Close does not wait forever for an operation that never
// ends (one stuck in a wedged Pebble): it gives up after closeWait.
func TestCloseBounded(t *testing.T) {
	kv := memPebble(t)
	kv.closeWait = 50 * time.Millisecond
	mustNil(t, kv.enter()) // an operation that never exits
	start := time.Now()
	err := kv.Close()
	if err == nil || !strings.Contains(err.Error(), "1 operations still running") {
		t.Fatalf("Close with a stuck operation: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Close took %v", took)
	}
	if _, err := kv.Get([]byte("k")); err != ErrClosed {
		t.Fatalf("Get after Close: %v", err)
	}
	if err := kv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestScanCallbackPanic: a panic in a Scan callback is the caller's: it is
// raised again and does not mark the KV failed.
func TestScanCallbackPanic(t *testing.T) {
	kv := memPebble(t)
	defer kv.Close()
	var b Batch
	b.Set([]byte("p/1"), []byte("v"))
	mustNil(t, kv.Apply(&b, true))
	func() {
		defer func() {
			if r := recover(); r != "callback" {
				t.Fatalf("recovered %v, want the callback's panic", r)
			}
		}()
		_ = kv.Scan([]byte("p/"), nil, func(k, v []byte) bool { panic("callback") })
	}()
	if kv.failed() != nil {
		t.Fatalf("a callback's panic marked the KV failed: %v", kv.failed())
	}
	mustNil(t, kv.Apply(&b, true))
}

// TestUsageBufferBounded: while the store cannot be written, per-minute
// usage counts stay in memory up to UsageBufferLimit; beyond it requests
// are still counted in the totals (and last use) but their per-minute count
// is dropped and counted. When space returns, everything kept is written.
func TestUsageBufferBounded(t *testing.T) {
	pebbleOnly(t)
	clk := newClock()
	fs := vfs.NewMem()
	fs.TestingSetDiskUsage(roomyDisk)
	s := memStore(t, clk, func(o *Options) { o.FS, o.DiskReserve, o.UsageBufferLimit = fs, testReserve, 5 })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)

	fs.TestingSetDiskUsage(fullDisk)
	const minutes = 8
	for i := range minutes {
		now := clk.Advance(time.Minute)
		s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, now)
		s.RecordUse(view, netip.Addr{}, OutcomeRateLimited, now)
		if i%2 == 0 {
			if err := s.Flush(); KindOf(err) != KindInsufficientStorage {
				t.Fatalf("Flush: %v", err)
			}
		}
	}
	fst := s.FlushStats()
	if fst.PendingMinutes != 5 || fst.DroppedRequests != 2*(minutes-5) || fst.Failures != minutes/2 {
		t.Fatalf("flush stats %+v, want 5 minutes pending, %d requests dropped, %d failures", fst, 2*(minutes-5), minutes/2)
	}

	fs.TestingSetDiskUsage(roomyDisk)
	mustNil(t, s.Flush())
	rec, err := s.usageRecord(key.ID)
	mustNil(t, err)
	if rec.Totals[OutcomeOK] != minutes || rec.Totals[OutcomeRateLimited] != minutes || len(rec.Minutes) != 5 {
		t.Fatalf("stored usage: totals %v, %d minutes; want %d each and 5 minutes", rec.Totals, len(rec.Minutes), minutes)
	}
	if rec.LastUsedAt == nil || !rec.LastUsedAt.Equal(clk.Now()) {
		t.Fatalf("last use %v, want %v", rec.LastUsedAt, clk.Now())
	}
	if fst := s.FlushStats(); fst.PendingMinutes != 0 {
		t.Fatalf("after the flush: %+v", fst)
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"})
	if len(evs) != 1 || evs[0].Detail["rate_limited"] != float64(minutes) {
		t.Fatalf("denied events %+v", evs)
	}
}

// TestFlushFailureLogThrottled: a flusher that keeps failing logs its error
// once, then a summary with a count at most once a minute, and says once
// when it writes again.
func TestFlushFailureLogThrottled(t *testing.T) {
	pebbleOnly(t)
	clk := newClock()
	fs := vfs.NewMem()
	fs.TestingSetDiskUsage(roomyDisk)
	logs := &logRecorder{}
	s := memStore(t, clk, func(o *Options) { o.FS, o.DiskReserve, o.Logger = fs, testReserve, logs })
	enable(t, s, DefaultTenant)
	_, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)

	fs.TestingSetDiskUsage(fullDisk)
	for range 30 { // two and a half minutes of 5-second ticks
		s.RecordUse(view, netip.Addr{}, OutcomeOK, clk.Now())
		s.flushTick(5 * time.Second)
		clk.Advance(5 * time.Second)
	}
	lines := logs.matching("usage flush")
	if len(lines) != 3 || !strings.Contains(lines[0], "retried every 5s") ||
		!strings.Contains(lines[1], "still failing after 13 attempts (12 since the last report)") ||
		!strings.Contains(lines[2], "still failing after 25 attempts") {
		t.Fatalf("flusher log lines: %q", lines)
	}
	fs.TestingSetDiskUsage(roomyDisk)
	s.flushTick(5 * time.Second)
	s.flushTick(5 * time.Second)
	if got := logs.matching("written again after 30 failed attempts"); len(got) != 1 {
		t.Fatalf("recovery lines: %q", logs.matching("usage flush"))
	}
}

// TestPebbleLogThrottled: Pebble's repeated error lines (a flush retried in
// a loop on a full disk) are logged once, then once a period with a count.
func TestPebbleLogThrottled(t *testing.T) {
	clk := newClock()
	logs := &logRecorder{}
	plog := &pebbleLogger{l: logs, throttle: newLogThrottle(clk.Now, pebbleLogPeriod)}
	for range 7000 {
		plog.Errorf("background error: %s", "no space left on device")
	}
	plog.Errorf("another error: %d", 1)
	clk.Advance(pebbleLogPeriod)
	plog.Errorf("background error: %s", "no space left on device")
	got := logs.matching("error")
	if len(got) != 3 || !strings.Contains(got[2], "6999 similar lines suppressed") {
		t.Fatalf("logged %q", got)
	}
}

// TestOpenRecoveryENOSPC: pebble.Open flushes the memtables it recovers
// from the WAL and retries a failed flush forever. On a full disk (the
// reserve check off, or the reserve too small for the flush) Open fails
// with an error instead of never returning. (The abandoned Open goes on
// retrying its flush every backgroundBackoff in this test binary: a server
// exits when its start fails.)
func TestOpenRecoveryENOSPC(t *testing.T) {
	tog := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if strings.HasSuffix(op.Path, ".sst") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return syscall.ENOSPC
		}
		return nil
	})}
	fs := errorfs.Wrap(vfs.NewMem(), tog)
	clk := newClock()
	s, err := Open(Options{Dir: "db", FS: fs, FlushInterval: -1, Now: clk.Now})
	mustNil(t, err)
	enable(t, s, DefaultTenant)
	mustKey(t, s, DefaultTenant, "alice", KeyInput{}) // in the WAL, not in an sstable
	mustNil(t, s.Close())

	tog.On()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		s, err := Open(Options{Dir: "db", FS: fs, FlushInterval: -1, Now: clk.Now})
		if err == nil {
			_ = s.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "recovered from the WAL") || !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("Open on a full disk: %v", err)
		}
		t.Logf("Open failed in %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("Open on a full disk did not return within 10 s")
	}
}
