package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestKeyLimitAcrossNodes: a tenant's key_limit counts the keys created
// through every node, and so does its key_count.
func TestKeyLimitAcrossNodes(t *testing.T) {
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	clk := newClock()
	a := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-a" })
	b := memStore(t, clk, func(o *Options) { o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), "node-b" })
	_, err := a.CreateTenant("op", TenantInput{ID: "acme", KeyLimit: ptr(3)})
	mustNil(t, err)
	enable(t, a, "acme")
	mustKey(t, a, "acme", "alice", KeyInput{})
	mustKey(t, a, "acme", "alice", KeyInput{})
	if ten, err := a.GetTenant("acme"); err != nil || ten.KeyCount != 2 { // a's count is now in memory
		t.Fatalf("node a: %+v %v", ten, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := b.GetTenant("acme"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	mustKey(t, b, "acme", "bob", KeyInput{})
	var count int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ten, err := a.GetTenant("acme")
		mustNil(t, err)
		if count = ten.KeyCount; count == 3 || time.Now().After(deadline) {
			break
		}
	}
	if count != 3 {
		t.Fatalf("node a counts %d keys after node b created one, want 3", count)
	}
	if _, _, err := a.CreateKey("op", "acme", "alice", KeyInput{Name: "fourth"}); KindOf(err) != KindLimit {
		t.Fatalf("node a created a fourth key under a limit of 3: %v", err)
	}
}

// keyNodes opens n stores (nodes) on one etcd prefix with a shared clock.
func keyNodes(t *testing.T, n int, clk *clock) []*Store {
	t.Helper()
	srv := etcdtest.Shared(t)
	prefix := etcdtest.Prefix(t)
	nodes := make([]*Store, n)
	for i := range nodes {
		nodes[i] = memStore(t, clk, func(o *Options) {
			o.KV, o.NodeID = etcdKVAt(t, srv, prefix, 0), fmt.Sprintf("node-%d", i+1)
		})
	}
	return nodes
}

// hammer runs add from workers goroutines on every node until each one got
// key_limit_reached (or, exhausted, unavailable) and returns the keys
// added. Any other error fails the test.
func hammer(t *testing.T, nodes []*Store, workers int, add func(s *Store, node, worker, i int) (int, error)) int {
	t.Helper()
	var added, busy atomic.Int64
	var wg sync.WaitGroup
	for n, s := range nodes {
		for w := range workers {
			wg.Go(func() {
				for i := 0; i < 200; i++ {
					k, err := add(s, n, w, i)
					added.Add(int64(k))
					switch {
					case err == nil:
					case KindOf(err) == KindLimit:
						return
					case errors.Is(err, ErrUnavailable):
						busy.Add(1) // conflicts on every attempt: nothing added
					default:
						t.Errorf("node %d: %v", n+1, err)
						return
					}
				}
				t.Errorf("node %d worker %d never reached the limit", n+1, w)
			})
		}
	}
	wg.Wait()
	if busy.Load() > 0 {
		t.Logf("%d calls answered unavailable after %d conflicting attempts", busy.Load(), keyAddAttempts)
	}
	return int(added.Load())
}

// agreeOnCount waits (at most 10 s) until every node's key_count of the
// tenant is want.
func agreeOnCount(t *testing.T, nodes []*Store, tenant string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i, s := range nodes {
		for {
			ten, err := s.GetTenant(tenant)
			mustNil(t, err)
			if ten.KeyCount == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d counts %d keys of %s, want %d", i+1, ten.KeyCount, tenant, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		page, err := s.ListKeys(tenant, KeyQuery{})
		mustNil(t, err)
		if page.Count != want {
			t.Fatalf("node %d lists %d keys of %s, want %d", i+1, page.Count, tenant, want)
		}
	}
}

// activeOf counts owner's active keys as stored.
func activeOf(t *testing.T, s *Store, tenant, owner string) int {
	t.Helper()
	page, err := s.ListKeys(tenant, KeyQuery{Owner: owner, Status: StatusActive, Limit: MaxPageLimit})
	mustNil(t, err)
	return page.Total
}

// TestKeyLimitsAtomicAcrossNodes: concurrent key-adding calls through three
// nodes on one etcd never exceed key_limit or max_keys_per_user (each node
// checks and commits under its own lock only; the commit's guard,
// keyadds.go, makes the check and the write atomic across nodes).
func TestKeyLimitsAtomicAcrossNodes(t *testing.T) {
	clk := newClock()
	nodes := keyNodes(t, 3, clk)
	setup := func(tenant string, limit *int, perUser int) {
		t.Helper()
		_, err := nodes[0].CreateTenant("op", TenantInput{ID: tenant, KeyLimit: limit})
		mustNil(t, err)
		_, err = nodes[0].UpdateSettings("op", tenant, SettingsPatch{APIKeysEnabled: Some(true), MaxKeysPerUser: Some(perUser)})
		mustNil(t, err)
		for i, s := range nodes { // every node knows the tenant
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				st, err := s.GetSettings(tenant)
				if err == nil && st.MaxKeysPerUser == perUser {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("node %d does not see tenant %s: %v", i+1, tenant, err)
				}
			}
		}
	}

	t.Run("key_limit", func(t *testing.T) {
		const limit = 15
		setup("kl", ptr(limit), MaxKeysPerUserMax)
		got := hammer(t, nodes, 4, func(s *Store, n, w, i int) (int, error) {
			_, _, err := s.CreateKey("op", "kl", fmt.Sprintf("u%d-%d", n, w), KeyInput{Name: "key"})
			return b2i(err == nil), err
		})
		if got != limit {
			t.Fatalf("%d keys created under a key_limit of %d", got, limit)
		}
		agreeOnCount(t, nodes, "kl", limit)
	})

	t.Run("max_keys_per_user", func(t *testing.T) {
		const perUser = 4
		setup("mu", nil, perUser)
		got := hammer(t, nodes, 4, func(s *Store, n, w, i int) (int, error) {
			_, _, err := s.CreateKey("op", "mu", "alice", KeyInput{Name: "key"})
			return b2i(err == nil), err
		})
		if got != perUser || activeOf(t, nodes[1], "mu", "alice") != perUser {
			t.Fatalf("%d keys created for one owner under max_keys_per_user %d", got, perUser)
		}
		agreeOnCount(t, nodes, "mu", perUser)
	})

	t.Run("bulk_and_import", func(t *testing.T) {
		const limit = 20
		setup("bi", ptr(limit), MaxKeysPerUserMax)
		got := hammer(t, nodes, 3, func(s *Store, n, w, i int) (int, error) {
			switch w {
			case 0:
				_, _, err := s.CreateKey("op", "bi", "one", KeyInput{Name: "key"})
				return b2i(err == nil), err
			case 1:
				keys, _, err := s.CreateKeys("op", "bi", "bulk", []KeyInput{{Name: "ka"}, {Name: "kb"}})
				return len(keys), err
			default:
				res, n, err := s.ImportKeys("op", "bi", "imp", []ImportInput{
					{KeyInput: KeyInput{Name: "imp"}, Secret: fmt.Sprintf("legacy-secret-%d-%d-%d-a", n, w, i)},
					{KeyInput: KeyInput{Name: "imp"}, Secret: fmt.Sprintf("legacy-secret-%d-%d-%d-b", n, w, i)}})
				if err == nil && n == 0 {
					err = &Error{Kind: KindLimit, Message: *res[0].Error} // every entry refused: the limit
				}
				return n, err
			}
		})
		if got != limit {
			t.Fatalf("%d keys created or imported under a key_limit of %d", got, limit)
		}
		agreeOnCount(t, nodes, "bi", limit)
	})

	t.Run("import_one_secret", func(t *testing.T) {
		setup("is", nil, MaxKeysPerUserMax)
		secret := NewSecret(KeyPrefix) // the native layout: its hash is the same in every tenant
		got := hammer(t, nodes, 2, func(s *Store, n, w, i int) (int, error) {
			res, k, err := s.ImportKeys("op", "is", "imp", []ImportInput{{KeyInput: KeyInput{Name: "imp"}, Secret: secret}})
			if err == nil && k == 0 {
				err = &Error{Kind: KindLimit, Message: *res[0].Error} // refused: in use
			}
			return k, err
		})
		if got != 1 {
			t.Fatalf("one secret imported %d times through 3 nodes", got)
		}
		agreeOnCount(t, nodes, "is", 1)
	})

	t.Run("rotate_expired", func(t *testing.T) {
		const perUser = 3
		setup("re", nil, MaxKeysPerUserMax)
		soon := clk.Now().Add(time.Hour)
		var ids []string
		for range 3 * len(nodes) {
			k, _ := mustKey(t, nodes[0], "re", "alice", KeyInput{ExpiresAt: &soon})
			ids = append(ids, k.ID)
		}
		_, err := nodes[0].UpdateSettings("op", "re", SettingsPatch{MaxKeysPerUser: Some(perUser)})
		mustNil(t, err)
		agreeOnCount(t, nodes, "re", len(ids))
		for i, s := range nodes {
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if st, err := s.GetSettings("re"); err == nil && st.MaxKeysPerUser == perUser {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("node %d: settings %+v %v", i+1, st, err)
				}
			}
		}
		clk.Advance(2 * time.Hour) // every key has expired: alice has no active key
		later := clk.Now().Add(24 * time.Hour)
		var rotated, refused atomic.Int64
		var wg sync.WaitGroup
		for i, id := range ids { // each expired key rotated once, through node i%3
			wg.Go(func() {
				_, _, err := nodes[i%len(nodes)].RotateKey("op", "re", id, RotateInput{ExpiresAt: &later})
				switch {
				case err == nil:
					rotated.Add(1)
				case KindOf(err) == KindLimit || errors.Is(err, ErrUnavailable):
					refused.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := activeOf(t, nodes[2], "re", "alice"); n != perUser || rotated.Load() != perUser {
			t.Fatalf("%d expired keys reactivated by rotation (%d refused), alice has %d active keys; max_keys_per_user is %d",
				rotated.Load(), refused.Load(), n, perUser)
		}
	})
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
