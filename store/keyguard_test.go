package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/store/etcdtest"
)

// ender is a write that ends a key (keyguard.go): after it answered, no
// node admits any of the key's secrets.
type ender struct {
	name string
	end  func(s *Store, tenant, id, owner string) error
}

var enders = []ender{
	{"revoke", func(s *Store, tenant, id, _ string) error { _, err := s.RevokeKey("op", tenant, id); return err }},
	{"bulk revoke", func(s *Store, tenant, id, _ string) error {
		res, err := s.RevokeKeys("op", tenant, []string{id})
		if err == nil && !res[0].OK {
			return errors.New(*res[0].Error)
		}
		return err
	}},
	{"delete", func(s *Store, tenant, id, _ string) error { return s.DeleteKey("op", tenant, id) }},
	{"delete owner keys", func(s *Store, tenant, _, owner string) error {
		_, err := s.DeleteOwnerKeys("op", tenant, owner)
		return err
	}},
	{"delete user", func(s *Store, tenant, _, owner string) error { return s.DeleteUser("op", tenant, owner) }},
}

// rejectedEverywhere fails the test when a node admits one of the secrets
// (it may be called from any goroutine).
func rejectedEverywhere(t *testing.T, nodes []*Store, tenant string, secrets ...string) {
	t.Helper()
	for i, n := range nodes {
		for j, sec := range secrets {
			switch _, v, err := n.Verify(tenant, sec, time.Now()); {
			case err != nil:
				t.Errorf("node %d: Verify: %v", i+1, err)
			case v == VerdictValid:
				t.Errorf("node %d admits secret %d of an ended key", i+1, j)
			}
		}
	}
}

// TestKeyEndsVersusRotation: a rotation (with a grace period) through one
// node and a revoke or delete through another meet, in both orders,
// deterministically (the first to commit is held just before its write
// while the other runs to its end). Whatever order, once both answered
// every node rejects every secret of the key, and the ending call
// succeeded. Without the expectations the later write is built on what it
// read before the other: a rotation puts the revoked secret back in grace
// and issues an active one, a revoke or delete leaves the rotated secret
// active.
func TestKeyEndsVersusRotation(t *testing.T) {
	const tenant = "kev"
	nodes, _ := livenessCluster(t, etcdtest.Shared(t), 3, 2*time.Second)
	enable(t, nodes[0], tenant)
	grace := Duration(time.Hour)
	for i, e := range enders {
		t.Run("rotation lands during "+e.name, func(t *testing.T) {
			owner := fmt.Sprintf("r%d", i)
			_, err := nodes[0].PutUser("op", tenant, owner, []Role{RoleDeveloper})
			mustNil(t, err)
			key, old := mustKey(t, nodes[0], tenant, owner, KeyInput{})
			var rotated string
			holdOnce(t, nodes[0], key.ID, func() {
				var err error
				_, rotated, err = nodes[1].RotateKey("op", tenant, key.ID, RotateInput{GracePeriod: &grace})
				mustNil(t, err)
			})
			if err := e.end(nodes[0], tenant, key.ID, owner); err != nil {
				t.Fatalf("%s after a rotation through another node: %v", e.name, err)
			}
			nodes[0].beforeCommit = nil
			rejectedEverywhere(t, nodes, tenant, old, rotated)
		})
		t.Run(e.name+" lands during rotation", func(t *testing.T) {
			owner := fmt.Sprintf("e%d", i)
			_, err := nodes[0].PutUser("op", tenant, owner, []Role{RoleDeveloper})
			mustNil(t, err)
			key, old := mustKey(t, nodes[0], tenant, owner, KeyInput{})
			holdOnce(t, nodes[1], key.ID, func() { mustNil(t, e.end(nodes[0], tenant, key.ID, owner)) })
			_, rotated, err := nodes[1].RotateKey("op", tenant, key.ID, RotateInput{GracePeriod: &grace})
			nodes[1].beforeCommit = nil
			if k := KindOf(err); k != KindConflict && k != KindNotFound {
				t.Errorf("rotation of a key ended meanwhile through another node: %v, want 409 or 404", err)
			}
			rejectedEverywhere(t, nodes, tenant, old)
			if rotated != "" {
				rejectedEverywhere(t, nodes, tenant, rotated)
			}
			if k, err := nodes[2].GetKey(tenant, key.ID); err == nil && k.Status != StatusRevoked {
				t.Errorf("key is %s after a %s", k.Status, e.name)
			}
		})
	}
}

