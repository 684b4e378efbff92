// Command keygate is Caddy with keygate's modules built in: `keygate run`,
// `keygate reload`, `keygate list-modules` … plus the admin API client
// commands (`keygate keys …`, `keygate tenants …`).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/keygate/keygate/caddymodule"
)

func main() {
	caddycmd.Main()
}
