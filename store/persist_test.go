package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestReopenPersists(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := diskStore(t, dir, clk)
	enable(t, s, DefaultTenant)
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxExpiration: Some(Duration(720 * time.Hour)), MaxKeysPerUser: Some(7)})
	mustNil(t, err)
	_, err = s.CreateTenant("op", TenantInput{ID: "acme", KeyLimit: ptr(9)})
	mustNil(t, err)
	_, err = s.PutGroup("op", DefaultTenant, "g1", GroupInput{Rules: []Rule{{Methods: []string{"GET"}}}})
	mustNil(t, err)
	_, err = s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	_, tokSecret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "t"})
	mustNil(t, err)
	k1, sec1 := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "kept", Group: "g1", IPAllowlist: []string{"10.0.0.0/8"}})
	k2, sec2 := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "revoked"})
	k3, sec3old := mustKey(t, s, DefaultTenant, "bob", KeyInput{Name: "rotated"})
	_, err = s.RevokeKey("op", DefaultTenant, k2.ID)
	mustNil(t, err)
	_, sec3, err := s.RotateKey("op", DefaultTenant, k3.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	view, _, err := s.Verify(DefaultTenant, sec1, clk.Now())
	mustNil(t, err)
	usedAt := clk.Now().Add(time.Second)
	s.RecordUse(view, netip.MustParseAddr("10.1.1.1"), OutcomeOK, usedAt)
	s.RecordUse(view, netip.MustParseAddr("11.1.1.1"), OutcomeIPNotAllowed, usedAt)
	evsBefore := allEvents(t, s, DefaultTenant, EventQuery{})
	// Close flushes the buffered usage: nothing is lost on a graceful stop.
	mustNil(t, s.Close())
	mustNil(t, s.Close()) // twice is safe

	s = diskStore(t, dir, clk)
	st, err := s.GetSettings(DefaultTenant)
	mustNil(t, err)
	if !st.APIKeysEnabled || st.MaxKeysPerUser != 7 || st.MaxExpiration == nil || *st.MaxExpiration != Duration(720*time.Hour) {
		t.Fatalf("settings after reopen %+v", st)
	}
	if !s.TenantEnabled(DefaultTenant) || s.GroupView(DefaultTenant, "g1") == nil || s.GroupView(DefaultTenant, "g1").Allows("POST", "/") {
		t.Fatal("hot state not loaded on open")
	}
	if ten, err := s.GetTenant("acme"); err != nil || *ten.KeyLimit != 9 {
		t.Fatalf("tenant after reopen %+v %v", ten, err)
	}
	if ten, err := s.GetTenant(DefaultTenant); err != nil || ten.KeyCount != 3 {
		t.Fatalf("default tenant after reopen %+v %v", ten, err)
	}
	now := clk.Now()
	for _, c := range []struct {
		secret string
		want   Verdict
	}{{sec1, VerdictValid}, {sec2, VerdictRevoked}, {sec3, VerdictValid}, {sec3old, VerdictValid}} {
		if v := verdict(t, s, DefaultTenant, c.secret, now); v != c.want {
			t.Fatalf("after reopen: %s, want %s", vname(v), vname(c.want))
		}
	}
	if v := verdict(t, s, DefaultTenant, sec3old, now.Add(time.Hour)); v != VerdictInvalid {
		t.Fatalf("grace secret after its grace period: %s", vname(v))
	}
	if _, _, err := s.AuthenticateToken(tokSecret); err != nil {
		t.Fatalf("token after reopen: %v", err)
	}
	got, err := s.GetKey(DefaultTenant, k1.ID)
	mustNil(t, err)
	if got.Name != "kept" || got.Group != "g1" || got.IPAllowlist[0] != "10.0.0.0/8" ||
		got.LastUsedAt == nil || !got.LastUsedAt.Equal(usedAt) || *got.LastUsedIP != "10.1.1.1" {
		t.Fatalf("key after reopen %+v", got)
	}
	if got, _ := s.GetKey(DefaultTenant, k2.ID); got.Status != StatusRevoked || got.RevokedAt == nil {
		t.Fatalf("revocation lost: %+v", got)
	}
	u, err := s.Usage(DefaultTenant, k1.ID)
	mustNil(t, err)
	if u.Total != 2 || u.Outcomes["ok"] != 1 || u.Outcomes["ip_not_allowed"] != 1 {
		t.Fatalf("usage after reopen %+v", u)
	}
	evsAfter := allEvents(t, s, DefaultTenant, EventQuery{})
	// Every event survived, plus the denied-request summary of the final flush.
	if len(evsAfter) != len(evsBefore)+1 || evsAfter[len(evsAfter)-1].Type != "key.requests_denied" {
		t.Fatalf("%d events before close, %d after", len(evsBefore), len(evsAfter))
	}
	for i, e := range evsBefore {
		if a := evsAfter[i]; a.ID != e.ID || a.Type != e.Type || a.Actor != e.Actor {
			t.Fatalf("event %d: %+v became %+v", i, e, a)
		}
	}
	// Limits keep counting the persisted keys: alice has one active key
	// (and a revoked one) of her 7.
	for range 6 {
		mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	}
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "one too many"})
	wantErr(t, err, KindLimit, "key_limit_reached")
}

