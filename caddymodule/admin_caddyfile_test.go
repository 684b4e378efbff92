package caddymodule

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestAdminCaddyfile: api_key_admin reads operator tokens, the failed-
// authentication throttle's auth_failures <burst> <interval> and
// console on|off.
func TestAdminCaddyfile(t *testing.T) {
	var a AdminHandler
	d := caddyfile.NewTestDispenser(`api_key_admin {
		operator_token {env.OP}
		auth_failures 3 2m
	}`)
	if err := a.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if len(a.OperatorTokens) != 1 || a.AuthFailureBurst != 3 || time.Duration(a.AuthFailureInterval) != 2*time.Minute {
		t.Fatalf("parsed %+v", a)
	}
	if a.DisableConsole {
		t.Fatal("the console is on by default")
	}
	for cfg, off := range map[string]bool{"console off": true, "console on": false} {
		var a AdminHandler
		if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key_admin {\n" + cfg + "\n}")); err != nil || a.DisableConsole != off {
			t.Errorf("%q: %v, disable_console %v", cfg, err, a.DisableConsole)
		}
	}
	for _, bad := range []string{"console", "console maybe", "console off now", "auth_failures", "auth_failures 3", "auth_failures 0 1s", "auth_failures x 1s", "auth_failures 3 -1s", "auth_failures 3 1s 2"} {
		var a AdminHandler
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_key_admin {\n" + bad + "\n}"))
		if err == nil {
			t.Errorf("%q accepted: %+v", bad, a)
		}
	}
}
