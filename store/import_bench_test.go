package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

// BenchmarkImportKeys imports calls of chunk keys (one owner per 1000, as
// keygate-bench does) into an on-disk store that keeps growing: one
// operation is one key, so ns/op is the store's cost per imported key.
//
//	go test ./store/ -run '^$' -bench ImportKeys -benchtime 200000x
func BenchmarkImportKeys(b *testing.B) {
	for _, chunk := range []int{1000, 2500, 10_000} {
		b.Run(fmt.Sprintf("chunk=%d", chunk), func(b *testing.B) {
			s, err := store.Open(store.Options{Dir: b.TempDir(), FlushInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if _, err := s.UpdateSettings("bench", store.DefaultTenant, store.SettingsPatch{
				APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(store.MaxKeysPerUserMax),
			}); err != nil {
				b.Fatal(err)
			}
			in := make([]store.ImportInput, 0, chunk)
			b.ResetTimer()
			for done := 0; done < b.N; {
				b.StopTimer()
				in = in[:0]
				for i := done; i < b.N && len(in) < chunk; i++ {
					in = append(in, store.ImportInput{KeyInput: store.KeyInput{Name: fmt.Sprintf("bench key %d", i)},
						Owner: fmt.Sprintf("user-%06d", i/store.MaxKeysPerUserMax), Secret: store.NewSecret(store.KeyPrefix)})
				}
				b.StartTimer()
				_, n, err := s.ImportKeys("bench", store.DefaultTenant, "", in)
				if err != nil || n != len(in) {
					b.Fatalf("imported %d of %d: %v", n, len(in), err)
				}
				done += n
			}
		})
	}
}

// BenchmarkVerifyImported: a presented foreign secret on a tenant with
// imported keys — an imported one (cache hit) and an unknown one (negative
// cache) — against BenchmarkVerifyHit and BenchmarkVerifyMalformed.
func BenchmarkVerifyImported(b *testing.B) {
	s, err := store.Open(store.Options{Dir: b.TempDir(), FlushInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.UpdateSettings("bench", store.DefaultTenant, store.SettingsPatch{APIKeysEnabled: store.Some(true)}); err != nil {
		b.Fatal(err)
	}
	const secret = "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"
	if _, n, err := s.ImportKeys("bench", store.DefaultTenant, "alice", []store.ImportInput{
		{KeyInput: store.KeyInput{Name: "imported"}, Secret: secret}}); err != nil || n != 1 {
		b.Fatalf("import: %d, %v", n, err)
	}
	now := time.Now()
	for name, sec := range map[string]string{"hit": secret, "unknown": "0123456789abcdef0123456789abcdef01234567"} {
		b.Run(name, func(b *testing.B) {
			_, _, _ = s.Verify(store.DefaultTenant, sec, now)
			s.Wait()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, _, err := s.Verify(store.DefaultTenant, sec, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
