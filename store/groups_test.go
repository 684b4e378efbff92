package store

import (
	"strings"
	"testing"
	"time"
)

func TestGroups(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	enable(t, s, "other")
	in := GroupInput{Description: "read orders", Rules: []Rule{{Methods: []string{"GET"}, Paths: []string{"/orders/*"}}},
		RateLimit: &RateLimit{RequestsPerSecond: 5, Burst: 10}}
	g, err := s.PutGroup("op", DefaultTenant, "readers", in)
	mustNil(t, err)
	if g.Name != "readers" || g.Tenant != DefaultTenant || g.Description != "read orders" || g.RateLimit.Burst != 10 ||
		!g.CreatedAt.Equal(clk.Now()) {
		t.Fatalf("group %+v", g)
	}
	got, err := s.GetGroup(DefaultTenant, "readers")
	mustNil(t, err)
	if got.Description != g.Description || len(got.Rules) != 1 || got.Rules[0].Paths[0] != "/orders/*" || got.RateLimit.RequestsPerSecond != 5 {
		t.Fatalf("read back %+v", got)
	}
	if gv := s.GroupView(DefaultTenant, "readers"); gv == nil || gv.Name != "readers" || gv.RateLimit.Burst != 10 ||
		!gv.Allows("GET", "/orders/1") || gv.Allows("POST", "/orders/1") {
		t.Fatalf("compiled group %+v", gv)
	}
	if s.GroupView("other", "readers") != nil || s.GroupView(DefaultTenant, "nope") != nil {
		t.Fatal("GroupView of an unknown group")
	}
	if _, err := s.GetGroup("other", "readers"); KindOf(err) != KindNotFound {
		t.Fatalf("group of another tenant: %v", err)
	}

	// Replacing keeps created_at, changes the hot view at once.
	clk.Advance(time.Minute)
	g2, err := s.PutGroup("op", DefaultTenant, "readers", GroupInput{Description: "all", RateLimit: nil})
	mustNil(t, err)
	if !g2.CreatedAt.Equal(g.CreatedAt) || !g2.UpdatedAt.Equal(clk.Now()) || len(g2.Rules) != 0 || g2.RateLimit != nil {
		t.Fatalf("replaced %+v", g2)
	}
	if gv := s.GroupView(DefaultTenant, "readers"); gv.RateLimit != nil || !gv.Allows("POST", "/anything") {
		t.Fatal("group change not seen at once")
	}

	for _, name := range []string{"a", "b", "c", "d"} {
		_, err := s.PutGroup("op", DefaultTenant, name, GroupInput{})
		mustNil(t, err)
	}
	_, err = s.PutGroup("op", "other", "zz", GroupInput{})
	mustNil(t, err)
	var names []string
	cursor := ""
	for {
		page, next, err := s.ListGroups(DefaultTenant, cursor, 2)
		mustNil(t, err)
		if len(page) > 2 {
			t.Fatalf("page of %d", len(page))
		}
		for _, g := range page {
			names = append(names, g.Name)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if strings.Join(names, ",") != "a,b,c,d,readers" {
		t.Fatalf("groups %v", names)
	}
	if _, _, err := s.ListGroups("nope", "", 0); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
	if _, err := s.PutGroup("op", "nope", "g", GroupInput{}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}

	// Delete: refused while a key (of any status) uses it.
	key, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Group: "a"})
	wantErr(t, s.DeleteGroup("op", DefaultTenant, "a"), KindConflict, "conflict")
	_, err = s.RevokeKey("op", DefaultTenant, key.ID)
	mustNil(t, err)
	wantErr(t, s.DeleteGroup("op", DefaultTenant, "a"), KindConflict, "conflict")
	mustNil(t, s.DeleteKey("op", DefaultTenant, key.ID))
	mustNil(t, s.DeleteGroup("op", DefaultTenant, "a"))
	if s.GroupView(DefaultTenant, "a") != nil {
		t.Fatal("deleted group still in the hot state")
	}
	wantErr(t, s.DeleteGroup("op", DefaultTenant, "a"), KindNotFound, "not_found")
	// Moving the key off the group frees it too.
	key2, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Group: "b"})
	wantErr(t, s.DeleteGroup("op", DefaultTenant, "b"), KindConflict, "conflict")
	_, err = s.UpdateKey("op", DefaultTenant, key2.ID, KeyPatch{Group: Some("c")})
	mustNil(t, err)
	mustNil(t, s.DeleteGroup("op", DefaultTenant, "b"))
	// A key of another tenant using a group of the same name does not count.
	_, err = s.PutGroup("op", "other", "c", GroupInput{})
	mustNil(t, err)
	mustNil(t, s.DeleteGroup("op", "other", "c"))
	// Keys cannot be created in or moved to a deleted group.
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "in b", Group: "b"})
	wantFields(t, err, "group")
	_, err = s.UpdateKey("op", DefaultTenant, key2.ID, KeyPatch{Group: Some("b")})
	wantFields(t, err, "group")
}

