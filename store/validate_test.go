package store

import (
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestCreateKeyValidation(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	if _, err := s.PutGroup("op", DefaultTenant, "g1", GroupInput{}); err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	cases := []struct {
		name   string
		owner  string
		in     KeyInput
		fields []string // nil: valid
	}{
		{"name 1 char", "alice", KeyInput{Name: "a"}, []string{"name"}},
		{"name empty", "alice", KeyInput{Name: ""}, []string{"name"}},
		{"name 2 chars", "alice", KeyInput{Name: "ab"}, nil},
		{"name 200 chars", "alice", KeyInput{Name: strings.Repeat("n", 200)}, nil},
		{"name 201 chars", "alice", KeyInput{Name: strings.Repeat("n", 201)}, []string{"name"}},
		{"name 2 runes", "alice", KeyInput{Name: "日本"}, nil},
		{"name 1 rune 3 bytes", "alice", KeyInput{Name: "日"}, []string{"name"}},
		{"name 200 runes", "alice", KeyInput{Name: strings.Repeat("日", 200)}, nil},
		{"name 201 runes", "alice", KeyInput{Name: strings.Repeat("日", 201)}, []string{"name"}},
		{"name control char", "alice", KeyInput{Name: "ab\x00c"}, []string{"name"}},
		{"name bad utf-8", "alice", KeyInput{Name: "ab\xff"}, []string{"name"}},
		{"description 1000", "alice", KeyInput{Name: "ok", Description: strings.Repeat("d", 1000)}, nil},
		{"description 1000 runes", "alice", KeyInput{Name: "ok", Description: strings.Repeat("é", 1000)}, nil},
		{"description 1001", "alice", KeyInput{Name: "ok", Description: strings.Repeat("d", 1001)}, []string{"description"}},
		{"description multi-line", "alice", KeyInput{Name: "ok", Description: "line 1\nline 2\tx"}, nil},
		{"known group", "alice", KeyInput{Name: "ok", Group: "g1"}, nil},
		{"unknown group", "alice", KeyInput{Name: "ok", Group: "nope"}, []string{"group"}},
		{"expires past", "alice", KeyInput{Name: "ok", ExpiresAt: ptr(now.Add(-time.Second))}, []string{"expires_at"}},
		{"expires now", "alice", KeyInput{Name: "ok", ExpiresAt: ptr(now)}, []string{"expires_at"}},
		{"expires future", "alice", KeyInput{Name: "ok", ExpiresAt: ptr(now.Add(time.Second))}, nil},
		{"expires far, no max", "alice", KeyInput{Name: "ok", ExpiresAt: ptr(now.Add(50 * 365 * 24 * time.Hour))}, nil},
		{"bad CIDR bits", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"10.0.0.0/33"}}, []string{"ip_allowlist"}},
		{"bad address", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"10.0.0.1", "300.1.1.1"}}, []string{"ip_allowlist"}},
		{"hostname", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"example.com"}}, []string{"ip_allowlist"}},
		{"empty entry", "alice", KeyInput{Name: "ok", IPAllowlist: []string{""}}, []string{"ip_allowlist"}},
		{"zone", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"fe80::1%eth0"}}, []string{"ip_allowlist"}},
		{"zone in CIDR", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"fe80::1%eth0/64"}}, []string{"ip_allowlist"}},
		{"IPv6 bits", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"2001:db8::/129"}}, []string{"ip_allowlist"}},
		{"range", "alice", KeyInput{Name: "ok", IPAllowlist: []string{"10.0.0.1-10.0.0.9"}}, []string{"ip_allowlist"}},
		{"too many entries", "alice", KeyInput{Name: "ok", IPAllowlist: make([]string, AllowlistMax+1)}, []string{"ip_allowlist"}},
		{"empty allowlist", "alice", KeyInput{Name: "ok", IPAllowlist: []string{}}, nil},
		{"empty owner", "", KeyInput{Name: "ok"}, []string{"owner"}},
		{"owner with slash", "a/b", KeyInput{Name: "ok"}, []string{"owner"}},
		{"owner me (reserved)", "me", KeyInput{Name: "ok"}, []string{"owner"}},
		{"owner e-mail", "alice@example.com", KeyInput{Name: "ok"}, nil},
		{"all at once", "a/b", KeyInput{Name: "x", Description: strings.Repeat("d", 1001), Group: "nope",
			ExpiresAt: ptr(now.Add(-time.Hour)), IPAllowlist: []string{"nope"}},
			[]string{"name", "description", "group", "expires_at", "ip_allowlist", "owner"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key, secret, err := s.CreateKey("op", DefaultTenant, c.owner, c.in)
			if c.fields == nil {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if key.Name != c.in.Name || !WellFormed(KeyPrefix, secret) {
					t.Fatalf("bad key %+v", key)
				}
				return
			}
			if key != nil || secret != "" {
				t.Fatal("a rejected create returned a key or secret")
			}
			wantFields(t, err, c.fields...)
		})
	}
}

