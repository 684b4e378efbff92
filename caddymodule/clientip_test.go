package caddymodule

import (
	"fmt"
	"testing"

	"github.com/keygate/keygate/store"
)

// TestAllowlistClientIP checks the per-key allowlist against Caddy's
// client_ip over IPv4 and IPv6, with and without a trusted proxy.
func TestAllowlistClientIP(t *testing.T) {
	up := echoUpstream(t)
	dir := t.TempDir()
	p4, p6, pTrusted := freePort(t), freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %[1]s/caddy
	log {
		level error
	}
	api_keys {
		storage %[1]s
	}
	servers 127.0.0.1:%[5]d {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
}
http://127.0.0.1:%[2]d {
	bind 127.0.0.1
	api_key
	reverse_proxy %[4]s
}
http://[::1]:%[3]d {
	bind ::1
	api_key
	reverse_proxy %[4]s
}
http://127.0.0.1:%[5]d {
	bind 127.0.0.1
	api_key
	reverse_proxy %[4]s
}`, dir, p4, p6, up.Listener.Addr(), pTrusted))
	st := sharedStore(t, dir)
	enable(t, st, store.DefaultTenant)
	key := func(allow ...string) string {
		_, s := newKey(t, st, store.DefaultTenant, store.KeyInput{IPAllowlist: allow})
		return s
	}
	v4 := fmt.Sprintf("http://127.0.0.1:%d/", p4)
	v6 := fmt.Sprintf("http://[::1]:%d/", p6)
	trusted := fmt.Sprintf("http://127.0.0.1:%d/", pTrusted)
	loop4, loop6, mapped, net4, other := key("127.0.0.1"), key("::1"), key("::ffff:127.0.0.1"), key("127.0.0.0/8", "2001:db8::/32"), key("203.0.113.7")
	cases := []struct {
		name   string
		url    string
		secret string
		xff    string
		status int
	}{
		{"ipv4 exact", v4, loop4, "", 200},
		{"ipv4 key from ipv6", v6, loop4, "", 403},
		{"ipv6 exact", v6, loop6, "", 200},
		{"ipv6 key from ipv4", v4, loop6, "", 403},
		{"ipv4-mapped entry matches ipv4 client", v4, mapped, "", 200},
		{"ipv4 cidr", v4, net4, "", 200},
		{"other address", v4, other, "", 403},
		{"spoofed X-Forwarded-For from untrusted peer", v4, other, "203.0.113.7", 403},
		{"spoofed X-Forwarded-For does not lock out the real client", v4, loop4, "203.0.113.7", 200},
		{"trusted proxy's X-Forwarded-For honoured", trusted, other, "203.0.113.7", 200},
		{"trusted proxy: real client is the forwarded one", trusted, loop4, "203.0.113.7", 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{"X-API-Key": c.secret}
			if c.xff != "" {
				hdr["X-Forwarded-For"] = c.xff
			}
			r := get(t, c.url, hdr)
			if r.status != c.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, c.status)
			}
			if c.status == 403 && r.code() != "ip_not_allowed" {
				t.Fatalf("code %q", r.code())
			}
		})
	}
}
