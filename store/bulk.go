package store

import (
	"fmt"
	"time"
)

// MaxBulkCreate bounds the keys of one CreateKeys call.
const MaxBulkCreate = 10_000

// checkKeyInput validates the input of a new key of the tenant (everything
// but the owner) and returns the effective expiry and the canonical
// allowlist. Problems are added to f under prefix+field: prefix is "" for
// CreateKey and "keys[3]." for the fourth key of a CreateKeys batch.
func (s *Store) checkKeyInput(f fieldErrors, refs groupRefs, prefix, tenant string, in *KeyInput, st *Settings, now time.Time) (*time.Time, []string) {
	g := f
	if prefix != "" {
		g = fieldErrors{}
	}
	checkText(g, "name", in.Name, NameMin, NameMax)
	checkText(g, "description", in.Description, 0, DescriptionMax)
	s.checkGroupExists(g, refs, tenant, in.Group)
	exp := s.checkExpiry(g, "expires_at", in.ExpiresAt, st, now)
	allow := parseAllowlist(g, "ip_allowlist", in.IPAllowlist)
	if prefix != "" {
		for field, problem := range g {
			f.add(prefix+field, problem)
		}
	}
	return exp, allow
}

// newKeyInto adds a new key (record, indexes and its key.created event) to
// b and returns the record and the secret. The input must be validated.
func (s *Store) newKeyInto(c *commit, actor, tenant, owner string, in *KeyInput, exp *time.Time, allow []string, now time.Time) (*keyRecord, string) {
	secret := NewSecret(KeyPrefix)
	h := s.hasher.hash(secret)
	rec := &keyRecord{
		ID: newID("key", now), Tenant: tenant, Name: in.Name, Description: in.Description, Owner: owner,
		Group: in.Group, IPAllowlist: allow, Hint: Hint(secret), CreatedAt: now, UpdatedAt: now, ExpiresAt: exp,
	}
	s.putKey(c, rec, h)
	c.keyCount(tenant, 1)
	s.event(&c.b, now, tenant, "key.created", actor, rec.ID, map[string]any{"name": rec.Name, "owner": owner, "group": rec.Group, "expires_at": exp})
	return rec, secret
}

// CreateKeys creates many keys owned by owner at once (bulk import). Every
// input is validated as CreateKey does (problems are named "keys[i].field"),
// the tenant's key_limit and the owner's max_keys_per_user apply to the
// whole batch, and all records, indexes and audit events (one key.created
// per key) are written in one durable batch: either every key is created or
// none. The secrets, in input order, are returned here and never again.
func (s *Store) CreateKeys(actor, tenant, owner string, inputs []KeyInput) ([]*Key, []string, error) {
	if len(inputs) == 0 || len(inputs) > MaxBulkCreate {
		return nil, nil, invalid("keys", fmt.Sprintf("give 1–%d keys", MaxBulkCreate))
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var keys []*Key
	var secrets []string
	err := s.retryKeyAdds(tenant, func() error {
		var err error
		keys, secrets, err = s.createKeys(actor, tenant, owner, inputs)
		return err
	})
	return keys, secrets, err
}

// createKeys is one attempt of CreateKeys (keyadds.go); the caller holds
// wmu.
func (s *Store) createKeys(actor, tenant, owner string, inputs []KeyInput) ([]*Key, []string, error) {
	ka, err := s.readKeyAdds(tenant)
	if err != nil {
		return nil, nil, err
	}
	trec := ka.trec
	st := &trec.Settings
	if !st.APIKeysEnabled {
		return nil, nil, &Error{Kind: KindDisabled, Code: "api_keys_disabled", Message: fmt.Sprintf("API keys are disabled for tenant %q", tenant)}
	}
	now := s.now().UTC()
	f := fieldErrors{}
	checkUserID(f, "owner", owner)
	exps := make([]*time.Time, len(inputs))
	allows := make([][]string, len(inputs))
	refs := groupRefs{}
	for i := range inputs {
		exps[i], allows[i] = s.checkKeyInput(f, refs, fmt.Sprintf("keys[%d].", i), tenant, &inputs[i], st, now)
	}
	if err := f.err(); err != nil {
		return nil, nil, err
	}
	n := len(inputs)
	count, err := s.countKeysNow(tenant)
	if err != nil {
		return nil, nil, err
	}
	if trec.KeyLimit != nil && count+n > *trec.KeyLimit {
		return nil, nil, &Error{Kind: KindLimit, Code: "key_limit_reached", Message: fmt.Sprintf("tenant %q has %d keys; %d more would exceed its limit of %d keys", tenant, count, n, *trec.KeyLimit)}
	}
	active, err := s.countActiveOwnerKeys(tenant, owner, now)
	if err != nil {
		return nil, nil, err
	}
	if active+n > st.MaxKeysPerUser {
		return nil, nil, &Error{Kind: KindLimit, Code: "key_limit_reached", Message: fmt.Sprintf("%q has %d active keys; %d more would exceed max_keys_per_user (%d)", owner, active, n, st.MaxKeysPerUser)}
	}

	c := newCommit()
	c.b.ops = make([]batchOp, 0, n*8+1)
	c.fx.secrets = make([]SecretHash, 0, n)
	ka.guard(c)
	if err := s.guardOwner(c, ka, owner); err != nil {
		return nil, nil, err
	}
	refs.guard(c, tenant)
	recs := make([]*keyRecord, n)
	secrets := make([]string, n)
	for i := range inputs {
		recs[i], secrets[i] = s.newKeyInto(c, actor, tenant, owner, &inputs[i], exps[i], allows[i], now)
	}
	if err := s.commit(c); err != nil {
		return nil, nil, err
	}
	keys := make([]*Key, n)
	for i, rec := range recs {
		keys[i] = s.keyView(rec, st, now, nil)
	}
	return keys, secrets, nil
}