func TestAllowlistCanonical(t *testing.T) {
	s := memStore(t, newClock())
	enable(t, s, DefaultTenant)
	in := []string{"10.1.2.3/8", "192.0.2.7", "::ffff:10.0.0.1", "::ffff:10.0.0.0/104", "2001:DB8::1/32",
		" 10.9.9.9 ", "10.0.0.0/8", "::ffff:0:0/96", "::1"}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "10.0.0.1/32", "2001:db8::/32", "10.9.9.9/32", "0.0.0.0/0", "::1/128"}
	key, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "canon", IPAllowlist: in})
	if strings.Join(key.IPAllowlist, ",") != strings.Join(want, ",") {
		t.Fatalf("allowlist %v, want %v", key.IPAllowlist, want)
	}
	got, err := s.GetKey(DefaultTenant, key.ID)
	mustNil(t, err)
	if strings.Join(got.IPAllowlist, ",") != strings.Join(want, ",") {
		t.Fatalf("stored allowlist %v, want %v", got.IPAllowlist, want)
	}
	// No allowlist reads back as an empty list, not null.
	open, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "open"})
	if open.IPAllowlist == nil || len(open.IPAllowlist) != 0 {
		t.Fatalf("allowlist of an open key: %#v", open.IPAllowlist)
	}
	b, _ := json.Marshal(open)
	if !strings.Contains(string(b), `"ip_allowlist":[]`) || !strings.Contains(string(b), `"revoked_at":null`) {
		t.Fatalf("JSON of a key: %s", b)
	}
}

func TestExpiryDefaultsAndMax(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	now := clk.Now()

	// Without max_expiration: no default expiry.
	k0, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "no max"})
	if k0.ExpiresAt != nil {
		t.Fatalf("expires_at %v without a max_expiration", k0.ExpiresAt)
	}

	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxExpiration: Some(Duration(720 * time.Hour))})
	mustNil(t, err)
	k1, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "defaulted"})
	if k1.ExpiresAt == nil || !k1.ExpiresAt.Equal(now.Add(720*time.Hour)) {
		t.Fatalf("default expiry %v, want %v", k1.ExpiresAt, now.Add(720*time.Hour))
	}
	if k1.ExpiresAt.Location() != time.UTC {
		t.Fatal("expiry not in UTC")
	}
	if _, _, err := s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "at max", ExpiresAt: ptr(now.Add(720 * time.Hour))}); err != nil {
		t.Fatalf("exactly max_expiration: %v", err)
	}
	_, _, err = s.CreateKey("op", DefaultTenant, "alice", KeyInput{Name: "beyond", ExpiresAt: ptr(now.Add(720*time.Hour + time.Second))})
	wantFields(t, err, "expires_at")

	// A non-UTC expiry is stored in UTC.
	est := time.FixedZone("EST", -5*3600)
	k2, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "zoned", ExpiresAt: ptr(now.Add(time.Hour).In(est))})
	if k2.ExpiresAt.Location() != time.UTC || !k2.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("zoned expiry stored as %v", k2.ExpiresAt)
	}

	// null removes the cap again: no default, any future expiry.
	var p SettingsPatch
	mustNil(t, json.Unmarshal([]byte(`{"max_expiration": null}`), &p))
	st, err := s.UpdateSettings("op", DefaultTenant, p)
	mustNil(t, err)
	if st.MaxExpiration != nil {
		t.Fatalf("max_expiration %v after null", *st.MaxExpiration)
	}
	k3, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "uncapped"})
	if k3.ExpiresAt != nil {
		t.Fatal("expiry defaulted without a cap")
	}
	mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "far", ExpiresAt: ptr(now.Add(20 * 365 * 24 * time.Hour))})
}

