package store

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestEventsForEveryChange(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	type want struct {
		typ, actor string
		keyID      bool
		detail     string // a key of Detail that must be present
	}
	seen := 0
	step := func(w want, op func() error) {
		t.Helper()
		clk.Advance(time.Second)
		mustNil(t, op())
		evs := allEvents(t, s, "acme", EventQuery{})
		if len(evs) != seen+1 {
			t.Fatalf("%s: %d new events", w.typ, len(evs)-seen)
		}
		seen = len(evs)
		e := evs[len(evs)-1]
		if e.Type != w.typ || e.Actor != w.actor || e.Tenant != "acme" || !e.Time.Equal(clk.Now()) || e.Detail == nil {
			t.Fatalf("event %+v, want %+v", e, w)
		}
		if w.keyID != (e.KeyID != nil) {
			t.Fatalf("%s: key_id %v", w.typ, e.KeyID)
		}
		if w.detail != "" {
			if _, ok := e.Detail[w.detail]; !ok {
				t.Fatalf("%s: detail %v lacks %q", w.typ, e.Detail, w.detail)
			}
		}
		b, _ := json.Marshal(e)
		for _, f := range []string{`"id"`, `"time"`, `"type"`, `"actor"`, `"key_id"`, `"detail"`} {
			if !strings.Contains(string(b), f) {
				t.Fatalf("event JSON %s lacks %s", b, f)
			}
		}
	}
	var keyID, keyID2, tokID string
	step(want{"tenant.created", "operator", false, "name"}, func() error {
		_, err := s.CreateTenant("operator", TenantInput{ID: "acme"})
		return err
	})
	step(want{"tenant.updated", "operator", false, "key_limit"}, func() error {
		_, err := s.UpdateTenant("operator", "acme", TenantPatch{KeyLimit: Some(10)})
		return err
	})
	step(want{"settings.updated", "root", false, "api_keys_enabled"}, func() error {
		_, err := s.UpdateSettings("root", "acme", SettingsPatch{APIKeysEnabled: Some(true)})
		return err
	})
	step(want{"user.updated", "root", false, "roles"}, func() error {
		_, err := s.PutUser("root", "acme", "alice", []Role{RoleDeveloper})
		return err
	})
	step(want{"token.created", "root", false, "token_id"}, func() error {
		tok, _, err := s.CreateToken("root", "acme", "alice", TokenInput{Name: "t"})
		if err == nil {
			tokID = tok.ID
		}
		return err
	})
	step(want{"token.revoked", "root", false, "token_id"}, func() error { return s.RevokeToken("root", "acme", "alice", tokID) })
	step(want{"group.created", "root", false, "group"}, func() error {
		_, err := s.PutGroup("root", "acme", "g", GroupInput{})
		return err
	})
	step(want{"group.updated", "root", false, "group"}, func() error {
		_, err := s.PutGroup("root", "acme", "g", GroupInput{Description: "x"})
		return err
	})
	step(want{"key.created", "alice", true, "owner"}, func() error {
		k, _, err := s.CreateKey("alice", "acme", "alice", KeyInput{Name: "k1", Group: "g"})
		if err == nil {
			keyID = k.ID
		}
		return err
	})
	step(want{"key.updated", "alice", true, "fields"}, func() error {
		_, err := s.UpdateKey("alice", "acme", keyID, KeyPatch{Name: Some("k1 renamed")})
		return err
	})
	step(want{"key.rotated", "alice", true, "grace_period"}, func() error {
		_, _, err := s.RotateKey("alice", "acme", keyID, RotateInput{GracePeriod: dur(time.Minute)})
		return err
	})
	step(want{"key.revoked", "admin", true, ""}, func() error {
		_, err := s.RevokeKey("admin", "acme", keyID)
		return err
	})
	step(want{"key.created", "alice", true, ""}, func() error {
		k, _, err := s.CreateKey("alice", "acme", "alice", KeyInput{Name: "k2"})
		if err == nil {
			keyID2 = k.ID
		}
		return err
	})
	step(want{"key.revoked", "admin", true, ""}, func() error {
		_, err := s.RevokeKeys("admin", "acme", []string{keyID2, "key_nope"})
		return err
	})
	step(want{"key.deleted", "alice", true, "name"}, func() error { return s.DeleteKey("alice", "acme", keyID) })
	step(want{"key.deleted", "alice", true, ""}, func() error {
		_, err := s.DeleteOwnerKeys("alice", "acme", "alice")
		return err
	})
	step(want{"group.deleted", "root", false, "group"}, func() error { return s.DeleteGroup("root", "acme", "g") })
	step(want{"user.deleted", "root", false, "user"}, func() error { return s.DeleteUser("root", "acme", "alice") })

	// Failed operations write nothing.
	before := len(allEvents(t, s, "acme", EventQuery{}))
	_, _ = s.RevokeKey("admin", "acme", keyID)
	_, _ = s.UpdateSettings("root", "acme", SettingsPatch{MaxKeysPerUser: Some(0)})
	_, _, _ = s.CreateKey("alice", "acme", "alice", KeyInput{Name: "x"})
	_ = s.DeleteGroup("root", "acme", "g")
	if _, err := s.RevokeKeys("admin", "acme", []string{"key_nope"}); err != nil {
		t.Fatal(err)
	}
	if after := len(allEvents(t, s, "acme", EventQuery{})); after != before {
		t.Fatalf("failed operations wrote %d events", after-before)
	}
	// The default tenant's events are its own.
	for _, e := range allEvents(t, s, DefaultTenant, EventQuery{}) {
		if e.Tenant != DefaultTenant {
			t.Fatalf("event of %s listed for the default tenant", e.Tenant)
		}
	}
}

