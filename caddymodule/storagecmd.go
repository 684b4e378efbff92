package caddymodule

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keygate/keygate/store"
)

// StorageCopyCommand is `keygate storage copy`: it copies a stopped
// keygate's Pebble store into etcd, for a move to several nodes (README,
// "Running several nodes"). Caddy's own `storage` command (export, import)
// cannot take a subcommand from outside, so cmd/keygate runs this one when
// its arguments start with "storage copy".
func StorageCopyCommand() *cobra.Command {
	var o storageCopyOptions
	c := &cobra.Command{
		Use:   "copy --from pebble:<dir> --to etcd:<host:port>[,<host:port>…] [--prefix /keygate/]",
		Short: "Copies keygate's Pebble store into etcd (offline)",
		Long: `Copies every record of a stopped keygate's Pebble store into etcd:
tenants, settings, users, tokens, groups, keys with their secrets' hashes
(every key and token keeps working; keep the same pepper), grace secrets,
events and usage. It refuses a target prefix that already holds data.

It is an offline tool: stop the keygate that uses the Pebble store first
(Pebble's lock makes the copy fail while a server has the store open).

etcd authentication and TLS: --user, the password in the environment
variable KEYGATE_ETCD_PASSWORD, --cacert, --cert and --key.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(c *cobra.Command, _ []string) error {
			o.password = os.Getenv("KEYGATE_ETCD_PASSWORD")
			return runStorageCopy(c.OutOrStdout(), o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.from, "from", "", "the source: pebble:<dir> (required)")
	f.StringVar(&o.to, "to", "", "the target: etcd:<host:port>[,<host:port>…], https://host:port with TLS (required)")
	f.StringVar(&o.prefix, "prefix", store.DefaultEtcdPrefix, "the etcd key prefix (the api_keys etcd prefix option)")
	f.StringVar(&o.user, "user", "", "etcd user name (password: $KEYGATE_ETCD_PASSWORD)")
	f.StringVar(&o.ca, "cacert", "", "CA certificate file that verifies etcd's")
	f.StringVar(&o.cert, "cert", "", "client certificate file")
	f.StringVar(&o.key, "key", "", "client key file")
	return c
}

type storageCopyOptions struct {
	from, to, prefix string
	user, password   string
	ca, cert, key    string
}

// runStorageCopy is `keygate storage copy`.
func runStorageCopy(out io.Writer, o storageCopyOptions) error {
	dir, ok := strings.CutPrefix(o.from, "pebble:")
	if !ok || dir == "" {
		return fmt.Errorf("--from: want pebble:<dir>, got %q", o.from)
	}
	eps, ok := strings.CutPrefix(o.to, "etcd:")
	if !ok || eps == "" {
		return fmt.Errorf("--to: want etcd:<host:port>[,<host:port>…], got %q", o.to)
	}
	e := &EtcdConfig{Endpoints: strings.Split(eps, ","), Prefix: o.prefix, Username: o.user, Password: o.password}
	if o.ca != "" || o.cert != "" || o.key != "" {
		e.TLS = &EtcdTLS{CA: o.ca, Cert: o.cert, Key: o.key}
	}
	if err := e.validate(); err != nil {
		return fmt.Errorf("--to/--prefix: %s", strings.TrimPrefix(err.Error(), "api_keys: "))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	src, err := store.OpenPebbleReadOnly(abs, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	cfg := store.EtcdConfig{Endpoints: e.Endpoints, Prefix: e.Prefix, Username: o.user, Password: o.password,
		CAFile: o.ca, CertFile: o.cert, KeyFile: o.key}
	if cfg.Prefix == "" {
		cfg.Prefix = store.DefaultEtcdPrefix
	}
	dst, err := store.OpenEtcd(cfg)
	if err != nil {
		return err
	}
	defer dst.Close()
	st, err := store.CopyKV(dst, src)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "copied %d records (%d bytes) from %s to etcd %s under %s\n", st.Records, st.Bytes, abs, eps, cfg.Prefix)
	return err
}
