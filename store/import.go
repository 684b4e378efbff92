package store

import (
	"errors"
	"fmt"
	"time"
)

// Imported secrets: keys moved from another gateway (Kong, APISIX, a UUID,
// 40 hex characters…) keep their secret. Such a secret has no checksum, so
// the gateway can only tell it from garbage by looking it up; it does so
// only for tenants that have imported keys (hotState.imported), so native
// kg_ keys and the 401 path of every other tenant stay as fast as before.
//
// An imported secret is hashed with the tenant as context (hashImported):
// uniqueness is per tenant, as SPEC says, and a duplicate reported to one
// tenant never reveals a secret of another. A secret of the native kg_
// layout with a correct checksum is hashed as native secrets are (the
// gateway checks those first), so keys moved from another keygate keep
// working too.
const (
	// ImportSecretMin and ImportSecretMax bound an imported secret's length.
	ImportSecretMin = 16
	ImportSecretMax = 256
	// MaxImport bounds the keys of one ImportKeys call.
	MaxImport = 10_000
)

// MaxPresentedSecretLen bounds what the gateway will even look at: the
// longest native or imported secret.
const MaxPresentedSecretLen = ImportSecretMax

// ImportInput is one key to import: a key's input, its owner and the
// secret it keeps.
type ImportInput struct {
	KeyInput
	Owner  string
	Secret string
}

// ImportResult is one entry of ImportKeys' answer: the new key's id, or
// why the entry was skipped. It never holds the secret.
type ImportResult struct {
	Index int     `json:"index"`
	ID    *string `json:"id"`
	Error *string `json:"error"`
}

