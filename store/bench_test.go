package store

import (
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchKeys creates n keys in the default tenant and returns their secrets.
func benchKeys(b *testing.B, s *Store, n int) []string {
	b.Helper()
	enable(b, s, DefaultTenant)
	secrets := make([]string, n)
	for i := range secrets {
		_, secrets[i] = mustKey(b, s, DefaultTenant, "owner"+strconv.Itoa(i%500), KeyInput{Name: "bench " + strconv.Itoa(i)})
	}
	return secrets
}

// BenchmarkVerifyHit: the key's view is in the positive cache.
func BenchmarkVerifyHit(b *testing.B) {
	s := memStore(b, nil)
	secret := benchKeys(b, s, 1)[0]
	now := time.Now()
	for range 3 { // fill the cache and let ristretto admit the entry
		if _, v, err := s.Verify(DefaultTenant, secret, now); err != nil || v != VerdictValid {
			b.Fatal(v, err)
		}
		s.Wait()
	}
	h0, m0 := s.CacheMetrics()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, v, err := s.Verify(DefaultTenant, secret, now); v != VerdictValid || err != nil {
			b.Fatal(v, err)
		}
	}
	b.StopTimer()
	h1, m1 := s.CacheMetrics()
	if misses := m1 - m0; misses > (h1-h0)/100 {
		b.Fatalf("not a hit benchmark: %d hits, %d misses", h1-h0, misses)
	}
}

