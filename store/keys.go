package store

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
)

// pKeyOwner indexes keys by owner for the per-user limit and delete-all.
//
//	ko/<tenant>/<owner>/<key id> → current secret hash
const pKeyOwner = "ko/"

// MaxGracePeriod bounds how long a rotated-out secret may keep working.
const MaxGracePeriod = 30 * 24 * time.Hour

// KeyInput creates a key.
type KeyInput struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Group       string     `json:"group"`
	ExpiresAt   *time.Time `json:"expires_at"`
	IPAllowlist []string   `json:"ip_allowlist"`
	// DefaultGroup, when set, ignores Group and gives the key the tenant's
	// default_group setting (no group when it is null). The admin API sets
	// it for developers, who never choose a key's group.
	DefaultGroup bool `json:"-"`
}

// KeyPatch edits a key's metadata. ExpiresAt is only here to be refused by
// name: expiry changes by rotating.
type KeyPatch struct {
	Name        Opt[string]   `json:"name"`
	Description Opt[string]   `json:"description"`
	Group       Opt[string]   `json:"group"`
	IPAllowlist Opt[[]string] `json:"ip_allowlist"`
	ExpiresAt   Opt[any]      `json:"expires_at"`
}

// RotateInput rotates a key. Both fields are optional.
type RotateInput struct {
	ExpiresAt   *time.Time `json:"expires_at"`
	GracePeriod *Duration  `json:"grace_period"`
}

// KeyQuery filters ListKeys.
type KeyQuery struct {
	Q           string // substring of name, id or owner (case-insensitive)
	Status      string
	ExpiryState string
	Owner       string
	Group       string
	Limit       int
	Cursor      string // id of the last key of the previous page
}

// KeyPage is one page of ListKeys.
type KeyPage struct {
	Keys       []*Key `json:"keys"`
	NextCursor string `json:"next_cursor"`
	Total      int    `json:"total"` // keys matching the query, all pages
	Count      int    `json:"-"`     // tenant keys (the "2" of "2/10 keys")
	Limit      *int   `json:"-"`     // tenant key_limit (the "10")
}

func (s *Store) checkExpiry(f fieldErrors, field string, exp *time.Time, st *Settings, now time.Time) *time.Time {
	if exp == nil {
		if st.MaxExpiration != nil {
			d := now.Add(time.Duration(*st.MaxExpiration))
			return &d
		}
		return nil
	}
	e := exp.UTC()
	if !e.After(now) {
		f.add(field, "must be in the future")
	} else if st.MaxExpiration != nil && e.After(now.Add(time.Duration(*st.MaxExpiration))) {
		f.add(field, fmt.Sprintf("must be at most %s from now (the tenant's max_expiration)", time.Duration(*st.MaxExpiration)))
	}
	return &e
}

// CreateKey creates a key owned by owner. The secret is returned here and
// never again; only its hash is stored.
func (s *Store) CreateKey(actor, tenant, owner string, in KeyInput) (*Key, string, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var key *Key
	var secret string
	err := s.retryKeyAdds(tenant, func() error {
		var err error
		key, secret, err = s.createKey(actor, tenant, owner, in)
		return err
	})
	return key, secret, err
}

