package store

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzAllowlist feeds ip_allowlist entries through parseAllowlist (the
// admin API's validation), parsePrefix and newAllowlist (the gateway's
// matcher). Properties:
//   - nothing panics;
//   - every accepted entry is canonical: its string re-parses to the same
//     prefix, and it is the prefix the raw entry meant;
//   - accepted entries always build an Allowlist, both as a short list
//     (linear scan) and as a long one (≥ allowlistRangerMin: cidranger);
//   - every client address inside an accepted prefix is Contained by both,
//     and the two forms agree on every probed address.
//
// Client addresses are what the gateway sees: IPv4-mapped IPv6 addresses
// are IPv4 clients (Contains unmaps them), so "::/0" or "::ffff:0:0/80" do
// not admit 10.0.0.1 arriving as ::ffff:10.0.0.1, while "::ffff:0:0/96"
// (canonically 0.0.0.0/0) does.
//
// entries is a comma-separated list; probe is one more address to test.
func FuzzAllowlist(f *testing.F) {
	seeds := [][2]string{
		{"10.0.0.0/8", "10.1.2.3"},
		{"192.0.2.7", "192.0.2.7"},
		{"192.0.2.7/24", "192.0.2.200"},
		{"2001:db8::/32", "2001:db8::1"},
		{"2001:db8::1", "2001:db8::2"},
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"::ffff:10.0.0.0/104", "::ffff:10.9.9.9"},
		{"::ffff:0.0.0.0/80", "::ffff:1.2.3.4"},
		{"::ffff:0.0.0.0/96", "1.2.3.4"},
		{"::/0", "::ffff:1.2.3.4"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"::1/128, 127.0.0.1", "::1"},
		{"fe80::1%eth0", "fe80::1"},
		{"fe80::/10", "fe80::1%eth0"},
		{"10.0.0.0/33", "10.0.0.1"},
		{"10.0.0.0/-1", ""},
		{"1.2.3.4/08", ""},
		{" 10.0.0.1 ,\t2001:db8::/48 ", "2001:db8:0:ffff::1"},
		{"::1.2.3.4/120", "::1.2.3.99"},
		{"10.0.0.0/8,10.0.0.0/8,10.1.0.0/16", "10.1.0.1"},
		{"", ""},
		{",", ""},
		{"1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.0/24,6.6.0.0/16,7.0.0.0/8,2001:db8::/64,2001:db8:1::/48,::1,::2,::3,::4,::5,::6,::7,::8", "5.5.5.5"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, entries, probe string) {
		raw := strings.Split(entries, ",")
		if len(raw) > 64 {
			raw = raw[:64]
		}
		for _, e := range raw {
			_, _ = parsePrefix(e) // never panics, whatever the input
		}
		fe := fieldErrors{}
		out := parseAllowlist(fe, "ip_allowlist", raw)
		if len(fe) > 0 {
			if out != nil {
				t.Fatalf("rejected list %q still returned entries %q", raw, out)
			}
			return
		}
		if len(out) > len(raw) {
			t.Fatalf("%d entries became %d", len(raw), len(out))
		}

		prefixes := make([]netip.Prefix, 0, len(out))
		for _, c := range out {
			p, err := parsePrefix(c)
			if err != nil {
				t.Fatalf("canonical entry %q does not re-parse: %v", c, err)
			}
			if p.String() != c {
				t.Fatalf("canonical entry %q re-parses as %q", c, p.String())
			}
			if p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6() && p.Bits() >= 96 {
				t.Fatalf("canonical entry %q is not canonical (%v)", c, p)
			}
			prefixes = append(prefixes, p)
		}
		// Every raw entry is one of the canonical prefixes.
		for _, e := range raw {
			p, err := parsePrefix(strings.TrimSpace(e))
			if err != nil {
				t.Fatalf("list accepted but entry %q fails: %v", e, err)
			}
			if !containsPrefix(prefixes, p) {
				t.Fatalf("entry %q (%v) missing from canonical list %q", e, p, out)
			}
		}

		short, err := newAllowlist(out)
		if err != nil {
			t.Fatalf("newAllowlist(%q): %v", out, err)
		}
		if len(out) == 0 {
			if short != nil {
				t.Fatalf("empty list built a non-nil Allowlist")
			}
			return
		}
		// The same set, repeated past the threshold: the cidranger form.
		long := make([]string, 0, allowlistRangerMin+len(out))
		for len(long) < allowlistRangerMin {
			long = append(long, out...)
		}
		ranged, err := newAllowlist(long)
		if err != nil {
			t.Fatalf("newAllowlist(%d entries of %q): %v", len(long), out, err)
		}
		if ranged.ranger == nil {
			t.Fatalf("%d entries did not use cidranger", len(long))
		}
		if len(out) < allowlistRangerMin && short.ranger != nil {
			t.Fatalf("%d entries used cidranger", len(out))
		}

		probes := make([]netip.Addr, 0, 4*len(prefixes)+1)
		extra, perr := netip.ParseAddr(strings.TrimSpace(probe))
		if perr == nil {
			probes = append(probes, extra)
		}
		for _, p := range prefixes {
			for _, a := range addrsIn(p, extra) {
				probes = append(probes, a)
				if p.Addr().Is6() && a.Is4In6() {
					continue // an IPv4 client: IPv6 prefixes do not cover it
				}
				if !short.Contains(a) || !ranged.Contains(a) {
					t.Fatalf("%v is inside accepted %v, but Contains says short=%v long=%v (list %q)",
						a, p, short.Contains(a), ranged.Contains(a), out)
				}
			}
		}
		for _, a := range probes {
			if s, r := short.Contains(a), ranged.Contains(a); s != r {
				t.Fatalf("Contains(%v): short list %v, cidranger %v (list %q)", a, s, r, out)
			}
			want := false
			for _, p := range prefixes {
				want = want || p.Contains(a.Unmap().WithZone(""))
			}
			if got := short.Contains(a); got != want && a.Zone() == "" {
				t.Fatalf("Contains(%v) = %v, want %v (list %q)", a, got, want, out)
			}
		}
	})
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// addrsIn returns addresses inside p: its first and last address and the
// probe's host bits under p's network bits (when the families match).
func addrsIn(p netip.Prefix, probe netip.Addr) []netip.Addr {
	first := p.Addr()
	b := first.AsSlice()
	bits := p.Bits()
	last := make([]byte, len(b))
	copy(last, b)
	for i := bits; i < len(b)*8; i++ {
		last[i/8] |= 0x80 >> (i % 8)
	}
	l, _ := netip.AddrFromSlice(last)
	out := []netip.Addr{first, l}
	if probe.IsValid() && probe.WithZone("").BitLen() == first.BitLen() {
		mixed := probe.WithZone("").AsSlice()
		for i := 0; i < bits; i++ {
			m := byte(0x80 >> (i % 8))
			mixed[i/8] = mixed[i/8]&^m | b[i/8]&m
		}
		a, _ := netip.AddrFromSlice(mixed)
		out = append(out, a)
	}
	return out
}

// TestAllowlistZone: a zoned client address (link-local, as Caddy may
// report it) is judged by its address alone, the same way by the linear
// scan and by cidranger (found by FuzzAllowlist: the scan said no, the
// ranger yes).
func TestAllowlistZone(t *testing.T) {
	ip := netip.MustParseAddr("fe80::1%eth0")
	for _, n := range []int{1, allowlistRangerMin} {
		entries := make([]string, n)
		for i := range entries {
			entries[i] = "fe80::/10"
		}
		a, err := newAllowlist(entries)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Contains(ip) {
			t.Errorf("%d entries: fe80::/10 does not contain %v", n, ip)
		}
		if a.Contains(netip.MustParseAddr("fe90::1%eth0")) != a.Contains(netip.MustParseAddr("fe90::1")) {
			t.Errorf("%d entries: the zone changes the answer", n)
		}
	}
}
