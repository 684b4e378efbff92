package store

import (
	"errors"
	"fmt"
	"time"
)

// TenantInput creates a tenant.
type TenantInput struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	KeyLimit *int   `json:"key_limit"`
}

// TenantPatch edits a tenant; absent fields are kept, a null key_limit
// removes the limit.
type TenantPatch struct {
	Name     Opt[string] `json:"name"`
	KeyLimit Opt[int]    `json:"key_limit"`
}

// SettingsPatch edits a tenant's settings; absent fields are kept, a null
// max_expiration removes the cap.
type SettingsPatch struct {
	APIKeysEnabled     Opt[bool]     `json:"api_keys_enabled"`
	MaxExpiration      Opt[Duration] `json:"max_expiration"`
	MaxKeysPerUser     Opt[int]      `json:"max_keys_per_user"`
	ExpiringSoonWindow Opt[Duration] `json:"expiring_soon_window"`
	DefaultGroup       Opt[string]   `json:"default_group"` // null: no group
}

func checkKeyLimit(f fieldErrors, limit *int) {
	if limit != nil && (*limit < 0 || *limit > 100_000_000) {
		f.add("key_limit", "must be between 0 and 100000000, or null for no limit")
	}
}

// CreateTenant creates a tenant with API keys disabled and default settings.
func (s *Store) CreateTenant(actor string, in TenantInput) (*Tenant, error) {
	f := fieldErrors{}
	checkID(f, "id", in.ID)
	checkText(f, "name", in.Name, 0, TenantNameMax)
	checkKeyLimit(f, in.KeyLimit)
	if err := f.err(); err != nil {
		return nil, err
	}
	if in.Name == "" {
		in.Name = in.ID
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.kv.Get(k(pTenant + in.ID)); err == nil {
		return nil, conflict("tenant %q already exists", in.ID)
	} else if !errors.Is(err, errKVNotFound) {
		return nil, fmt.Errorf("read tenant: %w", err)
	}
	now := s.now().UTC()
	rec := tenantRecord{
		ID: in.ID, Name: in.Name, KeyLimit: in.KeyLimit, CreatedAt: now, UpdatedAt: now,
		Settings: Settings{MaxKeysPerUser: DefaultMaxKeysPerUser, ExpiringSoonWindow: Duration(DefaultExpiringSoonWindow)},
	}
	c := newCommit()
	// Another node may be creating it now: the first one wins.
	c.b.Expect(k(pTenant+in.ID), nil)
	c.b.Set(k(pTenant+in.ID), mustJSON(rec))
	c.tenant(in.ID)
	s.event(&c.b, now, in.ID, "tenant.created", actor, "", map[string]any{"name": in.Name, "key_limit": in.KeyLimit})
	if err := s.commit(c); errors.Is(err, errKVConflict) {
		return nil, conflict("tenant %q already exists", in.ID)
	} else if err != nil {
		return nil, err
	}
	return s.tenantView(&rec)
}

func (s *Store) tenantRecord(id string) (*tenantRecord, error) {
	return getRecord[tenantRecord](s, k(pTenant+id), "tenant", id)
}

func (s *Store) tenantView(rec *tenantRecord) (*Tenant, error) {
	n, err := s.countTenantKeys(rec.ID)
	if err != nil {
		return nil, err
	}
	return &Tenant{ID: rec.ID, Name: rec.Name, KeyLimit: rec.KeyLimit, KeyCount: n, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt}, nil
}

// GetTenant returns a tenant with its key count.
func (s *Store) GetTenant(id string) (*Tenant, error) {
	rec, err := s.tenantRecord(id)
	if err != nil {
		return nil, err
	}
	return s.tenantView(rec)
}

// ListTenants returns tenants in id order after cursor (exclusive).
func (s *Store) ListTenants(cursor string, limit int) ([]*Tenant, string, error) {
	limit = pageLimit(limit)
	var recs []tenantRecord
	var decodeErr error
	err := s.kv.Scan([]byte(pTenant), afterCursor(pTenant, cursor), func(_, v []byte) bool {
		var r tenantRecord
		if decodeErr = jsonUnmarshal(v, &r); decodeErr != nil {
			return false
		}
		recs = append(recs, r)
		return len(recs) <= limit
	})
	if err == nil {
		err = decodeErr
	}
	if err != nil {
		return nil, "", fmt.Errorf("list tenants: %w", err)
	}
	next := ""
	if len(recs) > limit {
		recs = recs[:limit]
		next = recs[limit-1].ID
	}
	out := make([]*Tenant, 0, len(recs))
	for i := range recs {
		t, err := s.tenantView(&recs[i])
		if err != nil {
			return nil, "", err
		}
		out = append(out, t)
	}
	return out, next, nil
}

// UpdateTenant edits a tenant's name or key limit. Lower limits affect new
// keys only.
func (s *Store) UpdateTenant(actor, id string, p TenantPatch) (*Tenant, error) {
	f := fieldErrors{}
	if p.Name.Set {
		if p.Name.Null {
			f.add("name", "must not be null")
		} else {
			checkText(f, "name", p.Name.Value, 1, TenantNameMax)
		}
	}
	if p.KeyLimit.Set && !p.KeyLimit.Null {
		checkKeyLimit(f, &p.KeyLimit.Value)
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var t *Tenant
	err := s.retryConflicts(fmt.Sprintf("other nodes changed tenant %q", id), func() error {
		var err error
		t, err = s.updateTenant(actor, id, p)
		return err
	})
	return t, err
}

// updateTenant is one attempt of UpdateTenant; the caller holds wmu. The
// record is expected unchanged (keyguard.go).
func (s *Store) updateTenant(actor, id string, p TenantPatch) (*Tenant, error) {
	rec, raw, err := s.readTenantRaw(id)
	if err != nil {
		return nil, err
	}
	detail := map[string]any{}
	var ch changes
	if p.Name.Set {
		ch.add("name", rec.Name, p.Name.Value)
		rec.Name = p.Name.Value
		detail["name"] = rec.Name
	}
	if p.KeyLimit.Set {
		old := rec.KeyLimit
		if p.KeyLimit.Null {
			rec.KeyLimit = nil
		} else {
			v := p.KeyLimit.Value
			rec.KeyLimit = &v
		}
		ch.add("key_limit", old, rec.KeyLimit)
		detail["key_limit"] = rec.KeyLimit
	}
	now := s.now().UTC()
	rec.UpdatedAt = now
	c := newCommit()
	c.b.Expect(k(pTenant+id), raw)
	c.b.Set(k(pTenant+id), mustJSON(rec))
	c.tenant(id)
	s.event(&c.b, now, id, "tenant.updated", actor, "", ch.detail(detail))
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return s.tenantView(rec)
}

// GetSettings returns a tenant's settings.
func (s *Store) GetSettings(tenant string) (*Settings, error) {
	rec, err := s.tenantRecord(tenant)
	if err != nil {
		return nil, err
	}
	return &rec.Settings, nil
}

// UpdateSettings edits a tenant's settings. The gateway sees the enable
// switch at once (the write reloads the in-memory state before returning).
func (s *Store) UpdateSettings(actor, tenant string, p SettingsPatch) (*Settings, error) {
	f := fieldErrors{}
	if p.APIKeysEnabled.Set && p.APIKeysEnabled.Null {
		f.add("api_keys_enabled", "must be true or false")
	}
	if p.MaxExpiration.Set && !p.MaxExpiration.Null {
		if d := time.Duration(p.MaxExpiration.Value); d < MaxExpirationMin || d > maxDurationSetting {
			f.add("max_expiration", fmt.Sprintf("must be from %s to %s, or null for no limit", Duration(MaxExpirationMin), Duration(maxDurationSetting)))
		}
	}
	if p.MaxKeysPerUser.Set {
		if p.MaxKeysPerUser.Null || p.MaxKeysPerUser.Value < MaxKeysPerUserMin || p.MaxKeysPerUser.Value > MaxKeysPerUserMax {
			f.add("max_keys_per_user", fmt.Sprintf("must be %d–%d", MaxKeysPerUserMin, MaxKeysPerUserMax))
		}
	}
	if p.ExpiringSoonWindow.Set {
		if d := time.Duration(p.ExpiringSoonWindow.Value); p.ExpiringSoonWindow.Null || d < 0 || d > maxDurationSetting {
			f.add("expiring_soon_window", fmt.Sprintf("must be a duration from 0s to %s", Duration(maxDurationSetting)))
		}
	}
	if p.DefaultGroup.Set && !p.DefaultGroup.Null && p.DefaultGroup.Value == "" {
		f.add("default_group", "must name a group of the tenant, or be null for no group")
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var st *Settings
	err := s.retryConflicts(fmt.Sprintf("other nodes changed tenant %q (or group %q)", tenant, truncate(p.DefaultGroup.Value, 64)), func() error {
		var err error
		st, err = s.updateSettings(actor, tenant, p)
		return err
	})
	return st, err
}

// updateSettings is one attempt of UpdateSettings; the caller holds wmu.
func (s *Store) updateSettings(actor, tenant string, p SettingsPatch) (*Settings, error) {
	rec, raw, err := s.readTenantRaw(tenant)
	if err != nil {
		return nil, err
	}
	// Checked under the write lock, as DeleteGroup refuses the default
	// group, and guarded against other nodes (grouprefs.go).
	refs := groupRefs{}
	if g := p.DefaultGroup.Value; p.DefaultGroup.Set && !p.DefaultGroup.Null {
		graw, err := s.kv.Get(k(pGroup+tenant, g))
		if errors.Is(err, errKVNotFound) {
			return nil, invalid("default_group", fmt.Sprintf("no group %q in this tenant", truncate(g, 64)))
		} else if err != nil {
			return nil, fmt.Errorf("read group: %w", err)
		}
		refs[g] = graw
	}
	st := &rec.Settings
	// detail keeps each set field's new value at the top level, plus the
	// fields that changed with their values before and after.
	detail := map[string]any{}
	var ch changes
	if p.APIKeysEnabled.Set {
		ch.add("api_keys_enabled", st.APIKeysEnabled, p.APIKeysEnabled.Value)
		st.APIKeysEnabled = p.APIKeysEnabled.Value
		detail["api_keys_enabled"] = st.APIKeysEnabled
	}
	if p.MaxExpiration.Set {
		old := st.MaxExpiration
		if p.MaxExpiration.Null {
			st.MaxExpiration = nil
		} else {
			v := p.MaxExpiration.Value
			st.MaxExpiration = &v
		}
		ch.add("max_expiration", old, st.MaxExpiration)
		detail["max_expiration"] = st.MaxExpiration
	}
	if p.MaxKeysPerUser.Set {
		ch.add("max_keys_per_user", st.MaxKeysPerUser, p.MaxKeysPerUser.Value)
		st.MaxKeysPerUser = p.MaxKeysPerUser.Value
		detail["max_keys_per_user"] = st.MaxKeysPerUser
	}
	if p.ExpiringSoonWindow.Set {
		ch.add("expiring_soon_window", st.ExpiringSoonWindow, p.ExpiringSoonWindow.Value)
		st.ExpiringSoonWindow = p.ExpiringSoonWindow.Value
		detail["expiring_soon_window"] = st.ExpiringSoonWindow
	}
	if p.DefaultGroup.Set {
		old := st.DefaultGroup
		st.DefaultGroup = nil
		if !p.DefaultGroup.Null {
			st.DefaultGroup = optString(p.DefaultGroup.Value)
		}
		ch.add("default_group", old, st.DefaultGroup)
		detail["default_group"] = st.DefaultGroup
	}
	now := s.now().UTC()
	rec.UpdatedAt = now
	c := newCommit()
	refs.guard(c, tenant)
	// Another node's change since the read (a disable!) is never
	// overwritten with what was read before it (keyguard.go).
	c.b.Expect(k(pTenant+tenant), raw)
	c.b.Set(k(pTenant+tenant), mustJSON(rec))
	c.tenant(tenant) // the enable switch: read into the hot state before returning
	s.event(&c.b, now, tenant, "settings.updated", actor, "", ch.detail(detail))
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return st, nil
}

// hotState is what the gateway needs about tenants and groups on every
// request, kept in memory (there are few of them) and replaced whole on change.
type hotState struct {
	enabled  map[string]bool // tenant → api keys enabled
	imported map[string]bool // tenant → has imported keys (import.go)
	groups   map[groupKey]*GroupView
}

func (s *Store) reloadHot() error {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	st := &hotState{enabled: map[string]bool{}, imported: map[string]bool{}, groups: map[groupKey]*GroupView{}}
	var decodeErr error
	err := s.kv.Scan([]byte(pTenant), nil, func(_, v []byte) bool {
		var r tenantRecord
		if decodeErr = jsonUnmarshal(v, &r); decodeErr != nil {
			return false
		}
		st.enabled[r.ID] = r.Settings.APIKeysEnabled
		if r.ImportedKeys {
			st.imported[r.ID] = true
		}
		return true
	})
	if err == nil {
		err = decodeErr
	}
	if err != nil {
		return fmt.Errorf("load tenants: %w", err)
	}
	err = s.kv.Scan([]byte(pGroup), nil, func(_, v []byte) bool {
		var g Group
		if decodeErr = jsonUnmarshal(v, &g); decodeErr != nil {
			return false
		}
		st.groups[groupKey{g.Tenant, g.Name}] = s.compileLogged(&g)
		return true
	})
	if err == nil {
		err = decodeErr
	}
	if err != nil {
		return fmt.Errorf("load groups: %w", err)
	}
	s.hot.Store(st)
	return nil
}

// compileLogged compiles a group for the hot state, logging the patterns
// that can no longer match.
func (s *Store) compileLogged(g *Group) *GroupView {
	gv := compileGroup(g)
	if gv.unsupported > 0 {
		s.log.Errorf("group %q of tenant %q: %d path pattern(s) use \"?\", \"[\" or \"\\\" (no longer supported) and match nothing; rewrite them with \"*\"",
			g.Name, g.Tenant, gv.unsupported)
	}
	return gv
}

// TenantEnabled reports whether the tenant exists and has API keys enabled.
// It reads memory only.
func (s *Store) TenantEnabled(tenant string) bool {
	return s.hot.Load().enabled[tenant]
}

// GroupView returns the compiled group, or nil. It reads memory only.
func (s *Store) GroupView(tenant, group string) *GroupView {
	return s.hot.Load().groups[groupKey{tenant, group}]
}

type groupKey struct{ tenant, group string }

func pageLimit(n int) int {
	if n <= 0 {
		return DefaultPageLimit
	}
	return min(n, MaxPageLimit)
}

// afterCursor turns an exclusive cursor (the last id of the previous page)
// into an inclusive scan start.
func afterCursor(prefix, cursor string) []byte {
	if cursor == "" {
		return nil
	}
	return append([]byte(prefix+cursor), 0)
}
