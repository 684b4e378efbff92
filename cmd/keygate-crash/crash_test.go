package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestCrashShort is `make test-crash` in small: 3 kill -9s of the real
// binary under concurrent admin API writes, each followed by a restart on
// the same store and a check of every acknowledged change.
func TestCrashShort(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary (kill -9 and restart); skipped with -short")
	}
	runCrash(t, config{
		Bin: keygateBinary(t), Dir: t.TempDir(), Iterations: 3, Workers: 4,
		MinDelay: 50 * time.Millisecond, MaxDelay: 800 * time.Millisecond,
	}, "--iterations 3")
}

// TestCrashEtcd is the crash test in etcd mode (`keygate-crash --etcd
// --kill-etcd-every 5`): keygate keeps its keys in an etcd server started
// here on loopback, which outlives 20 kill -9s of keygate under concurrent
// admin writes, except every fifth, which kills etcd first (writes in
// flight) and restarts it on its data. After each restart every
// acknowledged change is checked, as in Pebble mode.
func TestCrashEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary and etcd (kill -9 and restart); skipped with -short")
	}
	srv, err := startEtcd()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	const iterations, killEtcdEvery = 20, 5
	dir, prefix := t.TempDir(), etcdtest.Prefix(t)
	res := runCrash(t, config{
		Bin: keygateBinary(t), Dir: dir, Iterations: iterations, Workers: 4,
		MinDelay: 50 * time.Millisecond, MaxDelay: 300 * time.Millisecond,
		Etcd: &etcdCluster{Endpoint: srv.Endpoint, Prefix: prefix, Server: srv, KillEvery: killEtcdEvery},
	}, "--etcd --kill-etcd-every 5 --iterations 20 --max-delay 300ms")
	if res.EtcdKills != iterations/killEtcdEvery {
		t.Errorf("etcd was killed in %d iterations, want %d", res.EtcdKills, iterations/killEtcdEvery)
	}
	// The keys were in etcd, not in a Pebble store.
	if _, err := os.Stat(filepath.Join(dir, "keys")); !os.IsNotExist(err) {
		t.Errorf("a Pebble store was created (%v)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := srv.Client(t).Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if got.Count < int64(res.Keys) {
		t.Errorf("etcd holds %d records under %s, want at least one per key (%d)", got.Count, prefix, res.Keys)
	}
}

// runCrash runs the crash test (cfg without Seed and Logf) and fails the
// test, listing the violations, unless every iteration passed.
func runCrash(t *testing.T, cfg config, replay string) *result {
	t.Helper()
	cfg.Seed, cfg.Logf = uint64(time.Now().UnixNano()), t.Logf
	start := time.Now()
	res, err := run(cfg)
	if err != nil {
		if res != nil {
			for i, v := range res.Violations {
				if i == 30 {
					t.Errorf("… and %d more", len(res.Violations)-i)
					break
				}
				t.Error(v)
			}
		}
		t.Fatalf("seed %d: %v (replay: go run ./cmd/keygate-crash %s --seed %d)", cfg.Seed, err, replay, cfg.Seed)
	}
	t.Logf("%s in %v", res.Summary(cfg.Iterations), time.Since(start).Round(time.Millisecond))
	if res.Passed != cfg.Iterations || res.Acked < cfg.Iterations {
		t.Fatalf("only %d iterations passed with %d acknowledged changes", res.Passed, res.Acked)
	}
	return res
}

// TestCrashDetectsLoss: the checker reports lost changes (it must not pass
// vacuously). Against a live server, the tracked state claims a create, an
// edit, a revoke and a rotation the server never saw.
func TestCrashDetectsLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary; skipped with -short")
	}
	bin := keygateBinary(t)
	s, err := newSite(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	p, err := s.start(bin, "detect")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	c := newClient(s)
	defer c.close()
	if err := c.waitReady(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if status, raw, err := c.api("PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}); err != nil || status != 200 {
		t.Fatalf("settings: %d %s %v", status, raw, err)
	}
	create := func() *trackedKey {
		status, raw, err := c.api("POST", tenantPath+"/keys", map[string]any{"name": "real", "owner": "o"})
		var ks keyAndSecret
		if err != nil || status != 201 || json.Unmarshal(raw, &ks) != nil {
			t.Fatalf("create: %d %s %v", status, raw, err)
		}
		return &trackedKey{ID: ks.Key.ID, Owner: "o", Secret: ks.Secret, meta: meta{Name: "real"}, acked: 1}
	}
	edited, revoked, rotated := create(), create(), create()
	edited.Name = "an edit the server never saw"
	revoked.Revoked = true
	rotated.Old, rotated.Secret = []string{rotated.Secret}, "kg_0000000000000000000000_000000"
	ghost := &trackedKey{ID: "key_00000000000000000000000000", Owner: "ghost", Secret: "kg_0000000000000000000000_000000", acked: 1}

	v := &verifier{c: c}
	v.verifyAll([]*worker{{keys: []*trackedKey{edited, revoked, rotated, ghost}}})
	all := strings.Join(v.violations, "\n")
	for _, want := range []string{
		ghost.ID + " (owner ghost, 1 acknowledged changes): acknowledged create lost",
		edited.ID + " (owner o, 1 acknowledged changes): acknowledged edit lost",
		revoked.ID + " (owner o, 1 acknowledged changes): status \"active\", want \"revoked\"",
		revoked.ID + " (owner o, 1 acknowledged changes): gateway answers its current secret 200",
		rotated.ID + " (owner o, 1 acknowledged changes): gateway answers its current secret 401 \"invalid_key\"",
		rotated.ID + " (owner o, 1 acknowledged changes): gateway answers its secret rotated out #1 with 200",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no violation %q in:\n%s", want, all)
		}
	}
	if len(v.violations) != 6 {
		t.Errorf("%d violations, want 6:\n%s", len(v.violations), all)
	}
}
