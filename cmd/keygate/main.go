// Command keygate is Caddy with keygate's modules built in: `keygate run`,
// `keygate reload`, `keygate list-modules` … plus the admin API client
// commands (`keygate keys …`, `keygate tenants …`), which only speak HTTP
// to the admin API and never open the store.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/keygate/keygate/admin/cli"
	_ "github.com/keygate/keygate/caddymodule"
)

func main() {
	for _, c := range cli.Commands() {
		c := c
		caddycmd.RegisterCommand(caddycmd.Command{
			Name:  c.Name(),
			Short: c.Short,
			Long:  c.Long,
			CobraFunc: func(cmd *cobra.Command) {
				cmd.Use = c.Use
				cmd.Aliases = c.Aliases
				cmd.Args = c.Args
				cmd.RunE = c.RunE
				cmd.PersistentFlags().AddFlagSet(c.PersistentFlags())
				cmd.Flags().AddFlagSet(c.Flags())
				for _, sub := range c.Commands() {
					cmd.AddCommand(sub)
				}
			},
		})
	}
	caddycmd.Main()
}