func TestListEvents(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	k1, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	clk.Advance(time.Hour)
	mark := clk.Now()
	k2, _ := mustKey(t, s, DefaultTenant, "bob", KeyInput{})
	for i := range 3 {
		_, err := s.UpdateKey("op", DefaultTenant, k1.ID, KeyPatch{Description: Some("v" + string(rune('0'+i)))})
		mustNil(t, err)
		clk.Advance(time.Second)
	}
	_, err := s.RevokeKey("op", DefaultTenant, k2.ID)
	mustNil(t, err)

	all := allEvents(t, s, DefaultTenant, EventQuery{})
	// Oldest first, ids strictly increasing, times not decreasing.
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID || all[i].Time.Before(all[i-1].Time) {
			t.Fatalf("events out of order at %d: %s %s", i, all[i-1].ID, all[i].ID)
		}
	}
	types := func(evs []*Event) string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Type)
		}
		return strings.Join(out, ",")
	}
	if got := types(allEvents(t, s, DefaultTenant, EventQuery{KeyID: k1.ID})); got != "key.created,key.updated,key.updated,key.updated" {
		t.Fatalf("events of k1: %s", got)
	}
	if got := types(allEvents(t, s, DefaultTenant, EventQuery{KeyID: k2.ID})); got != "key.created,key.revoked" {
		t.Fatalf("events of k2: %s", got)
	}
	if got := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.updated"}); len(got) != 3 {
		t.Fatalf("%d key.updated events", len(got))
	}
	if got := allEvents(t, s, DefaultTenant, EventQuery{Type: "key.created", KeyID: k2.ID}); len(got) != 1 || *got[0].KeyID != k2.ID {
		t.Fatalf("combined filter: %d", len(got))
	}
	since := allEvents(t, s, DefaultTenant, EventQuery{Since: mark})
	if types(since) != "key.created,key.updated,key.updated,key.updated,key.revoked" {
		t.Fatalf("since: %s", types(since))
	}
	for _, e := range since {
		if e.Time.Before(mark) {
			t.Fatalf("event at %v before since %v", e.Time, mark)
		}
	}
	if got := allEvents(t, s, DefaultTenant, EventQuery{Since: clk.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("%d events from the future", len(got))
	}
	if got := allEvents(t, s, DefaultTenant, EventQuery{Type: "no.such"}); len(got) != 0 {
		t.Fatal("unknown type matched")
	}

	// Pagination: limit 2 walks exactly all events; a filter pages as well.
	var ids []string
	q := EventQuery{Limit: 2}
	for pages := 0; ; pages++ {
		page, next, err := s.ListEvents(DefaultTenant, q)
		mustNil(t, err)
		if len(page) > 2 || pages > len(all) {
			t.Fatalf("page of %d", len(page))
		}
		for _, e := range page {
			ids = append(ids, e.ID)
		}
		if next == "" {
			break
		}
		if next != page[len(page)-1].ID {
			t.Fatal("cursor is not the last id")
		}
		q.Cursor = next
	}
	if len(ids) != len(all) || !sort.StringsAreSorted(ids) || ids[0] != all[0].ID {
		t.Fatalf("walked %d of %d events", len(ids), len(all))
	}
	page, next, err := s.ListEvents(DefaultTenant, EventQuery{KeyID: k1.ID, Limit: 3})
	mustNil(t, err)
	page2, next2, err := s.ListEvents(DefaultTenant, EventQuery{KeyID: k1.ID, Limit: 3, Cursor: next})
	mustNil(t, err)
	if len(page) != 3 || next == "" || len(page2) != 1 || next2 != "" || page2[0].ID <= page[2].ID {
		t.Fatalf("filtered pages: %d+%d", len(page), len(page2))
	}
	// Since and cursor together: the later of the two wins.
	page, _, err = s.ListEvents(DefaultTenant, EventQuery{Since: mark, Cursor: all[0].ID})
	mustNil(t, err)
	if len(page) != len(since) {
		t.Fatalf("since+old cursor: %d events", len(page))
	}
	if _, _, err := s.ListEvents("nope", EventQuery{}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
}

func TestEventIDsSurviveClockGoingBack(t *testing.T) {
	// A reopened store whose clock is behind the newest event must not
	// reuse event ids (which would overwrite audit records).
	fs := memFS()
	clk := newClock()
	s := memStoreFS(t, fs, clk, nil)
	enable(t, s, DefaultTenant)
	mustKey(t, s, DefaultTenant, "alice", KeyInput{})
	before := allEvents(t, s, DefaultTenant, EventQuery{})
	mustNil(t, s.Close())

	clk2 := &clock{t: t0.Add(-time.Hour)}
	s2 := memStoreFS(t, fs, clk2, nil)
	mustKey(t, s2, DefaultTenant, "bob", KeyInput{})
	after := allEvents(t, s2, DefaultTenant, EventQuery{})
	if len(after) != len(before)+1 {
		t.Fatalf("%d events before, %d after one more change", len(before), len(after))
	}
	for i, e := range before {
		if after[i].ID != e.ID || after[i].Type != e.Type {
			t.Fatalf("event %d overwritten: %+v → %+v", i, e, after[i])
		}
	}
	if last := after[len(after)-1]; last.Type != "key.created" || last.ID <= before[len(before)-1].ID {
		t.Fatalf("new event %+v", last)
	}
}