func TestClosed(t *testing.T) {
	clk := newClock()
	s := diskStore(t, t.TempDir(), clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	_ = verdict(t, s, DefaultTenant, secret, clk.Now())
	s.Wait()
	mustNil(t, s.Close())
	mustNil(t, s.Close())
	// Fail closed: a cached key is not admitted either.
	view, v, err := s.Verify(DefaultTenant, secret, clk.Now())
	if !errors.Is(err, ErrClosed) || v == VerdictValid || view != nil {
		t.Fatalf("Verify after Close: %+v %s %v", view, vname(v), err)
	}
	if _, v, err := s.Verify(DefaultTenant, NewSecret(KeyPrefix), clk.Now()); !errors.Is(err, ErrClosed) || v != VerdictInvalid {
		t.Fatalf("unknown key after Close: %s %v", vname(v), err)
	}
	checks := map[string]error{}
	_, checks["GetKey"] = s.GetKey(DefaultTenant, key.ID)
	_, _, checks["CreateKey"] = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "late"})
	_, checks["RevokeKey"] = s.RevokeKey("op", DefaultTenant, key.ID)
	_, checks["ListKeys"] = s.ListKeys(DefaultTenant, KeyQuery{})
	_, _, checks["ListEvents"] = s.ListEvents(DefaultTenant, EventQuery{})
	_, _, checks["AuthenticateToken"] = s.AuthenticateToken(NewSecret(TokenPrefix))
	_, checks["UpdateSettings"] = s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxKeysPerUser: Some(2)})
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) || KindOf(err) != KindInternal {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	// Recording and flushing after Close neither panic nor pretend success.
	s.RecordUse(&KeyView{ID: key.ID, Tenant: DefaultTenant}, netip.Addr{}, OutcomeOK, clk.Now())
	if err := s.Flush(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close: %v", err)
	}
	s.Wait() // no panic, no hang
}

func TestCloseDuringVerify(t *testing.T) {
	// Verify on the hit and the miss path while Close runs: no panic, no
	// race, and once Close has returned every Verify fails closed.
	for round := range 12 {
		s := memStore(t, nil)
		enable(t, s, DefaultTenant)
		_, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
		var wg sync.WaitGroup
		closed := make(chan struct{})
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					sec := secret
					if (g+i)%2 == 1 {
						sec = NewSecret(KeyPrefix) // miss path, negative fill
					}
					select {
					case <-closed:
						if _, v, err := s.Verify(DefaultTenant, sec, time.Now()); !errors.Is(err, ErrClosed) || v == VerdictValid {
							t.Errorf("round %d: Verify after Close returned: %s %v", round, vname(v), err)
						}
						return
					default:
					}
					if _, v, err := s.Verify(DefaultTenant, sec, time.Now()); err != nil && !errors.Is(err, ErrClosed) {
						t.Errorf("round %d: %s %v", round, vname(v), err)
						return
					}
				}
			}()
		}
		// Writes racing Close, too (their cache invalidation must not touch
		// closed caches).
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, _, err := s.CreateKey("op", DefaultTenant, "bob", KeyInput{Name: "racing"}); err != nil {
					if !errors.Is(err, ErrClosed) && KindOf(err) != KindLimit {
						t.Errorf("create during close: %v", err)
					}
					return
				}
			}
		}()
		time.Sleep(time.Duration(round%3+1) * time.Millisecond)
		mustNil(t, s.Close())
		close(closed)
		wg.Wait()
	}
}