// BenchmarkVerifyHitPepper: a cache hit with HMAC-SHA-256 secret hashing.
func BenchmarkVerifyHitPepper(b *testing.B) {
	s := memStore(b, nil, func(o *Options) { o.Pepper = []byte("a server-side pepper") })
	secret := benchKeys(b, s, 1)[0]
	now := time.Now()
	for range 3 {
		if _, v, err := s.Verify(DefaultTenant, secret, now); err != nil || v != VerdictValid {
			b.Fatal(v, err)
		}
		s.Wait()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, v, err := s.Verify(DefaultTenant, secret, now); v != VerdictValid || err != nil {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkVerifyMiss: the positive cache holds far fewer entries than there
// are keys, so almost every call reads Pebble.
func BenchmarkVerifyMiss(b *testing.B) {
	s := memStore(b, nil, func(o *Options) { o.CacheEntries = 16 })
	secrets := benchKeys(b, s, 2000)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, v, err := s.Verify(DefaultTenant, secrets[i%len(secrets)], now); v != VerdictValid || err != nil {
			b.Fatal(v, err)
		}
		i++
	}
}

// BenchmarkVerifyGarbage: a well-formed secret no key has, answered by the
// negative cache after the first call.
func BenchmarkVerifyGarbage(b *testing.B) {
	s := memStore(b, nil)
	enable(b, s, DefaultTenant)
	garbage := NewSecret(KeyPrefix)
	now := time.Now()
	for range 3 {
		if _, v, err := s.Verify(DefaultTenant, garbage, now); v != VerdictInvalid || err != nil {
			b.Fatal(v, err)
		}
		s.Wait()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, v, err := s.Verify(DefaultTenant, garbage, now); v != VerdictInvalid || err != nil {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkVerifyMalformed: rejected by the checksum before any lookup.
func BenchmarkVerifyMalformed(b *testing.B) {
	s := memStore(b, nil)
	good := NewSecret(KeyPrefix)
	bad := good[:10] + flip(good[10]) + good[11:]
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, v, err := s.Verify(DefaultTenant, bad, now); v != VerdictInvalid || err != nil {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkCreateKey: one durable (synced) write on a real disk.
func BenchmarkCreateKey(b *testing.B) {
	s := diskStore(b, b.TempDir(), nil)
	enable(b, s, DefaultTenant)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, _, err := s.CreateKey("op", DefaultTenant, "owner"+strconv.Itoa(i%1000), KeyInput{Name: "bench key"}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkRevokeKey: one durable (synced) revocation on a real disk (the
// key's creation is not timed).
func BenchmarkRevokeKey(b *testing.B) {
	s := diskStore(b, b.TempDir(), nil)
	enable(b, s, DefaultTenant)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		b.StopTimer()
		key, _, err := s.CreateKey("op", DefaultTenant, "owner"+strconv.Itoa(i%1000), KeyInput{Name: "bench key"})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := s.RevokeKey("op", DefaultTenant, key.ID); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkVerifyHitParallel: cache hits from every core on few keys.
func BenchmarkVerifyHitParallel(b *testing.B) {
	s := memStore(b, nil)
	secrets := benchKeys(b, s, 64)
	now := time.Now()
	for range 3 {
		for _, sec := range secrets {
			_, _, _ = s.Verify(DefaultTenant, sec, now)
		}
		s.Wait()
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, v, err := s.Verify(DefaultTenant, secrets[i%len(secrets)], now); v != VerdictValid || err != nil {
				b.Error(v, err)
				return
			}
			i++
		}
	})
}

// flip returns a different base62 character.
func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

// BenchmarkFlush: one usage flush of 2,000 used keys on disk (synced), per
// key. "merge" is the blind merge write; "read-modify-write" is the same
// flush on a store created before merges existed, which reads each record.
func BenchmarkFlush(b *testing.B) {
	const n = 2000
	for _, mode := range []string{"merge", "read-modify-write"} {
		b.Run(mode, func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "db")
			var tweak []func(*Options)
			if mode != "merge" {
				tweak = append(tweak, func(o *Options) { o.KV = legacyKV(b, dir) })
			}
			s := diskStore(b, dir, nil, tweak...)
			secrets := benchKeys(b, s, n)
			now := time.Now()
			views := make([]*KeyView, n)
			for i, secret := range secrets {
				v, _, err := s.Verify(DefaultTenant, secret, now)
				if err != nil || v == nil {
					b.Fatal(err)
				}
				views[i] = v
			}
			ip := netip.MustParseAddr("192.0.2.1")
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				for _, v := range views {
					s.RecordUse(v, ip, OutcomeOK, now)
				}
				b.StartTimer()
				if err := s.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}

// spreadKeys creates n keys in the default tenant (a bulk create per 1,000,
// each batch its own owner) and returns their secrets in a fixed shuffled
// order, so that cycling through them touches the views in an order
// unrelated to their allocation (as uniform traffic over many keys does).
func spreadKeys(b *testing.B, s *Store, n int) []string {
	b.Helper()
	enable(b, s, DefaultTenant)
	secrets := make([]string, 0, n)
	in := make([]KeyInput, 0, MaxKeysPerUserMax)
	for len(secrets) < n {
		in = in[:0]
		for range min(MaxKeysPerUserMax, n-len(secrets)) {
			in = append(in, KeyInput{Name: "bench"})
		}
		_, sec, err := s.CreateKeys("op", DefaultTenant, "owner"+strconv.Itoa(len(secrets)), in)
		if err != nil {
			b.Fatal(err)
		}
		secrets = append(secrets, sec...)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(secrets), func(i, j int) { secrets[i], secrets[j] = secrets[j], secrets[i] })
	return secrets
}

// spreadSizes are the key counts of the spread benchmarks: the load
// benchmark's 10k keys, and ten times as many.
var spreadSizes = []int{10_000, 100_000}

// BenchmarkVerifyHitSpread: cache hits cycling through 10k (100k) distinct
// keys, all cached (the cache holds twice as many entries). Unlike
// BenchmarkVerifyHit, each call touches a view and cache slots that the
// previous calls did not warm, as uniform traffic over many keys does.
func BenchmarkVerifyHitSpread(b *testing.B) {
	for _, n := range spreadSizes {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			s := memStore(b, nil, func(o *Options) { o.CacheEntries = int64(2 * n) })
			secrets := spreadKeys(b, s, n)
			now := time.Now()
			for range 3 { // fill the cache and let ristretto admit every entry
				for _, sec := range secrets {
					if _, v, err := s.Verify(DefaultTenant, sec, now); err != nil || v != VerdictValid {
						b.Fatal(v, err)
					}
				}
				s.Wait()
			}
			h0, m0 := s.CacheMetrics()
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				if _, v, err := s.Verify(DefaultTenant, secrets[i], now); v != VerdictValid || err != nil {
					b.Fatal(v, err)
				}
				if i++; i == len(secrets) {
					i = 0
				}
			}
			b.StopTimer()
			h1, m1 := s.CacheMetrics()
			if misses := m1 - m0; misses > (h1-h0)/100 {
				b.Fatalf("not a hit benchmark: %d hits, %d misses", h1-h0, misses)
			}
		})
	}
}

// BenchmarkVerifyHitSpreadParallel is BenchmarkVerifyHitSpread from every
// core at once, each goroutine cycling from its own offset: what the
// gateway does under load, where a cache line written by one core (a
// lock word, a counter) is cold for the other.
func BenchmarkVerifyHitSpreadParallel(b *testing.B) {
	for _, n := range spreadSizes {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			s := memStore(b, nil, func(o *Options) { o.CacheEntries = int64(2 * n) })
			secrets := spreadKeys(b, s, n)
			now := time.Now()
			for range 3 {
				for _, sec := range secrets {
					if _, v, err := s.Verify(DefaultTenant, sec, now); err != nil || v != VerdictValid {
						b.Fatal(v, err)
					}
				}
				s.Wait()
			}
			var offset atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(offset.Add(int64(n/7))) % n
				for pb.Next() {
					if _, v, err := s.Verify(DefaultTenant, secrets[i], now); v != VerdictValid || err != nil {
						b.Error(v, err)
						return
					}
					if i++; i == n {
						i = 0
					}
				}
			})
		})
	}
}

// BenchmarkRecordUseSpread: one admitted request's usage bookkeeping,
// cycling through the views of 10k (100k) distinct keys, with a flush (not
// timed) after every six uses per key: what the load benchmark's uniform
// scenario sees (~12k requests/s over 10k keys, a flush every 5 s).
func BenchmarkRecordUseSpread(b *testing.B) {
	for _, n := range spreadSizes {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			s := memStore(b, nil, func(o *Options) { o.CacheEntries = int64(2 * n) })
			secrets := spreadKeys(b, s, n)
			now := time.Now()
			views := make([]*KeyView, n)
			for i, sec := range secrets {
				v, verdict, err := s.Verify(DefaultTenant, sec, now)
				if err != nil || verdict != VerdictValid {
					b.Fatal(verdict, err)
				}
				views[i] = v
			}
			ip := netip.MustParseAddr("192.0.2.1")
			b.ReportAllocs()
			b.ResetTimer()
			i, calls := 0, 0
			for b.Loop() {
				s.RecordUse(views[i], ip, OutcomeOK, now)
				if i++; i == len(views) {
					i = 0
				}
				if calls++; calls == 6*n {
					b.StopTimer()
					if err := s.Flush(); err != nil {
						b.Fatal(err)
					}
					calls = 0
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkUsageRounds: the whole cost of usage bookkeeping for 10k keys
// used uniformly, as the load benchmark's uniform scenario causes it: per
// round (one 5 s flush interval at ~12k requests/s), six uses of every key
// and a flush, the clock moving 5 s. Pebble's compactions run in the
// background, so the time is the process's CPU time (user + system, every
// goroutine) until they are done, per use: comparable with the load
// benchmark's CPU per request.
func BenchmarkUsageRounds(b *testing.B) {
	const n, usesPerRound = 10_000, 6
	clk := newClock()
	s := diskStore(b, b.TempDir(), clk, func(o *Options) { o.CacheEntries = 2 * n })
	db := s.kv.(*pebbleKV).db
	secrets := spreadKeys(b, s, n)
	views := make([]*KeyView, n)
	for i, sec := range secrets {
		v, verdict, err := s.Verify(DefaultTenant, sec, clk.Now())
		if err != nil || verdict != VerdictValid {
			b.Fatal(verdict, err)
		}
		views[i] = v
	}
	ip := netip.MustParseAddr("192.0.2.1")
	settle := func() { // until no compaction runs
		for db.Metrics().Compact.NumInProgress > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	settle()
	m0 := db.Metrics()
	cpu0 := processCPU(b)
	b.ResetTimer()
	rounds := 0
	for b.Loop() {
		now := clk.Now()
		for range usesPerRound {
			for _, v := range views {
				s.RecordUse(v, ip, OutcomeOK, now)
			}
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
		clk.Advance(5 * time.Second)
		rounds++
	}
	settle()
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	m1 := db.Metrics()
	uses := float64(rounds * n * usesPerRound)
	b.ReportMetric(float64(cpu.Microseconds())/uses, "cpu-µs/use")
	var written0, written1 uint64
	for i := range m0.Levels {
		written0 += m0.Levels[i].TableBytesCompacted + m0.Levels[i].TableBytesFlushed
		written1 += m1.Levels[i].TableBytesCompacted + m1.Levels[i].TableBytesFlushed
	}
	b.ReportMetric(float64(written1-written0)/float64(rounds)/1e6, "MB-written/round")
}

// processCPU is the process's user and system CPU time so far.
func processCPU(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
