package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The usage flush is blind: however many keys were used, it reads nothing.
func TestFlushReadsNothing(t *testing.T) {
	kv := memPebble(t)
	ckv := &countingKV{KV: kv} // every read
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = ckv })
	enable(t, s, DefaultTenant)
	ip := netip.MustParseAddr("192.0.2.7")
	var ids []string
	for i := range 20 {
		key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
		view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
		mustNil(t, err)
		s.RecordUse(view, ip, OutcomeOK, clk.Now())
		if i%2 == 0 {
			s.RecordUse(view, ip, OutcomeForbidden, clk.Now())
		}
		ids = append(ids, key.ID)
	}
	for round := range 3 {
		for _, id := range ids {
			s.RecordUse(&KeyView{ID: id, Tenant: DefaultTenant}, ip, OutcomeOK, clk.Now())
		}
		g0 := ckv.reads.Load()
		mustNil(t, s.Flush())
		if d := ckv.reads.Load() - g0; d != 0 {
			t.Fatalf("flush %d read the store %d times", round, d)
		}
	}
	for i, id := range ids {
		u, err := s.Usage(DefaultTenant, id)
		mustNil(t, err)
		want := uint64(4)
		if i%2 == 0 {
			want = 5
		}
		if u.Total != want || u.LastUsedIP == nil || *u.LastUsedIP != ip.String() {
			t.Fatalf("key %d: total %d, last IP %v", i, u.Total, u.LastUsedIP)
		}
	}
}

func randUsage(r *rand.Rand) *usageRecord {
	u := &usageRecord{}
	if r.IntN(3) > 0 {
		at := time.Unix(1_700_000_000+r.Int64N(1_000_000), r.Int64N(1e9)).UTC()
		u.LastUsedAt, u.LastUsedIP = &at, netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(256))}).String()
	}
	for o := range u.Totals {
		u.Totals[o] = uint64(r.IntN(1000))
	}
	m := int64(28_000_000 + r.IntN(50))
	for range r.IntN(5) {
		m += int64(1 + r.IntN(3))
		var mc minuteCount
		mc.Minute = m
		for o := range mc.Counts {
			mc.Counts[o] = uint64(r.IntN(10))
		}
		u.Minutes = append(u.Minutes, mc)
	}
	return u
}

func decodedUsage(t *testing.T, b []byte) usageRecord {
	t.Helper()
	var u usageRecord
	mustNil(t, decodeUsage(b, &u))
	return u
}

// Pebble merges operands in any grouping (partial merges in compactions),
// so mergeUsage must be associative; counts must not depend on order.
func TestMergeUsageAlgebra(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		a, b, c := encodeUsage(randUsage(r)), encodeUsage(randUsage(r)), encodeUsage(randUsage(r))
		left := decodedUsage(t, mergeUsage(mergeUsage(a, b), c))
		right := decodedUsage(t, mergeUsage(a, mergeUsage(b, c)))
		if !reflect.DeepEqual(left, right) {
			t.Fatalf("case %d: not associative:\n%+v\n%+v", i, left, right)
		}
		ab, ba := decodedUsage(t, mergeUsage(a, b)), decodedUsage(t, mergeUsage(b, a))
		ua, ub := decodedUsage(t, a), decodedUsage(t, b)
		for o := range ab.Totals {
			if ab.Totals[o] != ua.Totals[o]+ub.Totals[o] || ba.Totals[o] != ab.Totals[o] {
				t.Fatalf("case %d: totals %v + %v = %v / %v", i, ua.Totals, ub.Totals, ab.Totals, ba.Totals)
			}
		}
		if !reflect.DeepEqual(ab.Minutes, ba.Minutes) {
			t.Fatalf("case %d: minutes depend on order", i)
		}
		var want *time.Time
		for _, u := range []usageRecord{ua, ub} {
			if u.LastUsedAt != nil && (want == nil || u.LastUsedAt.After(*want)) {
				want = u.LastUsedAt
			}
		}
		if (want == nil) != (ab.LastUsedAt == nil) || want != nil && !want.Equal(*ab.LastUsedAt) {
			t.Fatalf("case %d: last used %v, want the later %v", i, ab.LastUsedAt, want)
		}
	}
	// A missing or undecodable side counts as empty.
	one := encodeUsage(&usageRecord{Totals: [numOutcomes]uint64{3}})
	for _, bad := range [][]byte{nil, {}, {0x7f}, {usageCodecV1}} {
		if got := decodedUsage(t, mergeUsage(bad, one)); got.Totals[0] != 3 {
			t.Fatalf("merge(%x, one) = %+v", bad, got)
		}
	}
	// JSON records of earlier versions merge too.
	if got := decodedUsage(t, mergeUsage([]byte(`{"totals":[5,0,0,0,0,0,1],"minutes":[]}`), one)); got.Totals[0] != 8 || got.Totals[6] != 1 {
		t.Fatalf("merge with a JSON record = %+v", got)
	}
	// Minutes older than the window before the newest one are dropped.
	old := encodeUsage(&usageRecord{Minutes: []minuteCount{{Minute: 100, Counts: [numOutcomes]uint64{1}}}})
	newer := encodeUsage(&usageRecord{Minutes: []minuteCount{{Minute: 100 + 24*60 + 1, Counts: [numOutcomes]uint64{1}}}})
	if got := decodedUsage(t, mergeUsage(old, newer)); len(got.Minutes) != 1 || got.Minutes[0].Minute != 100+24*60+1 {
		t.Fatalf("window: %+v", got.Minutes)
	}
}

