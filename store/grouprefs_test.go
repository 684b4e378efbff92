package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// groupRef is a write through s that makes something of the tenant name
// group.
type groupRef struct {
	name  string
	write func(t *testing.T, s *Store, tenant, group string) error
}

var importSeq struct {
	sync.Mutex
	n int
}

// groupRefWrites are every write that makes something name a group.
var groupRefWrites = []groupRef{
	{"create", func(t *testing.T, s *Store, tenant, group string) error {
		_, _, err := s.CreateKey("op", tenant, "a", KeyInput{Name: "key", Group: group})
		return err
	}},
	{"bulk create", func(t *testing.T, s *Store, tenant, group string) error {
		_, _, err := s.CreateKeys("op", tenant, "b", []KeyInput{{Name: "key"}, {Name: "key", Group: group}})
		return err
	}},
	{"import", func(t *testing.T, s *Store, tenant, group string) error {
		importSeq.Lock()
		importSeq.n++
		secret := fmt.Sprintf("legacy-secret-number-%d", importSeq.n)
		importSeq.Unlock()
		res, _, err := s.ImportKeys("op", tenant, "c", []ImportInput{{KeyInput: KeyInput{Name: "key", Group: group}, Secret: secret}})
		if err == nil && res[0].Error != nil {
			return invalid("keys[0]", *res[0].Error)
		}
		return err
	}},
	{"patch", func(t *testing.T, s *Store, tenant, group string) error {
		key, _ := mustKey(t, s, tenant, "d", KeyInput{Name: "key"})
		_, err := s.UpdateKey("op", tenant, key.ID, KeyPatch{Group: Some(group)})
		return err
	}},
	{"default_group", func(t *testing.T, s *Store, tenant, group string) error {
		_, err := s.UpdateSettings("op", tenant, SettingsPatch{DefaultGroup: Some(group)})
		return err
	}},
}

// groupNodes opens n nodes on one etcd and a tenant with keys enabled.
func groupNodes(t *testing.T, n int, tenant string) []*Store {
	t.Helper()
	nodes := keyNodes(t, n, newClock())
	_, err := nodes[0].CreateTenant("op", TenantInput{ID: tenant})
	mustNil(t, err)
	_, err = nodes[0].UpdateSettings("op", tenant, SettingsPatch{APIKeysEnabled: Some(true), MaxKeysPerUser: Some(MaxKeysPerUserMax)})
	mustNil(t, err)
	return nodes
}

// TestGroupRefGuards: each write that makes something name a group meets a
// delete of that group on another node, in both orders, deterministically:
// the first to commit is held just before its write while the other runs
// to its end. The first must lose: the delete answers 409 (in use), the
// other write finds no group (400). Without the guards both commit and
// something names a deleted group.
func TestGroupRefGuards(t *testing.T) {
	const tenant = "grg"
	nodes := groupNodes(t, 2, tenant)
	for _, ref := range groupRefWrites {
		slug := strings.ReplaceAll(ref.name, " ", "-")
		t.Run(ref.name+" lands during the delete", func(t *testing.T) {
			group := "named-during-delete-" + slug
			_, err := nodes[0].PutGroup("op", tenant, group, GroupInput{})
			mustNil(t, err)
			holdOnce(t, nodes[0], group, func() { mustNil(t, ref.write(t, nodes[1], tenant, group)) })
			err = nodes[0].DeleteGroup("op", tenant, group)
			nodes[0].beforeCommit = nil
			if KindOf(err) != KindConflict {
				t.Errorf("delete of a group that a %s named meanwhile: %v, want 409 conflict", ref.name, err)
			}
			groupNamedOnlyIfExists(t, nodes[0], tenant, group)
		})
		t.Run("delete lands during "+ref.name, func(t *testing.T) {
			group := "deleted-during-" + slug
			_, err := nodes[0].PutGroup("op", tenant, group, GroupInput{})
			mustNil(t, err)
			holdOnce(t, nodes[1], group, func() { mustNil(t, nodes[0].DeleteGroup("op", tenant, group)) })
			err = ref.write(t, nodes[1], tenant, group)
			nodes[1].beforeCommit = nil
			if KindOf(err) != KindInvalid || !strings.Contains(err.Error(), "no group") {
				t.Errorf("%s naming a group deleted meanwhile: %v, want 400 no group", ref.name, err)
			}
			groupNamedOnlyIfExists(t, nodes[0], tenant, group)
		})
	}
}

