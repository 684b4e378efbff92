package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/keygate/keygate/store"
)

// TestAppEventRetention: the api_keys option event_retention, in the
// Caddyfile and in JSON (Validate), with its default and bounds.
func TestAppEventRetention(t *testing.T) {
	parse := func(body string) (*App, error) {
		a := new(App)
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_keys {\n" + body + "\n}"))
		return a, err
	}
	for _, c := range []struct {
		line string
		want caddy.Duration
		bad  bool
	}{
		{line: "event_retention 30d", want: caddy.Duration(30 * 24 * time.Hour)},
		{line: "event_retention 24h", want: caddy.Duration(24 * time.Hour)},
		{line: "event_retention off", want: -1},
		{line: "event_retention 23h", bad: true},
		{line: "event_retention 1ns", bad: true},
		{line: "event_retention -1h", bad: true},
		{line: "event_retention soon", bad: true},
		{line: "event_retention", bad: true},
	} {
		a, err := parse(c.line)
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "event_retention") {
				t.Errorf("%q: accepted (%v), want an error naming event_retention", c.line, err)
			}
			continue
		}
		if err != nil || a.EventRetention != c.want {
			t.Errorf("%q: %v %v, want %v", c.line, a.EventRetention, err, time.Duration(c.want))
		}
		if err := a.Validate(); err != nil {
			t.Errorf("%q: Validate: %v", c.line, err)
		}
	}

	// JSON configs skip the Caddyfile's checks: Validate has them.
	for _, c := range []struct {
		app   App
		field string
	}{
		{App{EventRetention: caddy.Duration(time.Hour)}, "event_retention"},
		{App{FlushInterval: caddy.Duration(-time.Second)}, "flush_interval"},
		{App{NegativeTTL: caddy.Duration(-time.Second)}, "negative_ttl"},
		{App{CacheEntries: -1}, "cache_entries"},
		{App{NegativeCacheEntries: -1}, "negative_cache_entries"},
		{App{BlockCacheMB: -1}, "block_cache_mb"},
	} {
		if err := c.app.Validate(); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: Validate %v, want an error naming %s", c.app, err, c.field)
		}
	}
	if err := (&App{}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	if store.DefaultEventRetention != 90*24*time.Hour {
		t.Errorf("default retention %v, README says 90 days", store.DefaultEventRetention)
	}
}