// createKey is one attempt of CreateKey (keyadds.go); the caller holds wmu.
func (s *Store) createKey(actor, tenant, owner string, in KeyInput) (*Key, string, error) {
	ka, err := s.readKeyAdds(tenant)
	if err != nil {
		return nil, "", err
	}
	trec := ka.trec
	st := &trec.Settings
	if !st.APIKeysEnabled {
		return nil, "", &Error{Kind: KindDisabled, Code: "api_keys_disabled", Message: fmt.Sprintf("API keys are disabled for tenant %q", tenant)}
	}
	if in.DefaultGroup {
		// DeleteGroup refuses to delete the default group; the group is
		// checked and guarded (grouprefs.go) as a named one.
		in.Group = strOrEmpty(st.DefaultGroup)
	}
	now := s.now().UTC()
	f := fieldErrors{}
	checkUserID(f, "owner", owner)
	refs := groupRefs{}
	exp, allow := s.checkKeyInput(f, refs, "", tenant, &in, st, now)
	if err := f.err(); err != nil {
		return nil, "", err
	}
	count, err := s.countKeysNow(tenant)
	if err != nil {
		return nil, "", err
	}
	if trec.KeyLimit != nil && count >= *trec.KeyLimit {
		return nil, "", &Error{Kind: KindLimit, Code: "key_limit_reached", Message: fmt.Sprintf("tenant %q has reached its limit of %d keys", tenant, *trec.KeyLimit)}
	}
	active, err := s.countActiveOwnerKeys(tenant, owner, now)
	if err != nil {
		return nil, "", err
	}
	if active >= st.MaxKeysPerUser {
		return nil, "", &Error{Kind: KindLimit, Code: "key_limit_reached", Message: fmt.Sprintf("%q already has %d active keys (max_keys_per_user is %d)", owner, active, st.MaxKeysPerUser)}
	}

	c := newCommit()
	ka.guard(c)
	if err := s.guardOwner(c, ka, owner); err != nil {
		return nil, "", err
	}
	refs.guard(c, tenant)
	rec, secret := s.newKeyInto(c, actor, tenant, owner, &in, exp, allow, now)
	if err := s.commit(c); err != nil {
		return nil, "", err
	}
	return s.keyView(rec, st, now, nil), secret, nil
}

// putKey writes the record and every index pointing at its hash. The
// secret's view changes (a new secret: a cached "unknown" for it goes).
func (s *Store) putKey(c *commit, rec *keyRecord, h SecretHash) {
	c.b.Set(hashKey(pKeyHash, h), encodeKeyRecord(rec))
	c.b.Set(k(pKeyID+rec.ID), h[:])
	c.b.Set(k(pKeyTenant+rec.Tenant, rec.ID), h[:])
	c.b.Set(k(pKeyOwner+rec.Tenant, rec.Owner, rec.ID), h[:])
	c.changed(h)
}

// loadKey reads a key of the tenant by id; another tenant's id is not found.
func (s *Store) loadKey(tenant, id string) (*keyRecord, SecretHash, error) {
	var h SecretHash
	raw, err := s.kv.Get(k(pKeyID + id))
	if errors.Is(err, errKVNotFound) || (err == nil && len(raw) != len(h)) {
		return nil, h, notFound("key", id)
	}
	if err != nil {
		return nil, h, fmt.Errorf("read key: %w", err)
	}
	copy(h[:], raw)
	var rec keyRecord
	found, err := s.followKeyRecord(id, &h, &rec)
	if err != nil {
		return nil, h, fmt.Errorf("read key %s: %w", id, err)
	}
	if !found || rec.Tenant != tenant {
		return nil, h, notFound("key", id)
	}
	return &rec, h, nil
}

func (s *Store) settingsOf(tenant string) (*Settings, error) {
	trec, err := s.tenantRecord(tenant)
	if err != nil {
		return nil, err
	}
	return &trec.Settings, nil
}

// GetKey returns a key of the tenant, with its last use.
func (s *Store) GetKey(tenant, id string) (*Key, error) {
	st, err := s.settingsOf(tenant)
	if err != nil {
		return nil, err
	}
	rec, _, err := s.loadKey(tenant, id)
	if err != nil {
		return nil, err
	}
	u, err := s.usageRecord(id)
	if err != nil {
		return nil, err
	}
	return s.keyView(rec, st, s.now(), u), nil
}

// keyView is the public form of a record at time now.
func (s *Store) keyView(rec *keyRecord, st *Settings, now time.Time, u *usageRecord) *Key {
	key := &Key{
		ID: rec.ID, Tenant: rec.Tenant, Name: rec.Name, Description: rec.Description, Owner: rec.Owner,
		Group: rec.Group, IPAllowlist: rec.IPAllowlist, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt,
		ExpiresAt: rec.ExpiresAt, RevokedAt: rec.RevokedAt, Hint: rec.Hint,
		Status: StatusActive, ExpiryState: ExpiryValid,
	}
	if key.IPAllowlist == nil {
		key.IPAllowlist = []string{}
	}
	if rec.RevokedBy != "" {
		by := rec.RevokedBy
		key.RevokedBy = &by
	}
	if rec.ExpiresAt != nil {
		switch {
		case !now.Before(*rec.ExpiresAt):
			key.ExpiryState = ExpiryExpired
		case rec.ExpiresAt.Sub(now) <= time.Duration(st.ExpiringSoonWindow):
			key.ExpiryState = ExpiryExpiringSoon
		}
	}
	switch {
	case rec.RevokedAt != nil:
		key.Status = StatusRevoked
	case key.ExpiryState == ExpiryExpired:
		key.Status = StatusExpired
	}
	if lu := s.usage.lastUse(rec.ID); lu != nil {
		t, ip := lu.at.UTC(), lu.ip
		key.LastUsedAt, key.LastUsedIP = &t, &ip
	} else if u != nil && u.LastUsedAt != nil {
		t, ip := *u.LastUsedAt, u.LastUsedIP
		key.LastUsedAt, key.LastUsedIP = &t, &ip
	}
	return key
}