// TestGroupDeleteRaceAcrossNodes: on three nodes sharing an etcd, round
// after round a node deletes a group while the others make keys (or the
// default_group) name it, started at random moments over about a delete's
// time. Afterwards either the group exists or nothing names it.
func TestGroupDeleteRaceAcrossNodes(t *testing.T) {
	const tenant, rounds = "grr", 40
	nodes := groupNodes(t, 3, tenant)
	// How long a delete takes here (it reads every key of the tenant):
	// only to spread the calls below; nothing is asserted on it.
	_, err := nodes[0].PutGroup("op", tenant, "probe", GroupInput{})
	mustNil(t, err)
	began := time.Now()
	mustNil(t, nodes[0].DeleteGroup("op", tenant, "probe"))
	spread := 3*time.Since(began)/2 + time.Millisecond

	// lost reports whether err is an answer a call may give when it loses
	// the race: the group is gone (400), in use (409), or the retries ran
	// out (503, logged: none expected, but not wrong).
	lost := func(what string, err error) bool {
		if errors.Is(err, ErrUnavailable) {
			t.Logf("%s: %v", what, err)
			return true
		}
		return KindOf(err) == KindInvalid && strings.Contains(err.Error(), "no group") || KindOf(err) == KindConflict
	}
	deleted := 0
	for r := range rounds {
		group := fmt.Sprintf("g%d", r)
		_, err := nodes[0].PutGroup("op", tenant, group, GroupInput{})
		mustNil(t, err)
		var wg sync.WaitGroup
		for i := range 2 {
			ref := groupRefWrites[rand.N(len(groupRefWrites))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(rand.N(spread))
				if err := ref.write(t, nodes[1+i], tenant, group); err != nil && !lost(ref.name, err) {
					t.Errorf("round %d %s: %v", r, ref.name, err)
				}
			}()
		}
		err = nodes[0].DeleteGroup("op", tenant, group)
		if err != nil && !lost("delete", err) {
			t.Errorf("round %d delete: %v", r, err)
		}
		wg.Wait()
		if err == nil {
			deleted++
		}
		groupNamedOnlyIfExists(t, nodes[0], tenant, group)
		if t.Failed() {
			break
		}
	}
	t.Logf("%d rounds: the group was deleted in %d", rounds, deleted)
}

// holdOnce makes the first of s's commits that mentions text (in a key or
// a value) run during just before it writes.
func holdOnce(t *testing.T, s *Store, text string, during func()) {
	var once sync.Once
	s.beforeCommit = func(b *Batch) {
		for _, op := range b.ops {
			if bytes.Contains(op.key, []byte(text)) || bytes.Contains(op.value, []byte(text)) {
				once.Do(during)
				return
			}
		}
	}
	t.Cleanup(func() { s.beforeCommit = nil })
}

// groupNamedOnlyIfExists fails the test when the group is gone but a key or
// the tenant's default_group still names it.
func groupNamedOnlyIfExists(t *testing.T, s *Store, tenant, group string) {
	t.Helper()
	if _, err := s.GetGroup(tenant, group); err == nil {
		return
	} else if KindOf(err) != KindNotFound {
		t.Fatal(err)
	}
	mustNil(t, s.scanTenantKeys(tenant, func(rec *keyRecord) bool {
		if rec.Group == group {
			t.Errorf("key %s names the deleted group %s", rec.ID, group)
		}
		return true
	}))
	st, err := s.GetSettings(tenant)
	mustNil(t, err)
	if st.DefaultGroup != nil && *st.DefaultGroup == group {
		t.Errorf("default_group names the deleted group %s", group)
	}
}

// TestTokenDeleteUserRace: CreateToken for a user and DeleteUser of it on
// two nodes, in both orders, deterministically as in TestGroupRefGuards:
// no token survives the delete active (it would work again once a user of
// that id is created anew).
func TestTokenDeleteUserRace(t *testing.T) {
	const tenant = "tur"
	nodes := groupNodes(t, 2, tenant)
	for _, tc := range []struct {
		name      string
		tokenLate bool // the token's commit is held while the delete runs
	}{{"token lands during the delete", false}, {"delete lands during the token", true}} {
		t.Run(tc.name, func(t *testing.T) {
			user := "user-" + strings.ReplaceAll(tc.name, " ", "-")
			_, err := nodes[0].PutUser("op", tenant, user, []Role{RoleDeveloper})
			mustNil(t, err)
			var secret string
			var tokErr, delErr error
			createToken := func() { _, secret, tokErr = nodes[1].CreateToken("op", tenant, user, TokenInput{Name: "cli"}) }
			deleteUser := func() { delErr = nodes[0].DeleteUser("op", tenant, user) }
			if tc.tokenLate {
				holdOnce(t, nodes[1], user, deleteUser)
				createToken()
				if KindOf(tokErr) != KindNotFound {
					t.Errorf("token for a user deleted meanwhile: %v, want 404", tokErr)
				}
			} else {
				holdOnce(t, nodes[0], user, createToken)
				deleteUser()
				mustNil(t, tokErr)
			}
			mustNil(t, delErr)
			// A user of that id again: a token issued to the old one must not
			// work for it.
			_, err = nodes[0].PutUser("op", tenant, user, []Role{RoleTenantAdmin})
			mustNil(t, err)
			if secret != "" {
				if _, _, err := nodes[0].AuthenticateToken(secret); KindOf(err) != KindUnauthorized {
					t.Errorf("a token issued while its user was deleted authenticates the new user: %v", err)
				}
			}
		})
	}
}

