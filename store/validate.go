package store

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Field bounds of the spec.
const (
	NameMin            = 2
	NameMax            = 200
	DescriptionMax     = 1000
	IDMax              = 64
	MaxKeysPerUserMin  = 1
	MaxKeysPerUserMax  = 1000
	AllowlistMax       = 1000
	RulesMax           = 64  // rules of a group
	GroupRuleEntryMax  = 64  // methods, and paths, of a rule
	PathPatternMax     = 256 // characters of a group path pattern
	TokenNameMax       = 200
	TenantNameMax      = 200
	maxBulkRevoke      = 1000
	minRequestsPerSec  = 0.001 // one request per 1000 s; below, a float rate is "never"
	maxRequestsPerSec  = 1e9
	maxBurst           = 1_000_000
	maxDurationSetting = 100 * 365 * 24 * time.Hour

	// MaxExpirationMin is the shortest max_expiration a tenant may set. A
	// cap of "1ns" made every key expire at birth; an hour is the shortest
	// lifetime for which an API key (rather than a short-lived token)
	// makes sense.
	MaxExpirationMin = time.Hour
)

// ReservedUserID is not a user id: wherever one is expected (owner=me) it
// names the caller, so no user may be called that.
const ReservedUserID = "me"

// checkID validates a caller-chosen id (tenant, user, group): 1–64 of
// letters, digits and . _ - @ + (so e-mail addresses work as user ids).
func checkID(f fieldErrors, field, id string) {
	if id == "" || len(id) > IDMax {
		f.add(field, fmt.Sprintf("must be 1–%d characters", IDMax))
		return
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isBase62(c) && !strings.ContainsRune("._-@+", rune(c)) {
			f.add(field, "may contain only letters, digits and . _ - @ +")
			return
		}
	}
	if id == "." || id == ".." {
		// Path segments: /v1/tenants/.. is cleaned to /v1/, so the
		// thing could never be addressed again.
		f.add(field, `must not be "." or ".."`)
	}
}

// checkUserID validates a user id (a user, a key's owner): an id that is not
// the reserved word "me".
func checkUserID(f fieldErrors, field, id string) {
	checkID(f, field, id)
	if id == ReservedUserID {
		f.add(field, `"me" is reserved: it names the caller (owner=me)`)
	}
}

// checkText validates free text: valid UTF-8, no control characters, and a
// length in characters (not bytes) within [min, max].
func checkText(f fieldErrors, field, s string, min, max int) {
	if !utf8.ValidString(s) {
		f.add(field, "must be valid UTF-8")
		return
	}
	n := utf8.RuneCountInString(s)
	if n < min || n > max {
		if min > 0 {
			f.add(field, fmt.Sprintf("must be %d–%d characters (got %d)", min, max, n))
		} else {
			f.add(field, fmt.Sprintf("must be at most %d characters (got %d)", max, n))
		}
		return
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			f.add(field, "must not contain control characters")
			return
		}
	}
}

// parseAllowlist validates entries (addresses or CIDRs) and returns them in
// canonical form: "10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32".
func parseAllowlist(f fieldErrors, field string, entries []string) []string {
	if len(entries) > AllowlistMax {
		f.add(field, fmt.Sprintf("at most %d entries", AllowlistMax))
		return nil
	}
	out := make([]string, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	for i, e := range entries {
		p, err := parsePrefix(strings.TrimSpace(e))
		if err != nil {
			f.add(field, fmt.Sprintf("entry %d (%q) is not an IP address or CIDR", i, truncate(e, 64)))
			return nil
		}
		s := p.String()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// parsePrefix reads an address or a CIDR; IPv4-mapped IPv6 is unmapped so
// that "::ffff:10.0.0.1" and "10.0.0.1" mean the same client.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("zones are not allowed")
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zones are not allowed")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
