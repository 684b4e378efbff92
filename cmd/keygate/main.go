// Command keygate is Caddy with keygate's modules built in: `keygate run`,
// `keygate reload`, `keygate list-modules` … plus the admin API client
// commands (`keygate keys …`, `keygate tenants …`), which only speak HTTP
// to the admin API and never open the store, and `keygate storage copy`,
// the offline move of a stopped node's Pebble store into etcd.
package main

import (
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/keygate/keygate/admin/cli"
	"github.com/keygate/keygate/caddymodule"
)

func main() {
	// `keygate storage copy` sits beside Caddy's own `storage export` and
	// `storage import`, which caddycmd registers and nobody can extend.
	if len(os.Args) > 2 && os.Args[1] == "storage" && os.Args[2] == "copy" {
		c := caddymodule.StorageCopyCommand()
		c.SetArgs(os.Args[3:])
		if err := c.Execute(); err != nil {
			os.Exit(1)
		}
		return
	}
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