// ListKeys searches and filters a tenant's keys, in creation order.
func (s *Store) ListKeys(tenant string, q KeyQuery) (*KeyPage, error) {
	f := fieldErrors{}
	switch q.Status {
	case "", StatusActive, StatusRevoked, StatusExpired:
	default:
		f.add("status", "must be active, revoked or expired")
	}
	switch q.ExpiryState {
	case "", ExpiryValid, ExpiryExpiringSoon, ExpiryExpired:
	default:
		f.add("expiry_state", "must be valid, expiring_soon or expired")
	}
	if q.Limit < 0 || q.Limit > MaxPageLimit {
		f.add("limit", fmt.Sprintf("must be 1–%d", MaxPageLimit))
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	trec, err := s.tenantRecord(tenant)
	if err != nil {
		return nil, err
	}
	limit := pageLimit(q.Limit)
	now := s.now()
	needle := strings.ToLower(q.Q)
	page := &KeyPage{Keys: []*Key{}, Limit: trec.KeyLimit}
	var pageErr error
	err = s.scanTenantKeys(tenant, func(rec *keyRecord) bool {
		page.Count++
		if q.Owner != "" && rec.Owner != q.Owner || q.Group != "" && rec.Group != q.Group {
			return true
		}
		if needle != "" && !strings.Contains(strings.ToLower(rec.Name), needle) &&
			!strings.Contains(strings.ToLower(rec.ID), needle) && !strings.Contains(strings.ToLower(rec.Owner), needle) {
			return true
		}
		key := s.keyView(rec, &trec.Settings, now, nil)
		if q.Status != "" && key.Status != q.Status || q.ExpiryState != "" && key.ExpiryState != q.ExpiryState {
			return true
		}
		page.Total++
		if q.Cursor != "" && rec.ID <= q.Cursor {
			return true
		}
		if len(page.Keys) < limit {
			if key.LastUsedAt == nil {
				u, err := s.usageRecord(rec.ID)
				if err != nil {
					pageErr = err
					return false
				}
				if u != nil && u.LastUsedAt != nil {
					t, ip := *u.LastUsedAt, u.LastUsedIP
					key.LastUsedAt, key.LastUsedIP = &t, &ip
				}
			}
			page.Keys = append(page.Keys, key)
		} else if page.NextCursor == "" {
			page.NextCursor = page.Keys[len(page.Keys)-1].ID
		}
		return true
	})
	if err == nil {
		err = pageErr
	}
	if err != nil {
		return nil, err
	}
	return page, nil
}

// scanTenantKeys calls fn for every key record of the tenant in id order.
func (s *Store) scanTenantKeys(tenant string, fn func(*keyRecord) bool) error {
	var inner error
	err := s.kv.Scan([]byte(pKeyTenant+tenant+"/"), nil, func(key, v []byte) bool {
		var h SecretHash
		if len(v) != len(h) {
			inner = fmt.Errorf("bad key index entry")
			return false
		}
		copy(h[:], v)
		var rec keyRecord
		var found bool
		if found, inner = s.indexedKeyRecord(key, h, &rec); inner != nil {
			return false
		}
		return !found || fn(&rec)
	})
	if err == nil {
		err = inner
	}
	if err != nil {
		return fmt.Errorf("scan keys of %s: %w", tenant, err)
	}
	return nil
}

// countTenantKeys counts a tenant's (non-deleted) keys, once from the store,
// then from memory kept up to date by create and delete (and, for other
// nodes' commits, by the watch).
func (s *Store) countTenantKeys(tenant string) (int, error) { return s.countKeys(tenant, false) }

// countKeysNow is the count a limit is checked against (keyadds.go): on a
// KV other nodes write, read from the KV, since the watch may not have
// delivered another node's keys yet; on one node, memory is exact.
func (s *Store) countKeysNow(tenant string) (int, error) { return s.countKeys(tenant, s.shared) }

func (s *Store) countKeys(tenant string, fresh bool) (int, error) {
	s.cmu.Lock()
	if n, ok := s.keyCounts[tenant]; ok && !fresh {
		s.cmu.Unlock()
		return n, nil
	}
	epoch := s.countEpoch
	s.cmu.Unlock()
	// Counted without cmu: on etcd this is a network call, and the watch
	// goroutine takes cmu to apply other nodes' commits.
	prefix := []byte(pKeyTenant + tenant + "/")
	n := 0
	var err error
	if c, ok := s.kv.(keyCounter); ok {
		n, err = c.count(prefix)
	} else {
		err = s.kv.Scan(prefix, nil, func(_, _ []byte) bool { n++; return true })
	}
	if err != nil {
		return 0, fmt.Errorf("count keys: %w", err)
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if s.countEpoch != epoch {
		return n, nil // a change came while counting: count again next time
	}
	if s.keyCounts == nil {
		s.keyCounts = map[string]int{}
	}
	s.keyCounts[tenant] = n
	return n, nil
}

func (s *Store) addKeyCount(tenant string, d int) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.countEpoch++
	if n, ok := s.keyCounts[tenant]; ok {
		s.keyCounts[tenant] = n + d
	}
}

// forgetKeyCount makes the tenant's key count be read again (another node
// created or deleted keys of it).
func (s *Store) forgetKeyCount(tenant string) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.countEpoch++
	delete(s.keyCounts, tenant)
}

