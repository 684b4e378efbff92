package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// apiTenant is a tenant as the API shows it.
type apiTenant struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	KeyLimit  *int       `json:"key_limit"`
	KeyCount  int        `json:"key_count"`
	CreatedAt *time.Time `json:"created_at"`
}

// apiSettings are a tenant's settings as the API shows them.
type apiSettings struct {
	APIKeysEnabled     bool    `json:"api_keys_enabled"`
	MaxExpiration      *string `json:"max_expiration"`
	MaxKeysPerUser     int     `json:"max_keys_per_user"`
	ExpiringSoonWindow string  `json:"expiring_soon_window"`
	DefaultGroup       *string `json:"default_group"`
}

func tenantsCommand() *cobra.Command {
	cmd, conn := topCommand("tenants", "Manage tenants (operator)",
		"List, create, show and edit tenants through the admin REST API. Creating, listing and editing tenants\n"+
			"needs the operator token; a tenant_admin may show its own tenant.")
	cmd.AddCommand(
		tenantsListCommand(conn),
		tenantsCreateCommand(conn),
		tenantsShowCommand(conn),
		tenantsEditCommand(conn),
	)
	return cmd
}

// keyLimitArg reads --key-limit: a number, or "none" for no limit (null).
func keyLimitArg(s string) (any, error) {
	switch strings.ToLower(s) {
	case "none", "null", "unlimited":
		return nil, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return nil, fmt.Errorf("--key-limit %q: give a number, or none", s)
	}
	return n, nil
}

func limitText(limit *int) string {
	if limit == nil {
		return "none"
	}
	return strconv.Itoa(*limit)
}

func tenantsListCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List tenants", Args: cobra.NoArgs}
	pageQuery := pageFlags(cmd)
	cmd.RunE = action(conn, func(in *invocation) error {
		query := pageQuery()
		var page struct {
			Tenants    []apiTenant `json:"tenants"`
			NextCursor *string     `json:"next_cursor"`
		}
		if err := in.callInto("GET", apiPath("tenants"), query, nil, &page); err != nil || in.conn.json {
			return err
		}
		out := in.cmd.OutOrStdout()
		t := newTable(out, "ID", "NAME", "KEYS", "KEY LIMIT", "CREATED")
		for _, tn := range page.Tenants {
			t.row(tn.ID, tn.Name, strconv.Itoa(tn.KeyCount), limitText(tn.KeyLimit), when(tn.CreatedAt, "-"))
		}
		t.flush()
		if page.NextCursor != nil {
			fmt.Fprintf(out, "\nNext page: --cursor %s\n", *page.NextCursor)
		}
		return nil
	})
	return cmd
}

func printTenant(w io.Writer, t *apiTenant) {
	fields(w, "ID", t.ID, "Name", t.Name, "Keys", strconv.Itoa(t.KeyCount), "Key limit", limitText(t.KeyLimit), "Created", when(t.CreatedAt, "-"))
}

func tenantsCreateCommand(conn *connection) *cobra.Command {
	var name, keyLimit string
	cmd := &cobra.Command{
		Use:   "create <tenant id>",
		Short: "Create a tenant (its API keys start disabled: see keygate settings set)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&name, "name", "", "display name (default: the id)")
	cmd.Flags().StringVar(&keyLimit, "key-limit", "", "most keys the tenant may have, or none")
	cmd.RunE = action(conn, func(in *invocation) error {
		body := map[string]any{"id": in.args[0]}
		if name != "" {
			body["name"] = name
		}
		if keyLimit != "" {
			v, err := keyLimitArg(keyLimit)
			if err != nil {
				return err
			}
			body["key_limit"] = v
		}
		var t apiTenant
		if err := in.callInto("POST", apiPath("tenants"), nil, body, &t); err != nil || in.conn.json {
			return err
		}
		printTenant(in.cmd.OutOrStdout(), &t)
		fmt.Fprintf(in.cmd.OutOrStdout(), "\nAPI keys are disabled until enabled: keygate settings set --tenant %s --api-keys-enabled\n", t.ID)
		return nil
	})
	return cmd
}

func tenantsShowCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "show [tenant id]", Short: "Show a tenant (default: --tenant)", Args: cobra.MaximumNArgs(1)}
	cmd.RunE = action(conn, func(in *invocation) error {
		id := in.conn.tenant
		if len(in.args) == 1 {
			id = in.args[0]
		}
		var t apiTenant
		if err := in.callInto("GET", apiPath("tenants", id), nil, nil, &t); err != nil || in.conn.json {
			return err
		}
		printTenant(in.cmd.OutOrStdout(), &t)
		return nil
	})
	return cmd
}