func TestSettingsValidation(t *testing.T) {
	s := memStore(t, newClock())
	cases := []struct {
		name   string
		patch  SettingsPatch
		fields []string
	}{
		{"max keys 0", SettingsPatch{MaxKeysPerUser: Some(0)}, []string{"max_keys_per_user"}},
		{"max keys 1", SettingsPatch{MaxKeysPerUser: Some(1)}, nil},
		{"max keys 1000", SettingsPatch{MaxKeysPerUser: Some(1000)}, nil},
		{"max keys 1001", SettingsPatch{MaxKeysPerUser: Some(1001)}, []string{"max_keys_per_user"}},
		{"max keys -1", SettingsPatch{MaxKeysPerUser: Some(-1)}, []string{"max_keys_per_user"}},
		{"max keys null", SettingsPatch{MaxKeysPerUser: Opt[int]{Set: true, Null: true}}, []string{"max_keys_per_user"}},
		{"max expiration 0", SettingsPatch{MaxExpiration: Some(Duration(0))}, []string{"max_expiration"}},
		{"max expiration negative", SettingsPatch{MaxExpiration: Some(Duration(-time.Hour))}, []string{"max_expiration"}},
		{"max expiration huge", SettingsPatch{MaxExpiration: Some(Duration(maxDurationSetting + time.Hour))}, []string{"max_expiration"}},
		{"max expiration 720h", SettingsPatch{MaxExpiration: Some(Duration(720 * time.Hour))}, nil},
		{"max expiration 1ns (every key born expired)", SettingsPatch{MaxExpiration: Some(Duration(1))}, []string{"max_expiration"}},
		{"max expiration just under the minimum", SettingsPatch{MaxExpiration: Some(Duration(MaxExpirationMin - time.Nanosecond))}, []string{"max_expiration"}},
		{"max expiration the minimum", SettingsPatch{MaxExpiration: Some(Duration(MaxExpirationMin))}, nil},
		{"window the maximum", SettingsPatch{ExpiringSoonWindow: Some(Duration(maxDurationSetting))}, nil},
		{"window above the maximum", SettingsPatch{ExpiringSoonWindow: Some(Duration(maxDurationSetting + 1))}, []string{"expiring_soon_window"}},
		{"max expiration null", SettingsPatch{MaxExpiration: Opt[Duration]{Set: true, Null: true}}, nil},
		{"window negative", SettingsPatch{ExpiringSoonWindow: Some(Duration(-time.Second))}, []string{"expiring_soon_window"}},
		{"window null", SettingsPatch{ExpiringSoonWindow: Opt[Duration]{Set: true, Null: true}}, []string{"expiring_soon_window"}},
		{"window 0", SettingsPatch{ExpiringSoonWindow: Some(Duration(0))}, nil},
		{"enabled null", SettingsPatch{APIKeysEnabled: Opt[bool]{Set: true, Null: true}}, []string{"api_keys_enabled"}},
		{"several", SettingsPatch{MaxKeysPerUser: Some(0), MaxExpiration: Some(Duration(-1))}, []string{"max_keys_per_user", "max_expiration"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := s.GetSettings(DefaultTenant)
			mustNil(t, err)
			_, err = s.UpdateSettings("op", DefaultTenant, c.patch)
			if c.fields == nil {
				mustNil(t, err)
				return
			}
			wantFields(t, err, c.fields...)
			after, err := s.GetSettings(DefaultTenant)
			mustNil(t, err)
			if b1, b2 := mustJSON(before), mustJSON(after); string(b1) != string(b2) {
				t.Fatalf("a rejected patch changed the settings: %s → %s", b1, b2)
			}
		})
	}
	if _, err := s.UpdateSettings("op", "nope", SettingsPatch{}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
}

func TestSettingsJSON(t *testing.T) {
	s := memStore(t, newClock())
	st, err := s.GetSettings(DefaultTenant)
	mustNil(t, err)
	if st.APIKeysEnabled || st.MaxKeysPerUser != DefaultMaxKeysPerUser || st.MaxExpiration != nil ||
		time.Duration(st.ExpiringSoonWindow) != DefaultExpiringSoonWindow {
		t.Fatalf("defaults: %+v", st)
	}
	b, _ := json.Marshal(st)
	if want := `{"api_keys_enabled":false,"max_expiration":null,"max_keys_per_user":5,"expiring_soon_window":"168h","default_group":null}`; string(b) != want {
		t.Fatalf("settings JSON %s, want %s", b, want)
	}
	var p SettingsPatch
	mustNil(t, json.Unmarshal([]byte(`{"api_keys_enabled":true,"max_expiration":"720h","expiring_soon_window":"24h"}`), &p))
	if !p.APIKeysEnabled.Set || !p.MaxExpiration.Set || p.MaxExpiration.Null || p.MaxKeysPerUser.Set {
		t.Fatalf("patch decoded as %+v", p)
	}
	st, err = s.UpdateSettings("op", DefaultTenant, p)
	mustNil(t, err)
	if !st.APIKeysEnabled || *st.MaxExpiration != Duration(720*time.Hour) || st.ExpiringSoonWindow != Duration(24*time.Hour) ||
		st.MaxKeysPerUser != DefaultMaxKeysPerUser {
		t.Fatalf("after patch: %+v", st)
	}
	for _, bad := range []string{`{"max_expiration": 5}`, `{"max_expiration": "soon"}`, `{"max_keys_per_user": "x"}`} {
		var p SettingsPatch
		if err := json.Unmarshal([]byte(bad), &p); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}

func TestTenantValidation(t *testing.T) {
	s := memStore(t, newClock())
	cases := []struct {
		name   string
		in     TenantInput
		fields []string
	}{
		{"empty id", TenantInput{ID: ""}, []string{"id"}},
		{"slash", TenantInput{ID: "a/b"}, []string{"id"}},
		{"space", TenantInput{ID: "a b"}, []string{"id"}},
		{"64 chars", TenantInput{ID: strings.Repeat("t", 64)}, nil},
		{"65 chars", TenantInput{ID: strings.Repeat("t", 65)}, []string{"id"}},
		{"non-ascii", TenantInput{ID: "tö"}, []string{"id"}},
		{"dot", TenantInput{ID: "."}, []string{"id"}},
		{"dot dot", TenantInput{ID: ".."}, []string{"id"}},
		{"three dots", TenantInput{ID: "..."}, nil},
		{"negative key limit", TenantInput{ID: "neg", KeyLimit: ptr(-1)}, []string{"key_limit"}},
		{"huge key limit", TenantInput{ID: "huge", KeyLimit: ptr(100_000_001)}, []string{"key_limit"}},
		{"zero key limit", TenantInput{ID: "zero", KeyLimit: ptr(0)}, nil},
		{"long name", TenantInput{ID: "long", Name: strings.Repeat("n", 201)}, []string{"name"}},
		{"ok", TenantInput{ID: "acme-1.eu_west", Name: "ACME"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ten, err := s.CreateTenant("op", c.in)
			if c.fields != nil {
				wantFields(t, err, c.fields...)
				return
			}
			mustNil(t, err)
			if ten.ID != c.in.ID || ten.KeyCount != 0 {
				t.Fatalf("tenant %+v", ten)
			}
		})
	}
	_, err := s.CreateTenant("op", TenantInput{ID: "acme-1.eu_west"})
	wantErr(t, err, KindConflict, "conflict")
	ten, err := s.GetTenant("long")
	if KindOf(err) != KindNotFound || ten != nil {
		t.Fatal("a rejected tenant exists")
	}
	// A new tenant starts disabled with default settings; its name defaults
	// to its id.
	ten, err = s.GetTenant("zero")
	mustNil(t, err)
	if ten.Name != "zero" || ten.KeyLimit == nil || *ten.KeyLimit != 0 {
		t.Fatalf("tenant %+v", ten)
	}
	if s.TenantEnabled("zero") {
		t.Fatal("a new tenant has API keys enabled")
	}

	_, err = s.UpdateTenant("op", "zero", TenantPatch{KeyLimit: Some(-5)})
	wantFields(t, err, "key_limit")
	_, err = s.UpdateTenant("op", "zero", TenantPatch{Name: Opt[string]{Set: true, Null: true}})
	wantFields(t, err, "name")
	_, err = s.UpdateTenant("op", "zero", TenantPatch{Name: Some("")})
	wantFields(t, err, "name")
	_, err = s.UpdateTenant("op", "nope", TenantPatch{Name: Some("x")})
	wantErr(t, err, KindNotFound, "not_found")
	var p TenantPatch
	mustNil(t, json.Unmarshal([]byte(`{"key_limit": null, "name": "Zero"}`), &p))
	ten, err = s.UpdateTenant("op", "zero", p)
	mustNil(t, err)
	if ten.KeyLimit != nil || ten.Name != "Zero" {
		t.Fatalf("after patch: %+v", ten)
	}
	ten, err = s.UpdateTenant("op", "zero", TenantPatch{KeyLimit: Some(10)})
	mustNil(t, err)
	if ten.KeyLimit == nil || *ten.KeyLimit != 10 || ten.Name != "Zero" {
		t.Fatalf("after patch: %+v", ten)
	}

	// ListTenants pages in id order.
	var ids []string
	cursor := ""
	for {
		page, next, err := s.ListTenants(cursor, 2)
		mustNil(t, err)
		if len(page) > 2 {
			t.Fatalf("page of %d", len(page))
		}
		for _, tn := range page {
			ids = append(ids, tn.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	want := []string{"...", "acme-1.eu_west", DefaultTenant, strings.Repeat("t", 64), "zero"}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("tenants %v, want %v", ids, want)
	}
}

func TestUserValidation(t *testing.T) {
	s := memStore(t, newClock())
	cases := []struct {
		name   string
		id     string
		roles  []Role
		fields []string
	}{
		{"empty id", "", []Role{RoleDeveloper}, []string{"user"}},
		{"slash", "a/b", []Role{RoleDeveloper}, []string{"user"}},
		{"me is reserved (owner=me)", "me", []Role{RoleDeveloper}, []string{"user"}},
		{"dot dot", "..", []Role{RoleDeveloper}, []string{"user"}},
		{"me as part of an id", "me2", []Role{RoleDeveloper}, nil},
		{"no roles", "u1", nil, []string{"roles"}},
		{"unknown role", "u1", []Role{"admin"}, []string{"roles[0]"}},
		{"second unknown", "u1", []Role{RoleDeveloper, "boss"}, []string{"roles[1]"}},
		{"case matters", "u1", []Role{"Developer"}, []string{"roles[0]"}},
		{"developer", "u1", []Role{RoleDeveloper}, nil},
		{"both, duplicated", "u2@example.com", []Role{RoleTenantAdmin, RoleDeveloper, RoleTenantAdmin}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, err := s.PutUser("op", DefaultTenant, c.id, c.roles)
			if c.fields != nil {
				wantFields(t, err, c.fields...)
				return
			}
			mustNil(t, err)
			if u.ID != c.id || u.Tenant != DefaultTenant {
				t.Fatalf("user %+v", u)
			}
		})
	}
	u, err := s.GetUser(DefaultTenant, "u2@example.com")
	mustNil(t, err)
	if len(u.Roles) != 2 || !u.HasRole(RoleTenantAdmin) || !u.HasRole(RoleDeveloper) {
		t.Fatalf("roles %v", u.Roles)
	}
	if _, err := s.PutUser("op", "nope", "u1", []Role{RoleDeveloper}); KindOf(err) != KindNotFound {
		t.Fatalf("user of an unknown tenant: %v", err)
	}
}

func TestGroupValidation(t *testing.T) {
	s := memStore(t, newClock())
	cases := []struct {
		name   string
		group  string
		in     GroupInput
		fields []string
	}{
		{"empty name", "", GroupInput{}, []string{"group"}},
		{"slash", "a/b", GroupInput{}, []string{"group"}},
		{"no rules", "open", GroupInput{}, nil},
		{"bad method", "g", GroupInput{Rules: []Rule{{Methods: []string{"FETCH"}}}}, []string{"rules[0].methods[0]"}},
		{"bad second method", "g", GroupInput{Rules: []Rule{{Methods: []string{"GET"}}, {Methods: []string{"POST", "YELL"}}}}, []string{"rules[1].methods[1]"}},
		{"relative path", "g", GroupInput{Rules: []Rule{{Paths: []string{"orders/*"}}}}, []string{"rules[0].paths[0]"}},
		{"empty path", "g", GroupInput{Rules: []Rule{{Paths: []string{""}}}}, []string{"rules[0].paths[0]"}},
		{"bad pattern", "g", GroupInput{Rules: []Rule{{Paths: []string{"/orders/["}}}}, []string{"rules[0].paths[0]"}},
		{"long path", "g", GroupInput{Rules: []Rule{{Paths: []string{"/" + strings.Repeat("p", 1024)}}}}, []string{"rules[0].paths[0]"}},
		{"too many rules", "g", GroupInput{Rules: make([]Rule, RulesMax+1)}, []string{"rules"}},
		{"dot dot", "..", GroupInput{}, []string{"group"}},
		{"rps below the minimum", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: minRequestsPerSec / 2, Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"smallest float rps", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: math.SmallestNonzeroFloat64, Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"zero rps", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: 0, Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"negative rps", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: -1, Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"NaN rps", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: math.NaN(), Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"Inf rps", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: math.Inf(1), Burst: 1}}, []string{"rate_limit.requests_per_second"}},
		{"zero burst", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: 1, Burst: 0}}, []string{"rate_limit.burst"}},
		{"huge burst", "g", GroupInput{RateLimit: &RateLimit{RequestsPerSecond: 1, Burst: maxBurst + 1}}, []string{"rate_limit.burst"}},
		{"long description", "g", GroupInput{Description: strings.Repeat("d", 1001)}, []string{"description"}},
		{"ok", "g", GroupInput{Description: "orders", Rules: []Rule{{Methods: []string{"get", "POST"}, Paths: []string{"/orders/*", "/items/*/price"}}},
			RateLimit: &RateLimit{RequestsPerSecond: 0.5, Burst: maxBurst}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := s.PutGroup("op", DefaultTenant, c.group, c.in)
			if c.fields != nil {
				wantFields(t, err, c.fields...)
				if _, err := s.GetGroup(DefaultTenant, c.group); KindOf(err) != KindNotFound && c.group != "open" {
					t.Fatalf("a rejected group was stored: %v", err)
				}
				return
			}
			mustNil(t, err)
			if g.Name != c.group || g.Rules == nil {
				t.Fatalf("group %+v", g)
			}
		})
	}
	g, err := s.GetGroup(DefaultTenant, "g")
	mustNil(t, err)
	if got := strings.Join(g.Rules[0].Methods, ","); got != "GET,POST" {
		t.Fatalf("methods stored as %s", got)
	}
}