func (s *Store) ownerKeys(tenant, owner string) ([]*keyRecord, error) {
	var hashes []SecretHash
	var index [][]byte
	if err := s.kv.Scan(k(pKeyOwner+tenant, owner, ""), nil, func(key, v []byte) bool {
		var h SecretHash
		copy(h[:], v)
		hashes = append(hashes, h)
		index = append(index, bytes.Clone(key))
		return true
	}); err != nil {
		return nil, fmt.Errorf("scan keys of owner: %w", err)
	}
	out := make([]*keyRecord, 0, len(hashes))
	for i, h := range hashes {
		var rec keyRecord
		found, err := s.indexedKeyRecord(index[i], h, &rec)
		if err != nil {
			return nil, fmt.Errorf("read key: %w", err)
		}
		if found {
			out = append(out, &rec)
		}
	}
	return out, nil
}

// indexedKeyRecord reads the record an index entry (key → h, the key id
// last in key) points at; found is false when the key is gone.
func (s *Store) indexedKeyRecord(key []byte, h SecretHash, rec *keyRecord) (found bool, err error) {
	return s.followKeyRecord(string(key[bytes.LastIndexByte(key, '/')+1:]), &h, rec)
}

// followKeyRecord reads into rec the record of key id under *h, which an
// index named. The index and the record are two reads, and readers do not
// hold wmu: a rotation committed between them (this node's or another's)
// has moved the record to the new secret's hash, leaving nothing or a
// grace record under the old one. The id index is then read again (*h
// follows it), at most keyReadAttempts times in all; found is false when
// the key was deleted meanwhile.
func (s *Store) followKeyRecord(id string, h *SecretHash, rec *keyRecord) (found bool, err error) {
	for attempt := 1; ; attempt++ {
		*rec = keyRecord{}
		err := s.getKeyRecord(*h, rec)
		moved := errors.Is(err, errKVNotFound) || err == nil && rec.isGrace()
		if !moved || attempt == keyReadAttempts {
			return err == nil, err
		}
		raw, err := s.kv.Get(k(pKeyID + id))
		switch {
		case errors.Is(err, errKVNotFound):
			return false, nil
		case err != nil:
			return false, err
		case len(raw) != len(h):
			return false, fmt.Errorf("bad key index entry of %s", id)
		}
		copy(h[:], raw)
	}
}