func TestGroupViewAllows(t *testing.T) {
	s := memStore(t, newClock())
	put := func(name string, rules ...Rule) *GroupView {
		t.Helper()
		_, err := s.PutGroup("op", DefaultTenant, name, GroupInput{Rules: rules})
		mustNil(t, err)
		gv := s.GroupView(DefaultTenant, name)
		if gv == nil {
			t.Fatal("no group view")
		}
		return gv
	}
	open := put("open")
	readOrders := put("read-orders", Rule{Methods: []string{"get", "HEAD"}, Paths: []string{"/orders/*"}})
	mixed := put("mixed",
		Rule{Methods: []string{"POST"}, Paths: []string{"/orders"}},
		Rule{Paths: []string{"/items/*/price", "/health"}},
		Rule{Methods: []string{"DELETE"}},
		Rule{Paths: []string{"/files/report-*.csv", "/v*/items/*"}},
	)
	cases := []struct {
		g            *GroupView
		method, path string
		want         bool
	}{
		{open, "GET", "/", true},
		{open, "DELETE", "/anything/at/all", true},
		{readOrders, "GET", "/orders/1", true},
		{readOrders, "GET", "/orders/1/items/2", true}, // trailing * is a prefix
		{readOrders, "HEAD", "/orders/x", true},        // methods normalised to upper case
		{readOrders, "GET", "/orders/", true},
		{readOrders, "GET", "/orders", false},
		{readOrders, "GET", "/ordersX", false},
		{readOrders, "POST", "/orders/1", false},
		{readOrders, "get", "/orders/1", false}, // request methods are case-sensitive
		{readOrders, "GET", "/customers", false},
		{mixed, "POST", "/orders", true},
		{mixed, "POST", "/orders/1", false},
		{mixed, "GET", "/orders", false},
		{mixed, "GET", "/items/7/price", true}, // * within a segment
		{mixed, "PUT", "/items/7/price", true},
		{mixed, "GET", "/items/7/8/price", false},
		{mixed, "GET", "/items/7/price/x", false},
		{mixed, "GET", "/health", true},
		{mixed, "GET", "/healthz", false},
		{mixed, "DELETE", "/whatever", true},
		{mixed, "GET", "/files/report-1.csv", true},
		{mixed, "GET", "/files/report-12.csv", true},
		{mixed, "GET", "/files/report-1.txt", false},
		{mixed, "GET", "/files/x/report-1.csv", false},
		{mixed, "GET", "/v1/items/x", true},
		{mixed, "GET", "/v2/items/x/y", false}, // not a plain trailing *: one segment
		{mixed, "GET", "/v3/other", false},
	}
	for _, c := range cases {
		if got := c.g.Allows(c.method, c.path); got != c.want {
			t.Errorf("%s: %s %s = %v, want %v", c.g.Name, c.method, c.path, got, c.want)
		}
	}
}