// Usage written as merge operands survives restarts and Pebble compactions
// (which run mergeUsage inside Pebble) with nothing lost or counted twice.
func TestUsageMergesAcrossReopenAndCompaction(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	open := func() *Store { return diskStore(t, dir, clk) }
	s := open()
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	ip := netip.MustParseAddr("2001:db8::5")
	want := 0
	for round := range 4 {
		view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
		mustNil(t, err)
		for range round + 1 {
			s.RecordUse(view, ip, OutcomeOK, clk.Now())
			want++
		}
		mustNil(t, s.Flush())
		if round%2 == 1 {
			p := s.kv.(*pebbleKV)
			mustNil(t, p.db.Compact(t.Context(), []byte(pKeyUsage), prefixEnd([]byte(pKeyUsage)), false))
		}
		mustNil(t, s.Close())
		clk.Advance(time.Minute)
		s = open()
	}
	u, err := s.Usage(DefaultTenant, key.ID)
	mustNil(t, err)
	if u.Total != uint64(want) || len(u.PerMinute) != 4 || u.LastUsedAt == nil {
		t.Fatalf("after reopens and compactions: total %d (want %d), %d minutes, last used %v", u.Total, want, len(u.PerMinute), u.LastUsedAt)
	}
	if s.kv.(*pebbleKV).emulateMerge {
		t.Fatal("a new store emulates merges")
	}
}

// A store created before usage merges existed (Pebble's default merger is
// pinned in it) still opens, and its usage flushes add up, read-modify-write.
func TestLegacyStoreEmulatesMerge(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	clk := newClock()
	s := diskStore(t, dir, clk, func(o *Options) { o.KV = legacyKV(t, dir) })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	mustNil(t, s.Close())
	// An earlier version wrote this key's usage as JSON.
	db, err := pebble.Open(dir, &pebble.Options{Logger: &pebbleLogger{l: nopLogger{}}})
	mustNil(t, err)
	mustNil(t, db.Set([]byte(pKeyUsage+key.ID), []byte(`{"totals":[5,0,0,0,0,0,0],"minutes":[]}`), pebble.Sync))
	mustNil(t, db.Close())

	for round := range 2 {
		s = diskStore(t, dir, clk)
		if !s.kv.(*pebbleKV).emulateMerge {
			t.Fatal("legacy store not detected")
		}
		view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
		mustNil(t, err)
		s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
		s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
		mustNil(t, s.Flush())
		rec, err := s.usageRecord(key.ID)
		mustNil(t, err)
		if want := uint64(5 + 2*(round+1)); rec == nil || rec.Totals[OutcomeOK] != want || rec.LastUsedAt == nil {
			t.Fatalf("round %d: usage %+v, want %d ok", round, rec, want)
		}
		mustNil(t, s.Close())
	}
}

// legacyKV opens dir the way versions before merges did: Pebble's default
// merger, recorded in the store's OPTIONS file.
func legacyKV(t testing.TB, dir string) KV {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: &pebbleLogger{l: nopLogger{}}})
	mustNil(t, err)
	mustNil(t, db.Close())
	kv, err := openPebble(dir, nil, nopLogger{}, 8<<20, mergeValues)
	mustNil(t, err)
	if !kv.emulateMerge {
		t.Fatal("default-merger store not detected")
	}
	return kv
}

func TestForeignMergerRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := pebble.Open(dir, &pebble.Options{Merger: &pebble.Merger{Name: "someone.else", Merge: pebble.DefaultMerger.Merge}})
	mustNil(t, err)
	mustNil(t, db.Close())
	_, err = Open(Options{Dir: dir, FlushInterval: -1})
	if err == nil || !strings.Contains(err.Error(), `"someone.else"`) {
		t.Fatalf("open a store with a foreign merger: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
}

// Deleted keys are remembered for two flushes, then forgotten.
func TestDeletedKeysForgotten(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)
	mustNil(t, s.DeleteKey("op", DefaultTenant, key.ID))
	for i := range 3 {
		// A request that verified before the delete records after it.
		s.RecordUse(view, netip.MustParseAddr("192.0.2.1"), OutcomeOK, clk.Now())
		mustNil(t, s.Flush())
		if _, err := s.kv.Get([]byte(pKeyUsage + key.ID)); err != errKVNotFound && i < 2 {
			t.Fatalf("flush %d wrote usage of a deleted key: %v", i, err)
		}
	}
	s.wmu.Lock()
	n := len(s.usage.deleted)
	s.wmu.Unlock()
	if n != 0 {
		t.Fatalf("%d deleted keys still remembered after three flushes", n)
	}
}

// failingKV fails Apply while fail is set.
type failingKV struct {
	KV
	fail atomic.Bool
}

func (k *failingKV) Apply(b *Batch, sync bool) error {
	if k.fail.Load() {
		return errors.New("disk full")
	}
	return k.KV.Apply(b, sync)
}

// A flush that fails keeps its counts for the next one.
func TestFailedFlushKeepsUsage(t *testing.T) {
	kv := memPebble(t)
	fkv := &failingKV{KV: kv}
	clk := newClock()
	s := memStore(t, clk, func(o *Options) { o.KV = fkv })
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	view, _, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	s.RecordUse(view, ip1, OutcomeOK, clk.Now())
	s.RecordUse(view, ip1, OutcomeForbidden, clk.Now())
	fkv.fail.Store(true)
	if err := s.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("flush on a failing store: %v", err)
	}
	if err := s.Flush(); err == nil {
		t.Fatal("second flush on a failing store succeeded")
	}
	clk.Advance(time.Minute)
	s.RecordUse(view, ip2, OutcomeOK, clk.Now())
	fkv.fail.Store(false)
	mustNil(t, s.Flush())
	rec, err := s.usageRecord(key.ID)
	mustNil(t, err)
	if rec == nil || rec.Totals[OutcomeOK] != 2 || rec.Totals[OutcomeForbidden] != 1 || len(rec.Minutes) != 2 ||
		rec.LastUsedIP != ip2.String() {
		t.Fatalf("usage after the store recovered: %+v", rec)
	}
	if evs := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.requests_denied"}); len(evs) != 1 || evs[0].Detail["forbidden"] != float64(1) {
		t.Fatalf("denied events after recovery: %d", len(evs))
	}
}

// mergeUsage runs inside Pebble's compactions: whatever bytes it is given, it
// must not panic, and what it returns must decode.
func FuzzMergeUsage(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 4 {
		f.Add(encodeUsage(randUsage(r)), encodeUsage(randUsage(r)))
	}
	f.Add([]byte(nil), []byte{usageCodecV1})
	f.Add([]byte(`{"totals":[1,2,3,4,5,6,7],"minutes":[{"m":5,"c":[1]}]}`), []byte{0xff, 0xff})
	f.Add([]byte{usageCodecV1, 0x80, 0x80, 0x80}, []byte{usageCodecV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, older, newer []byte) {
		out := mergeUsage(older, newer)
		var u usageRecord
		if err := decodeUsage(out, &u); err != nil {
			t.Fatalf("merge result does not decode: %v", err)
		}
	})
}