// keyReadAttempts bounds followKeyRecord: each attempt after the first
// follows one more rotation that committed while it read.
const keyReadAttempts = 4

func (s *Store) countActiveOwnerKeys(tenant, owner string, now time.Time) (int, error) {
	recs, err := s.ownerKeys(tenant, owner)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range recs {
		if r.RevokedAt == nil && (r.ExpiresAt == nil || now.Before(*r.ExpiresAt)) {
			n++
		}
	}
	return n, nil
}

// UpdateKey edits name, description, group and allowlist. The secret and
// the expiry are untouched; the gateway sees the change on the next request.
func (s *Store) UpdateKey(actor, tenant, id string, p KeyPatch) (*Key, error) {
	f := fieldErrors{}
	if p.ExpiresAt.Set {
		f.add("expires_at", "cannot be edited; rotate the key to set a new expiry")
	}
	if p.Name.Set {
		if p.Name.Null {
			f.add("name", "must not be null")
		} else {
			checkText(f, "name", p.Name.Value, NameMin, NameMax)
		}
	}
	if p.Description.Set && !p.Description.Null {
		checkText(f, "description", p.Description.Value, 0, DescriptionMax)
	}
	var allow []string
	if p.IPAllowlist.Set && !p.IPAllowlist.Null {
		allow = parseAllowlist(f, "ip_allowlist", p.IPAllowlist.Value)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var key *Key
	err := s.retryConflicts(fmt.Sprintf("other nodes changed key %q (or its group)", truncate(id, 64)), func() error {
		var err error
		key, err = s.updateKey(actor, tenant, id, p, f, allow)
		return err
	})
	return key, err
}

// updateKey is one attempt of UpdateKey; the caller holds wmu. f holds the
// problems found so far.
func (s *Store) updateKey(actor, tenant, id string, p KeyPatch, f fieldErrors, allow []string) (*Key, error) {
	// The group is checked under the write lock, as DeleteGroup checks that
	// no key uses a group, and guarded against other nodes (grouprefs.go).
	refs := groupRefs{}
	if p.Group.Set && !p.Group.Null {
		s.checkGroupExists(f, refs, tenant, p.Group.Value)
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	st, err := s.settingsOf(tenant)
	if err != nil {
		return nil, err
	}
	rec, h, raw, err := s.loadKeyRaw(tenant, id)
	if err != nil {
		return nil, err
	}
	var ch changes
	if p.Name.Set {
		ch.add("name", rec.Name, p.Name.Value)
		rec.Name = p.Name.Value
	}
	if p.Description.Set {
		ch.add("description", rec.Description, p.Description.Value)
		rec.Description = p.Description.Value
	}
	if p.Group.Set {
		ch.add("group", optString(rec.Group), optString(p.Group.Value))
		rec.Group = p.Group.Value
	}
	if p.IPAllowlist.Set {
		ch.add("ip_allowlist", allowlistOf(rec.IPAllowlist), allowlistOf(allow))
		rec.IPAllowlist = allow
	}
	now := s.now().UTC()
	rec.UpdatedAt = now
	c := newCommit()
	refs.guard(c, tenant)
	expectKey(c, h, raw) // keyguard.go
	c.b.Set(hashKey(pKeyHash, h), encodeKeyRecord(rec))
	c.changed(h)
	if rec.PrevHash != nil {
		// The rotated-out secret's view is built from this record too.
		c.changed(*rec.PrevHash)
	}
	s.event(&c.b, now, tenant, "key.updated", actor, id, ch.detail(nil))
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return s.keyView(rec, st, now, nil), nil
}

// allowlistOf is an allowlist as the API shows it: never null.
func allowlistOf(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// RotateKey gives the key a new secret; the old one stops working at once,
// or after in.GracePeriod. Without expires_at an active key keeps its
// expiry (limits changed since affect new keys only).
//
// An expired key comes back to life by rotating, so it is held to what
// creating a key would be: its owner must have room under
// max_keys_per_user (409 key_limit_reached otherwise), and its new expiry
// obeys max_expiration. Without expires_at it gets now + max_expiration;
// when the tenant has no max_expiration, expires_at is required (an
// expiring key never silently becomes one that never expires).
func (s *Store) RotateKey(actor, tenant, id string, in RotateInput) (*Key, string, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var key *Key
	var secret string
	err := s.retryConflicts(fmt.Sprintf("other nodes changed key %q or added keys to tenant %q", truncate(id, 64), tenant), func() error {
		var err error
		key, secret, err = s.rotateKey(actor, tenant, id, in)
		return err
	})
	return key, secret, err
}

// rotateKey is one attempt of RotateKey; the caller holds wmu. The
// key-add sequence is read first, since the rotation of an expired key
// adds an active key (keyadds.go); other rotations do not guard with it.
func (s *Store) rotateKey(actor, tenant, id string, in RotateInput) (*Key, string, error) {
	ka, err := s.readKeyAdds(tenant)
	if err != nil {
		return nil, "", err
	}
	st := &ka.trec.Settings
	rec, oldHash, raw, err := s.loadKeyRaw(tenant, id)
	if err != nil {
		return nil, "", err
	}
	now := s.now().UTC()
	f := fieldErrors{}
	var grace time.Duration
	if in.GracePeriod != nil {
		grace = time.Duration(*in.GracePeriod)
		if grace < 0 || grace > MaxGracePeriod {
			f.add("grace_period", fmt.Sprintf("must be from 0s to %s", MaxGracePeriod))
		}
	}
	expired := rec.ExpiresAt != nil && !now.Before(*rec.ExpiresAt)
	prevExp, exp := rec.ExpiresAt, rec.ExpiresAt
	switch {
	case in.ExpiresAt != nil:
		exp = s.checkExpiry(f, "expires_at", in.ExpiresAt, st, now)
	case expired && st.MaxExpiration == nil:
		f.add("expires_at", "required: the key has expired and the tenant has no max_expiration to default to")
	case expired:
		exp = s.checkExpiry(f, "expires_at", nil, st, now) // now + max_expiration
	}
	if err := f.err(); err != nil {
		return nil, "", err
	}
	if rec.RevokedAt != nil {
		return nil, "", conflict("key %q is revoked; a revoked key cannot be rotated", id)
	}
	if expired {
		// The key becomes active again: it needs room among its owner's
		// active keys, as a new key would (this key, expired, is not one
		// of them). The guard below keeps a concurrent create or
		// rotation out, through any node.
		active, err := s.countActiveOwnerKeys(tenant, rec.Owner, now)
		if err != nil {
			return nil, "", err
		}
		if active >= st.MaxKeysPerUser {
			return nil, "", &Error{Kind: KindLimit, Code: "key_limit_reached", Message: fmt.Sprintf(
				"key %q has expired and %q already has %d active keys (max_keys_per_user is %d): rotating it would exceed the limit",
				id, rec.Owner, active, st.MaxKeysPerUser)}
		}
	}
	secret := NewSecret(KeyPrefix)
	h := s.hasher.hash(secret)
	c := newCommit()
	if expired {
		ka.guard(c)
		if err := s.guardOwner(c, ka, rec.Owner); err != nil {
			return nil, "", err
		}
	}
	// A revoke (or another rotation) committed since the read makes this
	// one read again (keyguard.go): it never brings back what that ended.
	expectKey(c, oldHash, raw)
	if rec.PrevHash != nil { // an earlier rotation's grace secret ends now
		c.b.Delete(hashKey(pKeyHash, *rec.PrevHash))
		c.ended(*rec.PrevHash, "", time.Time{}, "invalid_key")
		rec.PrevHash, rec.PrevUntil = nil, nil
	}
	until := now.Add(grace)
	if rec.ExpiresAt != nil && rec.ExpiresAt.Before(until) {
		until = *rec.ExpiresAt // the old secret never outlives its expiry
	}
	if grace > 0 && until.After(now) {
		c.b.Set(hashKey(pKeyHash, oldHash), encodeKeyRecord(&keyRecord{ID: id, GraceOf: &h, GraceUntil: &until, CreatedAt: rec.CreatedAt, UpdatedAt: now}))
		c.ended(oldHash, id, until, "invalid_key")
		rec.PrevHash, rec.PrevUntil = &oldHash, &until
	} else {
		c.b.Delete(hashKey(pKeyHash, oldHash))
		c.ended(oldHash, "", time.Time{}, "invalid_key")
	}
	rec.ExpiresAt = exp
	rec.Hint = Hint(secret)
	rec.UpdatedAt = now
	s.putKey(c, rec, h)
	s.event(&c.b, now, tenant, "key.rotated", actor, id, map[string]any{
		"grace_period": Duration(grace), "expires_at": exp, "previous_expires_at": prevExp, "reactivated": expired})
	if err := s.commit(c); err != nil {
		return nil, "", err
	}
	return s.keyView(rec, st, now, nil), secret, nil
}

// revokeInto adds the revocation of rec, and its key.revoked event with
// detail (may be nil), to c, and records that its secrets end (commit.go):
// every revocation goes through here. Only active keys can be revoked.
func (s *Store) revokeInto(c *commit, rec *keyRecord, h SecretHash, actor string, now time.Time, detail map[string]any) error {
	if rec.RevokedAt != nil {
		return conflict("key %q is already revoked", rec.ID)
	}
	if rec.ExpiresAt != nil && !now.Before(*rec.ExpiresAt) {
		return conflict("key %q has expired; only active keys can be revoked", rec.ID)
	}
	rec.RevokedAt, rec.RevokedBy, rec.UpdatedAt = &now, actor, now
	if rec.PrevHash != nil { // the grace secret dies with the key
		c.b.Delete(hashKey(pKeyHash, *rec.PrevHash))
		c.ended(*rec.PrevHash, "", time.Time{}, "invalid_key")
		rec.PrevHash, rec.PrevUntil = nil, nil
	}
	c.b.Set(hashKey(pKeyHash, h), encodeKeyRecord(rec))
	c.ended(h, rec.ID, time.Time{}, "key_revoked")
	s.event(&c.b, now, rec.Tenant, "key.revoked", actor, rec.ID, detail)
	return nil
}

// RevokeKey revokes a key permanently. When it returns, the gateway rejects
// the key on every request that starts afterwards.
func (s *Store) RevokeKey(actor, tenant, id string) (*Key, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var key *Key
	err := s.retryConflicts(fmt.Sprintf("other nodes changed key %q", truncate(id, 64)), func() error {
		var err error
		key, err = s.revokeKey(actor, tenant, id)
		return err
	})
	return key, err
}

// revokeKey is one attempt of RevokeKey; the caller holds wmu.
func (s *Store) revokeKey(actor, tenant, id string) (*Key, error) {
	st, err := s.settingsOf(tenant)
	if err != nil {
		return nil, err
	}
	rec, h, raw, err := s.loadKeyRaw(tenant, id)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	c := newCommit()
	if err := s.revokeInto(c, rec, h, actor, now, nil); err != nil {
		return nil, err
	}
	expectKey(c, h, raw) // a rotation meanwhile: revoke the rotated key
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return s.keyView(rec, st, now, nil), nil
}

// RevokeResult is one entry of a bulk revoke.
type RevokeResult struct {
	ID    string  `json:"id"`
	OK    bool    `json:"ok"`
	Error *string `json:"error"`
}

// RevokeKeys revokes many keys in one durable write; each id gets a result.
func (s *Store) RevokeKeys(actor, tenant string, ids []string) ([]RevokeResult, error) {
	if len(ids) == 0 || len(ids) > maxBulkRevoke {
		return nil, invalid("ids", fmt.Sprintf("give 1–%d key ids", maxBulkRevoke))
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var results []RevokeResult
	err := s.retryConflicts(fmt.Sprintf("other nodes changed keys of tenant %q", tenant), func() error {
		var err error
		results, err = s.revokeKeys(actor, tenant, ids)
		return err
	})
	return results, err
}

// revokeKeys is one attempt of RevokeKeys; the caller holds wmu. Each key
// revoked is expected unchanged (keyguard.go).
func (s *Store) revokeKeys(actor, tenant string, ids []string) ([]RevokeResult, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	c := newCommit()
	results := make([]RevokeResult, len(ids))
	done := map[string]bool{}
	for i, id := range ids {
		results[i].ID = id
		var err error
		if done[id] {
			err = conflict("key %q is listed twice", id)
		} else {
			var rec *keyRecord
			var h SecretHash
			var raw []byte
			if rec, h, raw, err = s.loadKeyRaw(tenant, id); err == nil {
				if err = s.revokeInto(c, rec, h, actor, now, nil); err == nil {
					expectKey(c, h, raw)
				}
			}
		}
		if err != nil {
			if KindOf(err) == KindInternal {
				return nil, err
			}
			msg := err.Error()
			results[i].Error = &msg
			continue
		}
		done[id] = true
		results[i].OK = true
	}
	if err := s.commit(c); err != nil {
		return nil, err
	}
	return results, nil
}

// deleteInto adds the deletion of rec and all its indexes to c, and records
// its effects: its secrets end, its tenant counts one key less, its buffered
// usage goes.
func (s *Store) deleteInto(c *commit, rec *keyRecord, h SecretHash, actor string, now time.Time) {
	c.b.Delete(hashKey(pKeyHash, h))
	c.ended(h, "", time.Time{}, "invalid_key")
	if rec.PrevHash != nil {
		c.b.Delete(hashKey(pKeyHash, *rec.PrevHash))
		c.ended(*rec.PrevHash, "", time.Time{}, "invalid_key")
	}
	c.b.Delete(k(pKeyID + rec.ID))
	c.b.Delete(k(pKeyTenant+rec.Tenant, rec.ID))
	c.b.Delete(k(pKeyOwner+rec.Tenant, rec.Owner, rec.ID))
	s.deleteUsageInto(&c.b, rec.ID)
	c.keyCount(rec.Tenant, -1)
	c.keyDeleted(rec.ID)
	s.event(&c.b, now, rec.Tenant, "key.deleted", actor, rec.ID, map[string]any{"name": rec.Name, "owner": rec.Owner})
}

// DeleteKey removes a key record; its events stay.
func (s *Store) DeleteKey(actor, tenant, id string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.retryConflicts(fmt.Sprintf("other nodes changed key %q", truncate(id, 64)), func() error {
		return s.deleteKey(actor, tenant, id)
	})
}

// deleteKey is one attempt of DeleteKey; the caller holds wmu. The key is
// expected unchanged (keyguard.go): a delete built on a record from before
// a rotation would leave the rotated secret's record behind.
func (s *Store) deleteKey(actor, tenant, id string) error {
	rec, h, raw, err := s.loadKeyRaw(tenant, id)
	if err != nil {
		return err
	}
	// Load the tenant's key count before the delete commits, so that a
	// concurrent first count cannot see the delete and have it subtracted
	// again below.
	if _, err := s.countTenantKeys(tenant); err != nil {
		return err
	}
	c := newCommit()
	expectKey(c, h, raw)
	s.deleteInto(c, rec, h, actor, s.now().UTC())
	return s.commit(c)
}

// DeleteOwnerKeys deletes every key of owner in the tenant.
func (s *Store) DeleteOwnerKeys(actor, tenant, owner string) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n int
	err := s.retryConflicts(fmt.Sprintf("other nodes changed keys of %q", truncate(owner, 64)), func() error {
		var err error
		n, err = s.deleteOwnerKeys(actor, tenant, owner)
		return err
	})
	return n, err
}

// deleteOwnerKeys is one attempt of DeleteOwnerKeys; the caller holds wmu.
// Each key is expected unchanged (keyguard.go).
func (s *Store) deleteOwnerKeys(actor, tenant, owner string) (int, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return 0, err
	}
	recs, err := s.ownerKeys(tenant, owner)
	if err != nil {
		return 0, err
	}
	if _, err := s.countTenantKeys(tenant); err != nil { // see DeleteKey
		return 0, err
	}
	now := s.now().UTC()
	c := newCommit()
	n := 0
	for _, r := range recs {
		rec, h, raw, err := s.loadKeyRaw(tenant, r.ID)
		if KindOf(err) == KindNotFound {
			continue // deleted through another node since the scan
		}
		if err != nil {
			return 0, err
		}
		expectKey(c, h, raw)
		s.deleteInto(c, rec, h, actor, now)
		n++
	}
	if err := s.commit(c); err != nil {
		return 0, err
	}
	return n, nil
}
