package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestCrashShort is `make test-crash` in small: 3 kill -9s of the real
// binary under concurrent admin API writes, each followed by a restart on
// the same store and a check of every acknowledged change.
func TestCrashShort(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary (kill -9 and restart); skipped with -short")
	}
	bin := keygateBinary(t)
	seed := uint64(time.Now().UnixNano())
	start := time.Now()
	res, err := run(config{
		Bin: bin, Dir: t.TempDir(), Iterations: 3, Seed: seed, Workers: 4,
		MinDelay: 50 * time.Millisecond, MaxDelay: 800 * time.Millisecond, Logf: t.Logf,
	})
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
		t.Fatalf("seed %d: %v (replay: go run ./cmd/keygate-crash --iterations 3 --seed %d)", seed, err, seed)
	}
	t.Logf("%s in %v", res.Summary(3), time.Since(start).Round(time.Millisecond))
	if res.Passed != 3 || res.Acked < 3 {
		t.Fatalf("only %d iterations passed with %d acknowledged changes", res.Passed, res.Acked)
	}
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