func tenantsEditCommand(conn *connection) *cobra.Command {
	var name, keyLimit string
	cmd := &cobra.Command{Use: "edit <tenant id>", Short: "Edit a tenant's name or key limit", Args: cobra.ExactArgs(1)}
	cmd.Flags().StringVar(&name, "name", "", "new display name")
	cmd.Flags().StringVar(&keyLimit, "key-limit", "", "new key limit, or none (affects new keys only)")
	cmd.RunE = action(conn, func(in *invocation) error {
		patch := map[string]any{}
		if in.cmd.Flags().Changed("name") {
			patch["name"] = name
		}
		if in.cmd.Flags().Changed("key-limit") {
			v, err := keyLimitArg(keyLimit)
			if err != nil {
				return err
			}
			patch["key_limit"] = v
		}
		if len(patch) == 0 {
			return errors.New("nothing to change: give --name or --key-limit")
		}
		var t apiTenant
		if err := in.callInto("PATCH", apiPath("tenants", in.args[0]), nil, patch, &t); err != nil || in.conn.json {
			return err
		}
		printTenant(in.cmd.OutOrStdout(), &t)
		return nil
	})
	return cmd
}

func settingsCommand() *cobra.Command {
	cmd, conn := topCommand("settings", "Show or change a tenant's API key settings (tenant_admin)",
		"Show or change the API key policy of --tenant: the enable switch, max_expiration, max_keys_per_user,\n"+
			"expiring_soon_window and default_group (the group of every key a developer creates; developers\n"+
			"never choose one). Changes to limits affect new keys only.")
	cmd.AddCommand(settingsShowCommand(conn), settingsSetCommand(conn))
	return cmd
}

func printSettings(w io.Writer, s *apiSettings) {
	enabled := "no"
	if s.APIKeysEnabled {
		enabled = "yes"
	}
	maxExp := "none"
	if s.MaxExpiration != nil {
		maxExp = *s.MaxExpiration
	}
	defaultGroup := "none"
	if s.DefaultGroup != nil {
		defaultGroup = *s.DefaultGroup
	}
	fields(w,
		"API keys enabled", enabled,
		"Max expiration", maxExp,
		"Max keys per user", strconv.Itoa(s.MaxKeysPerUser),
		"Expiring-soon window", s.ExpiringSoonWindow,
		"Default group", defaultGroup,
	)
}

func settingsShowCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "show", Short: "Show the tenant's settings", Args: cobra.NoArgs}
	cmd.RunE = action(conn, func(in *invocation) error {
		var s apiSettings
		if err := in.callInto("GET", in.tenantPath("settings"), nil, nil, &s); err != nil || in.conn.json {
			return err
		}
		printSettings(in.cmd.OutOrStdout(), &s)
		return nil
	})
	return cmd
}

func settingsSetCommand(conn *connection) *cobra.Command {
	var enabled bool
	var maxExpiration, expiringSoon, defaultGroup string
	var noDefaultGroup bool
	var maxKeysPerUser int
	cmd := &cobra.Command{
		Use:     "set",
		Short:   "Change the tenant's settings (only the flags given)",
		Example: "  keygate settings set --api-keys-enabled --max-expiration 90d --max-keys-per-user 10",
		Args:    cobra.NoArgs,
	}
	f := cmd.Flags()
	f.BoolVar(&enabled, "api-keys-enabled", false, "enable (or =false: disable) the tenant's API keys")
	f.StringVar(&maxExpiration, "max-expiration", "", "longest key lifetime (720h, 90d), or none")
	f.IntVar(&maxKeysPerUser, "max-keys-per-user", 0, "most active keys per owner (1–1000)")
	f.StringVar(&expiringSoon, "expiring-soon-window", "", "how long before expiry a key counts as expiring soon (168h, 7d)")
	f.StringVar(&defaultGroup, "default-group", "", "group given to every key a developer creates (an existing group)")
	f.BoolVar(&noDefaultGroup, "no-default-group", false, "developers' keys get no group")
	cmd.MarkFlagsMutuallyExclusive("default-group", "no-default-group")
	cmd.RunE = action(conn, func(in *invocation) error {
		changed := in.cmd.Flags().Changed
		patch := map[string]any{}
		if changed("api-keys-enabled") {
			patch["api_keys_enabled"] = enabled
		}
		if changed("max-expiration") {
			v, err := durationArg("max-expiration", maxExpiration)
			if err != nil {
				return err
			}
			patch["max_expiration"] = v
		}
		if changed("max-keys-per-user") {
			patch["max_keys_per_user"] = maxKeysPerUser
		}
		if changed("expiring-soon-window") {
			d, err := parseDuration(expiringSoon)
			if err != nil {
				return fmt.Errorf("--expiring-soon-window %q: give a duration such as 168h or 7d", expiringSoon)
			}
			patch["expiring_soon_window"] = d.String()
		}
		if changed("default-group") {
			if defaultGroup == "" {
				return errors.New("--default-group: give a group name, or --no-default-group")
			}
			patch["default_group"] = defaultGroup
		}
		if changed("no-default-group") && noDefaultGroup {
			patch["default_group"] = nil
		}
		if len(patch) == 0 {
			return errors.New("nothing to change: give --api-keys-enabled, --max-expiration, --max-keys-per-user, --expiring-soon-window, --default-group or --no-default-group")
		}
		var s apiSettings
		if err := in.callInto("PATCH", in.tenantPath("settings"), nil, patch, &s); err != nil || in.conn.json {
			return err
		}
		printSettings(in.cmd.OutOrStdout(), &s)
		return nil
	})
	return cmd
}
