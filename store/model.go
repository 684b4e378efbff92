package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Duration is a time.Duration that reads and writes Go duration strings
// ("720h") in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// String is the Go duration string without zero tails: "720h", "1h30m".
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf(`must be a duration string such as "720h"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		// The value is not echoed: a 1 MiB string would come back whole.
		return fmt.Errorf(`must be a duration such as "720h" or "1h30m"`)
	}
	*d = Duration(v)
	return nil
}

// Opt is a PATCH field: Set tells whether the field was present at all, and
// Null whether it was an explicit null (meaning "no limit" for durations).
type Opt[T any] struct {
	Set   bool
	Null  bool
	Value T
}

// UnmarshalJSONFrom decodes a PATCH field with the decoder's own options,
// so that the admin API's strict rules (exact names, no unknown or
// duplicate members) hold inside the value too.
func (o *Opt[T]) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	*o = Opt[T]{Set: true}
	if dec.PeekKind() == 'n' {
		o.Null = true
		_, err := dec.ReadToken()
		return err
	}
	return jsonv2.UnmarshalDecode(dec, &o.Value)
}

// UnmarshalJSON lets encoding/json decode an Opt the same way, strictly.
func (o *Opt[T]) UnmarshalJSON(b []byte) error {
	return jsonv2.Unmarshal(b, o, jsonv2.RejectUnknownMembers(true))
}

// MarshalJSON writes the value, or null when the field is absent or null
// (an absent field cannot be written; null is its closest reading).
func (o Opt[T]) MarshalJSON() ([]byte, error) {
	if !o.Set || o.Null {
		return []byte("null"), nil
	}
	return json.Marshal(o.Value)
}

// Some returns a present, non-null Opt.
func Some[T any](v T) Opt[T] { return Opt[T]{Set: true, Value: v} }

// Role of a user within its tenant.
type Role string

const (
	RoleTenantAdmin Role = "tenant_admin"
	RoleDeveloper   Role = "developer"
)

// Tenant is one isolated customer of the gateway.
type Tenant struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	KeyLimit  *int      `json:"key_limit"` // nil: no limit
	KeyCount  int       `json:"key_count"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Settings are a tenant's API key policy.
type Settings struct {
	APIKeysEnabled     bool      `json:"api_keys_enabled"`
	MaxExpiration      *Duration `json:"max_expiration"` // nil: no limit
	MaxKeysPerUser     int       `json:"max_keys_per_user"`
	ExpiringSoonWindow Duration  `json:"expiring_soon_window"`
	// DefaultGroup is the group of the keys developers create (they never
	// choose one); nil: no group. It names a group of the tenant, which
	// cannot be deleted while it is the default.
	DefaultGroup *string `json:"default_group"`
}

// Defaults for new tenants.
const (
	DefaultMaxKeysPerUser     = 5
	DefaultExpiringSoonWindow = 7 * 24 * time.Hour
	DefaultTenant             = "default"
)

// tenantRecord is a tenant as stored.
type tenantRecord struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	KeyLimit  *int      `json:"key_limit,omitempty"`
	Settings  Settings  `json:"settings"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// ImportedKeys is set by the first import into the tenant and never
	// cleared: the gateway then looks up secrets of a foreign format.
	ImportedKeys bool `json:"imported_keys,omitempty"`
}

// User is a person (or robot) of a tenant with roles.
type User struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	Roles     []Role    `json:"roles"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// HasRole reports whether the user has role r.
func (u *User) HasRole(r Role) bool {
	for _, have := range u.Roles {
		if have == r {
			return true
		}
	}
	return false
}

// Token is an admin API token of a user. The secret is never part of it.
type Token struct {
	ID        string     `json:"id"`
	Tenant    string     `json:"tenant"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	Hint      string     `json:"hint"`
	Status    string     `json:"status"` // active | revoked | expired
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
}

type tokenRecord struct {
	Token
	Hash SecretHash `json:"hash"`
}

// Rule admits requests whose method is one of Methods (any when empty) and
// whose path matches one of Paths (any when empty).
type Rule struct {
	Methods []string `json:"methods"`
	Paths   []string `json:"paths"`
}

// RateLimit is a token bucket applied to each key of a group.
type RateLimit struct {
	RequestsPerSecond float64 `json:"requests_per_second"`
	Burst             int     `json:"burst"`
}

// Group is an authorization group: which routes its keys may call, and how
// fast.
type Group struct {
	Name        string     `json:"name"`
	Tenant      string     `json:"tenant"`
	Description string     `json:"description"`
	Rules       []Rule     `json:"rules"`
	RateLimit   *RateLimit `json:"rate_limit"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
}

// Key statuses and expiry states, as in the spec.
const (
	StatusActive  = "active"
	StatusRevoked = "revoked"
	StatusExpired = "expired"

	ExpiryValid        = "valid"
	ExpiryExpiringSoon = "expiring_soon"
	ExpiryExpired      = "expired"
)

// Key is an API key as the admin API shows it. The secret is never part of
// it; Hint is.
type Key struct {
	ID          string     `json:"id"`
	Tenant      string     `json:"tenant"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Owner       string     `json:"owner"`
	Group       string     `json:"group"`
	IPAllowlist []string   `json:"ip_allowlist"`
	Status      string     `json:"status"`
	ExpiryState string     `json:"expiry_state"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	RevokedAt   *time.Time `json:"revoked_at"`
	RevokedBy   *string    `json:"revoked_by"`
	LastUsedAt  *time.Time `json:"last_used_at"`
	LastUsedIP  *string    `json:"last_used_ip"`
	Hint        string     `json:"hint"`
}

// keyRecord is a key as stored under its secret's hash. A grace record (the
// previous secret of a rotated key) has GraceOf set and nothing else but
// GraceUntil.
type keyRecord struct {
	ID          string     `json:"id"`
	Tenant      string     `json:"tenant,omitempty"`
	Name        string     `json:"name,omitempty"`
	Description string     `json:"description,omitempty"`
	Owner       string     `json:"owner,omitempty"`
	Group       string     `json:"group,omitempty"`
	IPAllowlist []string   `json:"ip_allowlist,omitempty"`
	Hint        string     `json:"hint,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	RevokedBy   string     `json:"revoked_by,omitempty"`
	// PrevHash is the hash of the secret a rotation with a grace period
	// replaced; its grace record lives under that hash until PrevUntil.
	PrevHash  *SecretHash `json:"prev_hash,omitempty"`
	PrevUntil *time.Time  `json:"prev_until,omitempty"`

	GraceOf    *SecretHash `json:"grace_of,omitempty"` // hash of the current record
	GraceUntil *time.Time  `json:"grace_until,omitempty"`
}

func (r *keyRecord) isGrace() bool { return r.GraceUntil != nil }

// Event is one audit record. Detail never holds a secret or a hash.
type Event struct {
	ID     string         `json:"id"`
	Tenant string         `json:"tenant"`
	Time   time.Time      `json:"time"`
	Type   string         `json:"type"`
	Actor  string         `json:"actor"`
	KeyID  *string        `json:"key_id"`
	Detail map[string]any `json:"detail"`
}

// Page parameters shared by lists.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 500
)
