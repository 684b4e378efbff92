package store

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/keygate/keygate/store/etcdtest"
)

// expectKVs opens, for each backend, two KVs over the same data: one
// Pebble twice (one process), or two etcd clients on one prefix (two
// nodes).
func expectKVs(t *testing.T) map[string][2]KV {
	t.Helper()
	p, err := openPebble("db", vfs.NewMem(), nopLogger{}, 8<<20, mergeValues)
	mustNil(t, err)
	t.Cleanup(func() { _ = p.Close() })
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	return map[string][2]KV{
		"pebble": {p, p},
		"etcd":   {etcdKVAt(t, srv, prefix, 0), etcdKVAt(t, srv, prefix, 0)},
	}
}

// TestKVExpect: a batch with expectations commits only when each holds
// (absent, or exactly the value), and otherwise writes nothing and answers
// errKVConflict.
func TestKVExpect(t *testing.T) {
	for name, kvs := range expectKVs(t) {
		t.Run(name, func(t *testing.T) {
			kv := kvs[0]
			apply := func(fn func(b *Batch)) error {
				var b Batch
				fn(&b)
				return kv.Apply(&b, true)
			}
			mustNil(t, apply(func(b *Batch) { b.Expect([]byte("x/a"), nil); b.Set([]byte("x/a"), []byte("1")) }))
			for _, tc := range []struct {
				what string
				want []byte
			}{{"absent, but present", nil}, {"another value", []byte("2")}, {"empty, not the value", []byte{}}} {
				err := apply(func(b *Batch) {
					b.Expect([]byte("x/a"), tc.want)
					b.Set([]byte("x/b"), []byte("written"))
					b.Merge([]byte("x/m"), encodeUsage(&usageRecord{}))
				})
				if !errors.Is(err, errKVConflict) {
					t.Fatalf("expected %s: %v, want errKVConflict", tc.what, err)
				}
				if _, err := kv.Get([]byte("x/b")); !errors.Is(err, errKVNotFound) {
					t.Fatalf("expected %s: the batch wrote its other records (%v)", tc.what, err)
				}
			}
			mustNil(t, apply(func(b *Batch) {
				b.Expect([]byte("x/a"), []byte("1"))
				b.Expect([]byte("x/e"), nil)
				b.Set([]byte("x/e"), []byte{})
				b.Merge([]byte("x/m"), encodeUsage(&usageRecord{}))
			}))
			if err := apply(func(b *Batch) { b.Expect([]byte("x/e"), nil); b.Set([]byte("x/c"), nil) }); !errors.Is(err, errKVConflict) {
				t.Fatalf("an empty record expected absent: %v", err)
			}
			mustNil(t, apply(func(b *Batch) { b.Expect([]byte("x/e"), []byte{}); b.Set([]byte("x/c"), []byte("ok")) }))
		})
	}
}

// TestKVExpectSerializes: read-expect-increment of one counter from many
// goroutines (on etcd, through two clients: two nodes) loses no increment,
// however the commits interleave.
func TestKVExpectSerializes(t *testing.T) {
	for name, kvs := range expectKVs(t) {
		t.Run(name, func(t *testing.T) {
			workers, each := 16, 100 // enough for Pebble's commits to interleave
			if name == "etcd" {
				workers, each = 6, 30 // each commit a round trip
			}
			key := []byte("ctr")
			var wg sync.WaitGroup
			for w := range workers {
				kv := kvs[w%2]
				wg.Go(func() {
					for range each {
						for {
							cur, err := kv.Get(key)
							if errors.Is(err, errKVNotFound) {
								cur = nil
							} else if err != nil {
								t.Error(err)
								return
							}
							var n uint64
							if cur != nil {
								n = binary.BigEndian.Uint64(cur)
							}
							var b Batch
							b.Expect(key, cur)
							b.Set(key, binary.BigEndian.AppendUint64(nil, n+1))
							err = kv.Apply(&b, true)
							if err == nil {
								break
							}
							if !errors.Is(err, errKVConflict) {
								t.Error(err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			v, err := kvs[0].Get(key)
			mustNil(t, err)
			if n := binary.BigEndian.Uint64(v); n != uint64(workers*each) {
				t.Fatalf("counter %d after %d increments: the expectation did not hold at the commit", n, workers*each)
			}
		})
	}
}