func TestPutGroupDoesNotModifyInput(t *testing.T) {
	s := memStore(t, newClock())
	methods := []string{"get"}
	in := GroupInput{Rules: []Rule{{Methods: methods}}}
	if _, err := s.PutGroup("op", DefaultTenant, "g", in); err != nil {
		t.Fatal(err)
	}
	if methods[0] != "get" {
		t.Fatalf("PutGroup rewrote the caller's slice to %q", methods[0])
	}
}

func TestTokenValidation(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	_, err := s.PutUser("op", DefaultTenant, "alice", []Role{RoleDeveloper})
	mustNil(t, err)
	now := clk.Now()
	_, _, err = s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "ci", ExpiresAt: ptr(now.Add(-time.Minute))})
	wantFields(t, err, "expires_at")
	_, _, err = s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "ci", ExpiresAt: ptr(now)})
	wantFields(t, err, "expires_at")
	_, _, err = s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: strings.Repeat("n", 201)})
	wantFields(t, err, "name")
	_, _, err = s.CreateToken("op", DefaultTenant, "nobody", TokenInput{Name: "ci"})
	wantErr(t, err, KindNotFound, "not_found")
	tok, secret, err := s.CreateToken("op", DefaultTenant, "alice", TokenInput{Name: "ci", ExpiresAt: ptr(now.Add(time.Hour))})
	mustNil(t, err)
	if tok.Status != StatusActive || !WellFormed(TokenPrefix, secret) || tok.Hint != Hint(secret) {
		t.Fatalf("token %+v", tok)
	}
}

