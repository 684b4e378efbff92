package store

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
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

// BenchmarkFlush10kKeys3Nodes: three nodes (stores with the cross-node
// guarantee on, as Caddy runs them) on one etcd each serve the same 10,000
// keys, then flush their usage at the same moment (one op: one flush of
// every node), late in the hour. The counts are the etcd server's own (its
// /metrics): writes (raft entries), Txn and Put calls, records written,
// bytes received, growth of the database (history until compaction).
func BenchmarkFlush10kKeys3Nodes(b *testing.B) {
	const nodes, keys, stale = 3, 10_000, 2 * time.Second
	srv, err := etcdtest.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	prefix := etcdtest.Prefix(b)
	clk := newClock()
	st := make([]*Store, nodes)
	for i := range st {
		id := fmt.Sprintf("n%d", i+1)
		kv, err := openEtcd(EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: prefix,
			MaxStaleness: stale, Timeout: stale, NodeID: id})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = kv.Close() })
		st[i] = memStore(b, clk, func(o *Options) { o.KV, o.NodeID = kv, id })
	}
	views := make([]*KeyView, keys)
	for i := range views {
		views[i] = &KeyView{ID: fmt.Sprintf("key_%05d", i), Tenant: DefaultTenant}
	}
	ip := netip.MustParseAddr("192.0.2.1")
	metric := func() map[string]float64 {
		m, err := srv.Metrics()
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	// The worst case: late in the hour, when each key's current hourly
	// slot, which every flush rewrites whole, holds almost 60 minutes.
	hour := clk.Now().Truncate(time.Hour).Add(time.Hour)
	clk.Advance(hour.Add(58*time.Minute + 30*time.Second).Sub(clk.Now()))
	for _, s := range st {
		for _, v := range views {
			for m := range 59 {
				s.RecordUse(v, ip, OutcomeOK, hour.Add(time.Duration(m)*time.Minute))
			}
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	var took []time.Duration // each node's flush
	var wall time.Duration   // all three, at once
	before := metric()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		now := clk.Advance(5 * time.Second)
		for _, s := range st {
			for _, v := range views {
				s.RecordUse(v, ip, OutcomeOK, now)
			}
		}
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, s := range st {
			wg.Go(func() {
				t0 := time.Now()
				if err := s.Flush(); err != nil {
					b.Error(err)
				}
				mu.Lock()
				took = append(took, time.Since(t0))
				mu.Unlock()
			})
		}
		wg.Wait()
		wall += time.Since(start)
	}
	b.StopTimer()
	after := metric()
	perFlush := func(name string) float64 { return (after[name] - before[name]) / float64(b.N) }
	rpcs := func(method string) float64 { // calls of a KV method answered OK
		return perFlush(`grpc_server_handled_total{grpc_code="OK",grpc_method="` + method +
			`",grpc_service="etcdserverpb.KV",grpc_type="unary"}`)
	}
	slices.Sort(took)
	secs := wall.Seconds() / float64(b.N)
	writes := perFlush("etcd_server_proposals_committed_total") // raft entries: every write, heartbeats included
	b.ReportMetric(writes, "writes/flush")
	b.ReportMetric(writes/secs, "writes/s")
	b.ReportMetric(rpcs("Txn"), "txn-calls/flush")
	b.ReportMetric(rpcs("Put"), "put-calls/flush")
	b.ReportMetric(perFlush("etcd_mvcc_put_total"), "records/flush")
	b.ReportMetric(float64(nodes*keys)/secs, "keys/s")
	b.ReportMetric(perFlush("etcd_network_client_grpc_received_bytes_total")/1e6, "MB-in/flush")
	b.ReportMetric(perFlush("etcd_mvcc_db_total_size_in_bytes")/1e6, "MB-db/flush")
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms-p50/node")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-max/node")
}