func TestSchemaVersion(t *testing.T) {
	dir := t.TempDir()
	s := diskStore(t, dir, newClock())
	schema := func(kv KV) string {
		t.Helper()
		v, err := kv.Get([]byte(pMeta + "schema"))
		mustNil(t, err)
		return string(v)
	}
	if v := schema(s.kv); v != "2" || SchemaVersion != 2 {
		t.Fatalf("schema record %q", v)
	}
	mustNil(t, s.Close())

	for _, c := range []struct {
		value, after string
		ok           bool
	}{{"3", "", false}, {"abc", "", false}, {"0", "", false}, {"1", "2", true}, {"2", "2", true}} {
		kv, err := openPebble(dir, nil, nopLogger{}, 8<<20, mergeValues)
		mustNil(t, err)
		var b Batch
		b.Set([]byte(pMeta+"schema"), []byte(c.value))
		mustNil(t, kv.Apply(&b, true))
		mustNil(t, kv.Close())
		s, err := Open(Options{Dir: dir, FlushInterval: -1})
		if c.ok {
			mustNil(t, err)
			// A version-1 store is raised, so older binaries refuse it.
			if v := schema(s.kv); v != c.after {
				t.Fatalf("schema %q: %q after open, want %q", c.value, v, c.after)
			}
			mustNil(t, s.Close())
			continue
		}
		if err == nil {
			_ = s.Close()
			t.Fatalf("schema %q: a store of another layout was opened", c.value)
		}
		if c.value == "3" && !strings.Contains(err.Error(), "newer") {
			t.Fatalf("schema 3: %v", err)
		}
	}
	// A refused store was not modified and is not left locked.
	s2 := diskStore(t, dir, nil)
	if _, err := s2.GetTenant(DefaultTenant); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open without a directory")
	}
	dir := t.TempDir()
	s := diskStore(t, dir, nil)
	// The same directory cannot be opened twice at once (Pebble's lock).
	if s2, err := Open(Options{Dir: dir, FlushInterval: -1}); err == nil {
		_ = s2.Close()
		t.Fatal("opened a store twice")
	}
	mustNil(t, s.Close())
	file := filepath.Join(dir, "file")
	mustNil(t, os.WriteFile(file, []byte("x"), 0o600))
	if _, err := Open(Options{Dir: file, FlushInterval: -1}); err == nil {
		t.Fatal("opened a store in a file")
	}
}

// TestSecretNeverStored: no secret (nor its random part) is in any file of
// the store, in any event, or in any list answer.
func TestSecretNeverStored(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s := diskStore(t, dir, clk)
	enable(t, s, DefaultTenant)
	const marker = "marker-name-7f3a"
	var secrets []string
	var ids []string
	for i := range 3 {
		k, sec := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: marker, IPAllowlist: []string{"10.0.0.0/8"}})
		secrets = append(secrets, sec)
		ids = append(ids, k.ID)
		var grace *Duration
		if i == 1 {
			grace = dur(time.Hour)
		}
		_, sec2, err := s.RotateKey("op", DefaultTenant, k.ID, RotateInput{GracePeriod: grace})
		mustNil(t, err)
		secrets = append(secrets, sec2)
		_, err = s.UpdateKey("op", DefaultTenant, k.ID, KeyPatch{Description: Some("edited")})
		mustNil(t, err)
		view, v, err := s.Verify(DefaultTenant, sec2, clk.Now())
		if err != nil || v != VerdictValid {
			t.Fatal(vname(v), err)
		}
		s.RecordUse(view, netip.MustParseAddr("10.0.0.1"), OutcomeOK, clk.Now())
		s.RecordUse(view, netip.MustParseAddr("11.0.0.1"), OutcomeIPNotAllowed, clk.Now())
	}
	_, err := s.RevokeKey("op", DefaultTenant, ids[0])
	mustNil(t, err)
	_, err = s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	for range 2 {
		_, sec, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: marker})
		mustNil(t, err)
		secrets = append(secrets, sec)
		_, _, _ = s.AuthenticateToken(sec)
	}
	mustNil(t, s.Flush())

	leaks := func(b []byte) string {
		for _, sec := range secrets {
			random := sec[strings.IndexByte(sec, '_')+1 : len(sec)-checksumLen-1]
			if bytes.Contains(b, []byte(sec)) {
				return sec
			}
			if bytes.Contains(b, []byte(random)) {
				return "random part of " + Hint(sec)
			}
		}
		return ""
	}
	evs := allEvents(t, s, DefaultTenant, EventQuery{})
	if len(evs) < 10 {
		t.Fatalf("only %d events", len(evs))
	}
	for _, e := range evs {
		b, _ := json.Marshal(e)
		if l := leaks(b); l != "" {
			t.Fatalf("event %s holds %s", e.Type, l)
		}
	}
	page, err := s.ListKeys(DefaultTenant, KeyQuery{})
	mustNil(t, err)
	b, _ := json.Marshal(page)
	if l := leaks(b); l != "" {
		t.Fatalf("key list holds %s", l)
	}
	toks, err := s.ListTokens(DefaultTenant, "alice")
	mustNil(t, err)
	b, _ = json.Marshal(toks)
	if l := leaks(b); l != "" {
		t.Fatalf("token list holds %s", l)
	}
	mustNil(t, s.Close())

	files, found := 0, 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(marker)) {
			found++
		}
		if l := leaks(b); l != "" {
			t.Errorf("%s holds %s", p, l)
		}
		return nil
	})
	mustNil(t, err)
	// The search itself works: the keys' names are readable in the files.
	if files == 0 || found == 0 {
		t.Fatalf("%d files, marker found in %d: the search proves nothing", files, found)
	}
}