func TestKeyPatchValidation(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "orig", Description: "d"})
	var withExpiry KeyPatch
	mustNil(t, json.Unmarshal([]byte(`{"name":"new name","expires_at":"2031-01-01T00:00:00Z"}`), &withExpiry))
	cases := []struct {
		name   string
		patch  KeyPatch
		fields []string
	}{
		{"expires_at", withExpiry, []string{"expires_at"}},
		{"expires_at null", KeyPatch{ExpiresAt: Opt[any]{Set: true, Null: true}}, []string{"expires_at"}},
		{"name null", KeyPatch{Name: Opt[string]{Set: true, Null: true}}, []string{"name"}},
		{"name short", KeyPatch{Name: Some("x")}, []string{"name"}},
		{"name long", KeyPatch{Name: Some(strings.Repeat("x", 201))}, []string{"name"}},
		{"description long", KeyPatch{Description: Some(strings.Repeat("x", 1001))}, []string{"description"}},
		{"unknown group", KeyPatch{Group: Some("nope")}, []string{"group"}},
		{"bad allowlist", KeyPatch{IPAllowlist: Some([]string{"10.0.0.0/40"})}, []string{"ip_allowlist"}},
		{"several", KeyPatch{Name: Some("x"), Group: Some("nope")}, []string{"name", "group"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.UpdateKey("op", DefaultTenant, key.ID, c.patch)
			wantFields(t, err, c.fields...)
			got, err := s.GetKey(DefaultTenant, key.ID)
			mustNil(t, err)
			if got.Name != "orig" || got.Description != "d" {
				t.Fatalf("a rejected patch changed the key: %+v", got)
			}
		})
	}
	// Absent fields are kept; null description and group clear them.
	_, err := s.PutGroup("op", DefaultTenant, "g1", GroupInput{})
	mustNil(t, err)
	got, err := s.UpdateKey("op", DefaultTenant, key.ID, KeyPatch{Group: Some("g1")})
	mustNil(t, err)
	if got.Name != "orig" || got.Description != "d" || got.Group != "g1" {
		t.Fatalf("after group patch: %+v", got)
	}
	var clear KeyPatch
	mustNil(t, json.Unmarshal([]byte(`{"description":null,"group":null,"ip_allowlist":null}`), &clear))
	got, err = s.UpdateKey("op", DefaultTenant, key.ID, clear)
	mustNil(t, err)
	if got.Name != "orig" || got.Description != "" || got.Group != "" || len(got.IPAllowlist) != 0 {
		t.Fatalf("after clearing: %+v", got)
	}
	if _, err := s.UpdateKey("op", DefaultTenant, "key_nope", KeyPatch{Name: Some("ok name")}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestRotateValidation(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "rot"})
	now := clk.Now()
	cases := []struct {
		name   string
		in     RotateInput
		fields []string
	}{
		{"negative grace", RotateInput{GracePeriod: dur(-time.Second)}, []string{"grace_period"}},
		{"grace too long", RotateInput{GracePeriod: dur(MaxGracePeriod + time.Second)}, []string{"grace_period"}},
		{"expiry past", RotateInput{ExpiresAt: ptr(now.Add(-time.Second))}, []string{"expires_at"}},
		{"both", RotateInput{ExpiresAt: ptr(now), GracePeriod: dur(-1)}, []string{"expires_at", "grace_period"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, sec, err := s.RotateKey("op", DefaultTenant, key.ID, c.in)
			wantFields(t, err, c.fields...)
			if sec != "" {
				t.Fatal("a rejected rotation returned a secret")
			}
			if v := verdict(t, s, DefaultTenant, secret, now); v != VerdictValid {
				t.Fatalf("a rejected rotation changed the secret: %s", vname(v))
			}
		})
	}
	_, err := s.UpdateSettings("op", DefaultTenant, SettingsPatch{MaxExpiration: Some(Duration(time.Hour))})
	mustNil(t, err)
	_, _, err = s.RotateKey("op", DefaultTenant, key.ID, RotateInput{ExpiresAt: ptr(now.Add(2 * time.Hour))})
	wantFields(t, err, "expires_at")
}