// importableSecret reports whether s may be an imported secret: 16–256
// printable ASCII characters without spaces (a secret travels in a header
// or a query parameter, where surrounding spaces are lost). It does not
// allocate.
func importableSecret(s string) bool {
	if len(s) < ImportSecretMin || len(s) > ImportSecretMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// importDomain separates the hashes of imported secrets from native ones.
const importDomain = "keygate-import\x00"

// hashImported is the stored hash of a secret imported into tenant.
func (h *hasher) hashImported(tenant, secret string) SecretHash {
	return h.hash(importDomain + tenant + "\x00" + secret)
}

// secretHash is the stored hash of a presented or imported secret of the
// tenant: native secrets are hashed alone, others with their tenant.
func (s *Store) secretHash(tenant, secret string) SecretHash {
	if WellFormed(KeyPrefix, secret) {
		return s.hasher.hash(secret)
	}
	return s.hasher.hashImported(tenant, secret)
}

// ImportedHint is how an imported secret is recognised in a list: its
// first and last 4 characters when it has at least 32 (24 or more stay
// hidden), the first and last 2 when it is shorter (12 or more hidden).
// A secret of the native layout gets the native hint.
func ImportedHint(secret string) string {
	if WellFormed(KeyPrefix, secret) {
		return Hint(secret)
	}
	n := 2
	if len(secret) >= 32 {
		n = 4
	}
	if len(secret) < 4*n {
		return ""
	}
	return secret[:n] + "…" + secret[len(secret)-n:]
}

// HasImportedKeys reports whether keys with secrets of a foreign format
// were ever imported into the tenant (only then does the gateway look up
// secrets that are not of the native layout). It reads memory only.
func (s *Store) HasImportedKeys(tenant string) bool {
	imported := s.hot.Load().imported
	// len first: without any such tenant, not even the map lookup's hash.
	return len(imported) > 0 && imported[tenant]
}

// ImportKeys stores keys moved from another gateway with the secrets they
// already have; only the secrets' hashes are stored.
//
// Each entry is checked as CreateKey checks a key a tenant_admin creates
// for owner (an empty owner is actor's user, ownerDefault), plus its secret:
// 16–256 printable ASCII characters, not another key's in the tenant, not
// given twice in the call. The tenant's key_limit and each owner's
// max_keys_per_user count the entries in order. An entry that fails gets
// an error in its result and is skipped; every other entry, with its
// indexes and key.imported audit event, is written in one durable batch,
// so a failed write leaves none of them. Errors name fields but never
// quote a secret.
//
// The whole call fails (nothing written) for a count outside 1–10,000, an
// unknown tenant, api_keys_enabled false, or a storage failure.
func (s *Store) ImportKeys(actor, tenant, ownerDefault string, inputs []ImportInput) ([]ImportResult, int, error) {
	if len(inputs) == 0 || len(inputs) > MaxImport {
		return nil, 0, invalid("keys", fmt.Sprintf("give 1–%d keys (got %d)", MaxImport, len(inputs)))
	}
	// Hash outside the write lock: it is most of the CPU of an import.
	hashes := make([]SecretHash, len(inputs))
	for i := range inputs {
		if importableSecret(inputs[i].Secret) {
			hashes[i] = s.secretHash(tenant, inputs[i].Secret)
		}
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	var results []ImportResult
	var imported int
	err := s.retryKeyAdds(tenant, func() error {
		var err error
		results, imported, err = s.importKeys(actor, tenant, ownerDefault, inputs, hashes)
		return err
	})
	return results, imported, err
}

// importKeys is one attempt of ImportKeys (keyadds.go); the caller holds
// wmu.
func (s *Store) importKeys(actor, tenant, ownerDefault string, inputs []ImportInput, hashes []SecretHash) ([]ImportResult, int, error) {
	ka, err := s.readKeyAdds(tenant)
	if err != nil {
		return nil, 0, err
	}
	trec := ka.trec
	st := &trec.Settings
	if !st.APIKeysEnabled {
		return nil, 0, &Error{Kind: KindDisabled, Code: "api_keys_disabled", Message: fmt.Sprintf("API keys are disabled for tenant %q", tenant)}
	}
	now := s.now().UTC()
	count, err := s.countKeysNow(tenant)
	if err != nil {
		return nil, 0, err
	}
	results := make([]ImportResult, len(inputs))
	c := newCommit()
	c.b.ops = make([]batchOp, 0, len(inputs)*6+2)
	c.fx.secrets = make([]SecretHash, 0, len(inputs))
	ka.guard(c)
	seen := make(map[SecretHash]int, len(inputs)) // hash → first index
	active := map[string]int{}                    // owner → active keys, this call's included
	groups := groupRefs{}                         // checked once per call
	imported := 0
	foreign := false // an imported secret is not of the native layout
	fail := func(i int, msg string) { results[i].Error = &msg }
	for i := range inputs {
		in := &inputs[i]
		results[i].Index = i
		owner := in.Owner
		if owner == "" {
			owner = ownerDefault
		}
		f := fieldErrors{}
		if owner == "" {
			f.add("owner", "required: the operator imports keys on behalf of a user")
		} else {
			checkUserID(f, "owner", owner)
		}
		if !importableSecret(in.Secret) {
			f.add("secret", fmt.Sprintf("must be %d–%d printable ASCII characters without spaces", ImportSecretMin, ImportSecretMax))
		}
		exp, allow := s.checkImportInput(f, tenant, &in.KeyInput, st, now, groups)
		if err := f.err(); err != nil {
			fail(i, err.Error())
			continue
		}
		h := hashes[i]
		if j, dup := seen[h]; dup {
			fail(i, fmt.Sprintf("secret: the same as entry %d's", j))
			continue
		}
		seen[h] = i
		switch _, err := s.kv.Get(hashKey(pKeyHash, h)); {
		case err == nil:
			fail(i, "secret: already in use by another key")
			continue
		case !errors.Is(err, errKVNotFound):
			return nil, 0, fmt.Errorf("import: check secret: %w", err)
		}
		if trec.KeyLimit != nil && count+imported >= *trec.KeyLimit {
			fail(i, fmt.Sprintf("key_limit_reached: tenant %q would exceed its limit of %d keys", tenant, *trec.KeyLimit))
			continue
		}
		n, ok := active[owner]
		if !ok {
			if n, err = s.countActiveOwnerKeys(tenant, owner, now); err != nil {
				return nil, 0, err
			}
		}
		if n >= st.MaxKeysPerUser {
			active[owner] = n
			fail(i, fmt.Sprintf("key_limit_reached: %q would have more than %d active keys (max_keys_per_user)", truncate(owner, 64), st.MaxKeysPerUser))
			continue
		}
		active[owner] = n + 1

		id := newID("key", now)
		rec := &keyRecord{
			ID: id, Tenant: tenant, Name: in.Name, Description: in.Description, Owner: owner,
			Group: in.Group, IPAllowlist: allow, Hint: ImportedHint(in.Secret), CreatedAt: now, UpdatedAt: now, ExpiresAt: exp,
		}
		if err := s.guardOwner(c, ka, owner); err != nil {
			return nil, 0, err
		}
		// Checked absent above; another node may be storing it now.
		c.b.Expect(hashKey(pKeyHash, h), nil)
		s.putKey(c, rec, h)
		s.event(&c.b, now, tenant, "key.imported", actor, id, map[string]any{"name": rec.Name, "owner": owner, "group": rec.Group, "expires_at": exp})
		results[i].ID = &id
		imported++
		foreign = foreign || !WellFormed(KeyPrefix, in.Secret)
	}
	if imported == 0 {
		return results, 0, nil
	}
	// Every group checked is guarded, also one only a refused entry named:
	// at worst a conflict more.
	groups.guard(c, tenant)
	if foreign && !trec.ImportedKeys {
		// The flag that turns on the gateway's lookup of foreign secrets:
		// committed with the keys, so no such key is ever stored without
		// it. Writing the tenant record reloads the hot state. Secrets of
		// the native layout are found without it.
		rec := *trec
		rec.ImportedKeys = true
		c.b.Set(k(pTenant+tenant), mustJSON(&rec))
		c.tenant(tenant)
	}
	c.keyCount(tenant, imported)
	if err := s.commit(c); err != nil {
		return nil, 0, err
	}
	return results, imported, nil
}

// checkImportInput is checkKeyInput with the groups looked up once per
// call rather than once per entry.
func (s *Store) checkImportInput(f fieldErrors, tenant string, in *KeyInput, st *Settings, now time.Time, groups groupRefs) (*time.Time, []string) {
	checkText(f, "name", in.Name, NameMin, NameMax)
	checkText(f, "description", in.Description, 0, DescriptionMax)
	s.checkGroupExists(f, groups, tenant, in.Group)
	exp := s.checkExpiry(f, "expires_at", in.ExpiresAt, st, now)
	allow := parseAllowlist(f, "ip_allowlist", in.IPAllowlist)
	return exp, allow
}