// mergeUsage's encoded path gives exactly the bytes of the decoded one, and
// leaves to it only what it cannot take.
func TestMergeUsageEncodedMatchesDecoded(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	// wide records have minutes spread over more than the window, some
	// repeated; unordered ones also go back (stored records never do, a
	// newer one is sorted before merging).
	wide := func(unordered bool) *usageRecord {
		u := randUsage(r)
		m := int64(28_000_000)
		if n := len(u.Minutes); n > 0 {
			m = u.Minutes[n-1].Minute
		}
		for range r.IntN(40) {
			switch r.IntN(6) {
			case 0:
				if unordered {
					m -= int64(r.IntN(3))
				}
			case 1:
				m += int64(r.IntN(2000)) // a gap near the window
			default:
				m++
			}
			u.Minutes = append(u.Minutes, minuteCount{Minute: m, Counts: [numOutcomes]uint64{uint64(r.IntN(300))}})
		}
		return u
	}
	encoded := 0
	for i := range 5000 {
		var a, b []byte
		switch i % 4 {
		case 0:
			a, b = encodeUsage(randUsage(r)), encodeUsage(randUsage(r))
		case 1:
			a, b = encodeUsage(wide(true)), encodeUsage(wide(i%20 == 1))
		case 2:
			a, b = nil, encodeUsage(wide(false))
		case 3:
			a, b = encodeUsage(wide(true)), encodeUsage(&usageRecord{})
		}
		want := mergeUsageDecoded(a, b)
		got, ok := mergeUsageEncoded(a, b)
		if ok {
			encoded++
			if !bytes.Equal(got, want) {
				t.Fatalf("case %d: encoded merge\n%x\nwant\n%x", i, got, want)
			}
		}
		if !bytes.Equal(mergeUsage(a, b), want) {
			t.Fatalf("case %d: mergeUsage differs from the decoded merge", i)
		}
	}
	if encoded < 4700 { // only unordered newer minutes fall back (1 case in 20)
		t.Fatalf("the encoded path took %d of 5000 merges", encoded)
	}
	// JSON, undecodable and empty newer records fall back.
	for _, c := range [][2][]byte{
		{[]byte(`{"totals":[1,0,0,0,0,0,0],"minutes":[]}`), encodeUsage(randUsage(r))},
		{{usageCodecV1, 0x80}, encodeUsage(randUsage(r))},
		{encodeUsage(randUsage(r)), nil},
		{encodeUsage(randUsage(r)), {usageCodecV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}},
	} {
		if _, ok := mergeUsageEncoded(c[0], c[1]); ok {
			t.Fatalf("encoded merge took %x + %x", c[0], c[1])
		}
	}
}

// FuzzMergeUsageEncoded: on any bytes the encoded merge either declines or
// gives the record the decoded merge gives (the same bytes, but for
// minutes it copies, which keep an over-long varint they were given).
func FuzzMergeUsageEncoded(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 4 {
		f.Add(encodeUsage(randUsage(r)), encodeUsage(randUsage(r)))
	}
	f.Add([]byte{usageCodecV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 1, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0}, []byte{usageCodecV1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, older, newer []byte) {
		got, ok := mergeUsageEncoded(older, newer)
		if !ok {
			return
		}
		var g, w usageRecord
		if err := decodeUsage(got, &g); err != nil {
			t.Fatalf("encoded merge of %x + %x does not decode: %v", older, newer, err)
		}
		mustNil(t, decodeUsage(mergeUsageDecoded(older, newer), &w))
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("encoded merge differs on %x + %x:\n%+v\n%+v", older, newer, g, w)
		}
	})
}

// BenchmarkMergeUsage: one compaction merge of a flush's operand (one
// minute) into a base record holding an hour or a day of minutes.
func BenchmarkMergeUsage(b *testing.B) {
	for _, minutes := range []int{60, 1440} {
		base := &usageRecord{Totals: [numOutcomes]uint64{1000}}
		for i := range minutes {
			base.Minutes = append(base.Minutes, minuteCount{Minute: 28_000_000 + int64(i), Counts: [numOutcomes]uint64{12, 1}})
		}
		at := time.Unix(28_000_000*60+int64(minutes)*60, 0)
		op := encodeUsage(&usageRecord{LastUsedAt: &at, LastUsedIP: "192.0.2.1", Totals: [numOutcomes]uint64{6},
			Minutes: []minuteCount{{Minute: 28_000_000 + int64(minutes), Counts: [numOutcomes]uint64{6}}}})
		older := encodeUsage(base)
		for _, path := range []struct {
			name  string
			merge func(a, b []byte) []byte
		}{{"encoded", mergeUsage}, {"decoded", mergeUsageDecoded}} {
			b.Run(fmt.Sprintf("%dmin/%s", minutes, path.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					path.merge(older, op)
				}
			})
		}
	}
}