func TestListValidation(t *testing.T) {
	s := memStore(t, newClock())
	cases := []struct {
		name   string
		q      KeyQuery
		fields []string
	}{
		{"status", KeyQuery{Status: "bogus"}, []string{"status"}},
		{"status case", KeyQuery{Status: "Active"}, []string{"status"}},
		{"expiry state", KeyQuery{ExpiryState: "soon"}, []string{"expiry_state"}},
		{"limit high", KeyQuery{Limit: MaxPageLimit + 1}, []string{"limit"}},
		{"limit negative", KeyQuery{Limit: -1}, []string{"limit"}},
		{"all", KeyQuery{Status: "x", ExpiryState: "y", Limit: -1}, []string{"status", "expiry_state", "limit"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.ListKeys(DefaultTenant, c.q)
			wantFields(t, err, c.fields...)
		})
	}
	for _, q := range []KeyQuery{{Limit: MaxPageLimit}, {Status: StatusExpired, ExpiryState: ExpiryExpiringSoon}} {
		if _, err := s.ListKeys(DefaultTenant, q); err != nil {
			t.Fatalf("%+v: %v", q, err)
		}
	}
	_, _, err := s.ListEvents(DefaultTenant, EventQuery{Limit: MaxPageLimit + 1})
	wantFields(t, err, "limit")
	_, err = s.RevokeKeys("op", DefaultTenant, nil)
	wantFields(t, err, "ids")
	_, err = s.RevokeKeys("op", DefaultTenant, make([]string, maxBulkRevoke+1))
	wantFields(t, err, "ids")
	if _, err := s.ListKeys("nope", KeyQuery{}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown tenant: %v", err)
	}
}