// TestConcurrentEditsKept: two edits of one record through two nodes, the
// second committing while the first is held before its write: both edits
// are kept (the first reads again), and a tenant disabled meanwhile stays
// disabled. Without the expectations the first overwrites the second with
// what it read before it.
func TestConcurrentEditsKept(t *testing.T) {
	const tenant = "cek"
	nodes, _ := livenessCluster(t, etcdtest.Shared(t), 2, 2*time.Second)
	enable(t, nodes[0], tenant)

	t.Run("key fields", func(t *testing.T) {
		key, _ := mustKey(t, nodes[0], tenant, "o", KeyInput{})
		holdOnce(t, nodes[0], key.ID, func() {
			_, err := nodes[1].UpdateKey("op", tenant, key.ID, KeyPatch{Description: Some("from node 2")})
			mustNil(t, err)
		})
		_, err := nodes[0].UpdateKey("op", tenant, key.ID, KeyPatch{Name: Some("from node 1")})
		nodes[0].beforeCommit = nil
		mustNil(t, err)
		for i, n := range nodes {
			k, err := n.GetKey(tenant, key.ID)
			mustNil(t, err)
			if k.Name != "from node 1" || k.Description != "from node 2" {
				t.Errorf("node %d: name %q, description %q: an edit was lost", i+1, k.Name, k.Description)
			}
		}
	})

	t.Run("tenant disabled during a settings edit", func(t *testing.T) {
		holdOnce(t, nodes[0], "max_keys_per_user", func() {
			_, err := nodes[1].UpdateSettings("op", tenant, SettingsPatch{APIKeysEnabled: Some(false)})
			mustNil(t, err)
		})
		_, err := nodes[0].UpdateSettings("op", tenant, SettingsPatch{MaxKeysPerUser: Some(7)})
		nodes[0].beforeCommit = nil
		mustNil(t, err)
		for i, n := range nodes {
			st, err := n.GetSettings(tenant)
			mustNil(t, err)
			if st.APIKeysEnabled || st.MaxKeysPerUser != 7 {
				t.Errorf("node %d: api_keys_enabled %v, max_keys_per_user %d: an edit was lost", i+1, st.APIKeysEnabled, st.MaxKeysPerUser)
			}
			if n.TenantEnabled(tenant) {
				t.Errorf("node %d: the tenant disabled through node 2 admits again", i+1)
			}
		}
	})

	t.Run("tenant name and key limit", func(t *testing.T) {
		holdOnce(t, nodes[0], "renamed", func() {
			_, err := nodes[1].UpdateTenant("op", tenant, TenantPatch{KeyLimit: Some(500)})
			mustNil(t, err)
		})
		_, err := nodes[0].UpdateTenant("op", tenant, TenantPatch{Name: Some("renamed")})
		nodes[0].beforeCommit = nil
		mustNil(t, err)
		tn, err := nodes[1].GetTenant(tenant)
		mustNil(t, err)
		if tn.Name != "renamed" || tn.KeyLimit == nil || *tn.KeyLimit != 500 {
			t.Errorf("tenant name %q, key_limit %v: an edit was lost", tn.Name, tn.KeyLimit)
		}
	})

}

// TestKeyWritesRaceAcrossNodes: on three nodes sharing an etcd, round after
// round revokes, rotations (with and without grace) and edits of one key
// are sent through every node at random moments. After each answer of a
// revoke, every node rejects every secret of the key issued so far, and
// at the end of the round every secret any rotation returned.
func TestKeyWritesRaceAcrossNodes(t *testing.T) {
	const tenant, rounds = "kwr", 40
	nodes, _ := livenessCluster(t, etcdtest.Shared(t), 3, 2*time.Second)
	enable(t, nodes[0], tenant)
	spread := 20 * time.Millisecond
	revokedRounds := 0
	for r := range rounds {
		key, first := mustKey(t, nodes[0], tenant, fmt.Sprintf("o%d", r), KeyInput{})
		var mu sync.Mutex
		secrets := []string{first}
		revoked := false
		snapshot := func() []string {
			mu.Lock()
			defer mu.Unlock()
			return append([]string(nil), secrets...)
		}
		var wg sync.WaitGroup
		for n := range nodes {
			for w := range 2 {
				wg.Go(func() {
					time.Sleep(rand.N(spread))
					s := nodes[n]
					var err error
					switch op := rand.N(4); op {
					case 0:
						if _, err = s.RevokeKey("op", tenant, key.ID); err == nil {
							mu.Lock()
							revoked = true
							mu.Unlock()
							rejectedEverywhere(t, nodes, tenant, snapshot()...)
						}
					case 1, 2:
						in := RotateInput{}
						if op == 2 {
							g := Duration(time.Hour)
							in.GracePeriod = &g
						}
						var sec string
						if _, sec, err = s.RotateKey("op", tenant, key.ID, in); err == nil {
							mu.Lock()
							secrets = append(secrets, sec)
							mu.Unlock()
						}
					default:
						_, err = s.UpdateKey("op", tenant, key.ID, KeyPatch{Description: Some(fmt.Sprintf("node %d worker %d", n, w))})
					}
					switch {
					case err == nil, KindOf(err) == KindConflict: // e.g. revoked already
					case errors.Is(err, ErrUnavailable):
						t.Logf("round %d: %v", r, err) // retries ran out: allowed, not expected
					default:
						t.Errorf("round %d node %d: %v", r, n+1, err)
					}
				})
			}
		}
		wg.Wait()
		if revoked {
			revokedRounds++
			rejectedEverywhere(t, nodes, tenant, snapshot()...)
			k, err := nodes[rand.N(len(nodes))].GetKey(tenant, key.ID)
			mustNil(t, err)
			if k.Status != StatusRevoked {
				t.Errorf("round %d: a revoke answered but the key is %s", r, k.Status)
			}
		}
		if t.Failed() {
			t.Fatalf("round %d failed", r)
		}
	}
	t.Logf("%d of %d rounds revoked the key", revokedRounds, rounds)
}