// TestKeyAddDeleteUserRace: each way of adding an active key for a user
// (create, bulk create, import, rotating an expired key) lands on one node
// while DeleteUser of that user runs on another, after the delete read the
// user's keys: the delete must read again and revoke it. Without the owner
// guard (keyadds.go) the key stayed active for the deleted user.
func TestKeyAddDeleteUserRace(t *testing.T) {
	const tenant = "kur"
	clk := newClock()
	nodes := keyNodes(t, 2, clk)
	_, err := nodes[0].CreateTenant("op", TenantInput{ID: tenant})
	mustNil(t, err)
	_, err = nodes[0].UpdateSettings("op", tenant, SettingsPatch{APIKeysEnabled: Some(true)})
	mustNil(t, err)
	adds := []struct {
		name string
		// prepare runs before the delete; add, during it, on the other
		// node. add returns the id of the key it made active.
		prepare func(t *testing.T, user string) string
		add     func(t *testing.T, user, prepared string) string
	}{
		{"create", nil, func(t *testing.T, user, _ string) string {
			key, _ := mustKey(t, nodes[1], tenant, user, KeyInput{})
			return key.ID
		}},
		{"bulk create", nil, func(t *testing.T, user, _ string) string {
			keys, _, err := nodes[1].CreateKeys("op", tenant, user, []KeyInput{{Name: "bulk"}})
			mustNil(t, err)
			return keys[0].ID
		}},
		{"import", nil, func(t *testing.T, user, _ string) string {
			res, n, err := nodes[1].ImportKeys("op", tenant, user, []ImportInput{{KeyInput: KeyInput{Name: "imported"}, Secret: "imported-" + user + "-0123456789abcdef"}})
			mustNil(t, err)
			if n != 1 || res[0].ID == nil {
				t.Fatalf("import: %+v", res[0])
			}
			return *res[0].ID
		}},
		{"rotate expired", func(t *testing.T, user string) string {
			key, _ := mustKey(t, nodes[0], tenant, user, KeyInput{ExpiresAt: ptr(clk.Now().Add(time.Minute))})
			clk.Advance(time.Minute)
			return key.ID
		}, func(t *testing.T, _, id string) string {
			_, _, err := nodes[1].RotateKey("op", tenant, id, RotateInput{ExpiresAt: ptr(clk.Now().Add(time.Hour))})
			mustNil(t, err)
			return id
		}},
	}
	for _, a := range adds {
		t.Run(a.name+" lands during the delete", func(t *testing.T) {
			user := "user-" + strings.ReplaceAll(a.name, " ", "-")
			_, err := nodes[0].PutUser("op", tenant, user, []Role{RoleDeveloper})
			mustNil(t, err)
			var prepared, added string
			if a.prepare != nil {
				prepared = a.prepare(t, user)
			}
			holdOnce(t, nodes[0], user, func() { added = a.add(t, user, prepared) })
			mustNil(t, nodes[0].DeleteUser("op", tenant, user))
			key, err := nodes[0].GetKey(tenant, added)
			mustNil(t, err)
			if key.Status != StatusRevoked {
				t.Errorf("%s for a user deleted meanwhile: the key is %s, want revoked", a.name, key.Status)
			}
		})
	}
	// The other order: the delete lands while the create's commit is held.
	// The create finds the user gone and reads again; its key then has an
	// owner that is no longer a user, as after the delete on one node.
	t.Run("delete lands during the create", func(t *testing.T) {
		const user = "user-deleted-during-create"
		_, err := nodes[0].PutUser("op", tenant, user, []Role{RoleDeveloper})
		mustNil(t, err)
		holdOnce(t, nodes[1], user, func() { mustNil(t, nodes[0].DeleteUser("op", tenant, user)) })
		key, _ := mustKey(t, nodes[1], tenant, user, KeyInput{})
		if _, err := nodes[0].GetUser(tenant, user); KindOf(err) != KindNotFound {
			t.Fatalf("the user after its delete: %v", err)
		}
		got, err := nodes[0].GetKey(tenant, key.ID)
		mustNil(t, err)
		if got.Status != StatusActive || got.Owner != user {
			t.Errorf("key created after its owner's delete: %s, owner %s", got.Status, got.Owner)
		}
	})
}