func TestErrorText(t *testing.T) {
	err := fieldErrors{"b": "second", "a": "first"}.err()
	if got := err.Error(); got != "validation failed: a: first; b: second" {
		t.Fatalf("error text %q", got)
	}
	if KindOf(err) != KindInvalid || KindOf(nil) != KindInternal || KindOf(ErrClosed) != KindInternal {
		t.Fatal("KindOf")
	}
}

func TestAllowlistContains(t *testing.T) {
	var none *Allowlist
	if !none.Contains(netip.MustParseAddr("203.0.113.1")) {
		t.Fatal("a nil allowlist refuses")
	}
	short := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"}
	long := append([]string(nil), short...)
	for i := range 20 { // long enough for the trie
		long = append(long, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i), 0}), 24).String())
	}
	for name, entries := range map[string][]string{"short": short, "long": long} {
		a, err := newAllowlist(entries)
		mustNil(t, err)
		if (a.ranger != nil) != (name == "long") {
			t.Fatalf("%s: ranger %v", name, a.ranger != nil)
		}
		for ip, want := range map[string]bool{
			"10.1.2.3": true, "::ffff:10.1.2.3": true, "11.0.0.1": false, "192.0.2.7": true, "192.0.2.8": false,
			"2001:db8::1": true, "2001:db9::1": false, "::1": false, "::ffff:192.0.2.7": true,
		} {
			if got := a.Contains(netip.MustParseAddr(ip)); got != want {
				t.Errorf("%s: Contains(%s) = %v, want %v", name, ip, got, want)
			}
		}
		if a.Contains(netip.Addr{}) {
			t.Errorf("%s: the zero address is allowed", name)
		}
		if name == "long" && (!a.Contains(netip.MustParseAddr("198.51.19.200")) || a.Contains(netip.MustParseAddr("198.51.20.1"))) {
			t.Error("long list")
		}
	}
	if _, err := newAllowlist([]string{"nope"}); err == nil {
		t.Fatal("bad entry accepted")
	}
}
