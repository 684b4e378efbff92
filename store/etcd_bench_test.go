package store

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// onEachKV runs a benchmark with every store memStore opens on each KV.
func onEachKV(b *testing.B, bench func(*testing.B)) {
	for _, name := range []string{"pebble", "etcd"} {
		b.Run(name, func(b *testing.B) {
			testKV = kvFactories[name]
			defer func() { testKV = nil }()
			bench(b)
		})
	}
}

// BenchmarkVerifyHitByKV: the cache-hit path does not touch the KV, so it
// costs the same on etcd as on Pebble.
func BenchmarkVerifyHitByKV(b *testing.B) { onEachKV(b, BenchmarkVerifyHit) }

// BenchmarkVerifyMissByKV: a miss reads the key record, on etcd one round
// trip to the server (here on loopback).
func BenchmarkVerifyMissByKV(b *testing.B) { onEachKV(b, BenchmarkVerifyMiss) }

// BenchmarkFlush10kKeysByKV: one usage flush after 10,000 keys were used
// (one op is one flush). On etcd that is two records per key, in
// transactions of at most 128 operations.
func BenchmarkFlush10kKeysByKV(b *testing.B) {
	onEachKV(b, func(b *testing.B) {
		clk := newClock()
		s := memStore(b, clk)
		views := make([]*KeyView, 10_000)
		for i := range views {
			views[i] = &KeyView{ID: fmt.Sprintf("key_%05d", i), Tenant: DefaultTenant}
		}
		ip := netip.MustParseAddr("192.0.2.1")
		b.ResetTimer()
		for b.Loop() {
			b.StopTimer()
			now := clk.Advance(5 * time.Second)
			for _, v := range views {
				s.RecordUse(v, ip, OutcomeOK, now)
			}
			b.StartTimer()
			if err := s.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
