package store

import "testing"

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
