package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestDiskReserveOption: the api_keys disk_reserve option takes a size
// (binary or decimal units) or off, and rejects anything else naming the
// option; Validate rejects a negative JSON value other than -1.
func TestDiskReserveOption(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		err  string
	}{
		{in: "2MiB", want: 2 << 20},
		{in: "1GB", want: 1_000_000_000},
		{in: "4096", want: 4096},
		{in: "off", want: -1},
		{in: "0", err: "disk_reserve"},
		{in: "lots", err: "disk_reserve"},
		{in: "-5MiB", err: "disk_reserve"},
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("api_keys {\n disk_reserve " + c.in + "\n}"))
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("disk_reserve %s: err %v, want one naming %q", c.in, err, c.err)
			}
		case err != nil:
			t.Errorf("disk_reserve %s: %v", c.in, err)
		case a.DiskReserve != c.want:
			t.Errorf("disk_reserve %s = %d, want %d", c.in, a.DiskReserve, c.want)
		default:
			if err := a.Validate(); err != nil {
				t.Errorf("disk_reserve %s: Validate: %v", c.in, err)
			}
		}
	}
	a := App{DiskReserve: -2}
	if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "disk_reserve") {
		t.Errorf("Validate(-2): %v", err)
	}
}
