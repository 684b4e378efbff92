package cli

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// apiKey is a key as the API shows it (never with its secret).
type apiKey struct {
	ID          string     `json:"id"`
	Tenant      string     `json:"tenant"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Owner       string     `json:"owner"`
	Group       string     `json:"group"`
	IPAllowlist []string   `json:"ip_allowlist"`
	Status      string     `json:"status"`
	ExpiryState string     `json:"expiry_state"`
	CreatedAt   *time.Time `json:"created_at"`
	UpdatedAt   *time.Time `json:"updated_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	RevokedAt   *time.Time `json:"revoked_at"`
	RevokedBy   *string    `json:"revoked_by"`
	LastUsedAt  *time.Time `json:"last_used_at"`
	LastUsedIP  *string    `json:"last_used_ip"`
	Hint        string     `json:"hint"`
}

// keyWithSecret is the answer of create and rotate.
type keyWithSecret struct {
	Key    apiKey `json:"key"`
	Secret string `json:"secret"`
}

func keysCommand() *cobra.Command {
	cmd, conn := topCommand("keys", "Manage API keys (admin REST API)",
		"Create, list, show, edit, rotate, revoke, delete and import the API keys of a tenant through the admin REST API.\n"+
			"The token comes from KEYGATE_TOKEN; the API from --url or KEYGATE_URL (default "+DefaultURL+").")
	cmd.AddCommand(
		keysListCommand(conn),
		keysCreateCommand(conn),
		keysShowCommand(conn),
		keysEditCommand(conn),
		keysRotateCommand(conn),
		keysRevokeCommand(conn),
		keysDeleteCommand(conn),
		keysImportCommand(conn),
	)
	return cmd
}

func keysListCommand(conn *connection) *cobra.Command {
	var q, status, expiry, owner, group, cursor string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List and search keys (developers see their own)",
		Args:  cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVarP(&q, "query", "q", "", "search in name, id and owner")
	f.StringVar(&status, "status", "", "active, revoked or expired")
	f.StringVar(&expiry, "expiry-state", "", "valid, expiring_soon or expired")
	f.StringVar(&owner, "owner", "", `owner's user id, or "me"`)
	f.StringVar(&group, "group", "", "group")
	f.IntVar(&limit, "limit", 0, "page size, 1–500 (default: the API's, 100)")
	f.StringVar(&cursor, "cursor", "", "next_cursor of the previous page")
	cmd.RunE = action(conn, func(in *invocation) error {
		query := url.Values{}
		for name, v := range map[string]string{"q": q, "status": status, "expiry_state": expiry, "owner": owner, "group": group, "cursor": cursor} {
			if v != "" {
				query.Set(name, v)
			}
		}
		if in.cmd.Flags().Changed("limit") {
			query.Set("limit", strconv.Itoa(limit))
		}
		var page struct {
			Keys       []apiKey `json:"keys"`
			NextCursor *string  `json:"next_cursor"`
			Total      int      `json:"total"`
			Usage      struct {
				Count int  `json:"count"`
				Limit *int `json:"limit"`
			} `json:"usage"`
		}
		if err := in.callInto("GET", in.tenantPath("keys"), query, nil, &page); err != nil || in.conn.json {
			return err
		}
		out := in.cmd.OutOrStdout()
		if len(page.Keys) == 0 {
			fmt.Fprintln(out, "No keys.")
		} else {
			t := newTable(out, "ID", "NAME", "OWNER", "GROUP", "STATUS", "EXPIRY", "EXPIRES", "LAST USED", "HINT")
			for _, k := range page.Keys {
				t.row(k.ID, k.Name, k.Owner, orDash(k.Group), k.Status, k.ExpiryState,
					when(k.ExpiresAt, "never"), when(k.LastUsedAt, "never"), k.Hint)
			}
			t.flush()
		}
		usage := fmt.Sprintf("%d keys, no key limit", page.Usage.Count)
		if page.Usage.Limit != nil {
			usage = fmt.Sprintf("%d/%d keys", page.Usage.Count, *page.Usage.Limit)
		}
		fmt.Fprintf(out, "\n%d of %d matching keys shown. Tenant %s: %s.\n", len(page.Keys), page.Total, in.conn.tenant, usage)
		if page.NextCursor != nil {
			fmt.Fprintf(out, "Next page: --cursor %s\n", *page.NextCursor)
		}
		return nil
	})
	return cmd
}

func keysCreateCommand(conn *connection) *cobra.Command {
	var description, group, expires, owner string
	var ips []string
	cmd := &cobra.Command{
		Use:   "create <name>",
		Short: "Create a key and print its secret (shown only once)",
		Example: `  keygate keys create "billing backend" --group payments --expires 90d
  keygate keys create ci --ip 203.0.113.0/24 --ip 2001:db8::/32`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&description, "description", "", "description")
	f.StringVar(&group, "group", "", "group (must exist in the tenant; tenant_admin only: a developer's keys get the tenant's default group)")
	f.StringVar(&expires, "expires", "", "expiry: RFC 3339 time or duration from now (720h, 30d); default: the tenant's max_expiration, if any")
	f.StringSliceVar(&ips, "ip", nil, "allowed client IP or CIDR (repeat or comma-separate; default: any IP)")
	f.StringVar(&owner, "owner", "", "owner's user id (tenant_admin; the operator must give one)")
	cmd.RunE = action(conn, func(in *invocation) error {
		body := map[string]any{"name": in.args[0]}
		if description != "" {
			body["description"] = description
		}
		if group != "" {
			body["group"] = group
		}
		if owner != "" {
			body["owner"] = owner
		}
		if len(ips) > 0 {
			body["ip_allowlist"] = ips
		}
		if expires != "" {
			t, err := parseExpiry(expires, time.Now())
			if err != nil {
				return err
			}
			body["expires_at"] = t
		}
		var created keyWithSecret
		if err := in.callInto("POST", in.tenantPath("keys"), nil, body, &created); err != nil {
			return err
		}
		printSecret(in, "Created", created)
		return nil
	})
	return cmd
}

// printSecret shows a created or rotated key and its secret once, with the
// warning on stderr. With --json the raw answer was printed already.
func printSecret(in *invocation, verb string, ks keyWithSecret) {
	if !in.conn.json {
		out := in.cmd.OutOrStdout()
		fmt.Fprintf(out, "%s key %s (%q, owner %s, expires %s).\n\nSecret: %s\n",
			verb, ks.Key.ID, ks.Key.Name, ks.Key.Owner, when(ks.Key.ExpiresAt, "never"), ks.Secret)
		fmt.Fprintln(out, "\nSend it in the X-API-Key header (or Authorization: Bearer) through the gateway.")
	}
	warnSecret(in.cmd.ErrOrStderr(), "secret")
}

func keysShowCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show <key id>",
		Short: "Show one key",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = action(conn, func(in *invocation) error {
		var k apiKey
		if err := in.callInto("GET", in.tenantPath("keys", in.args[0]), nil, nil, &k); err != nil || in.conn.json {
			return err
		}
		printKey(in.cmd.OutOrStdout(), &k)
		return nil
	})
	return cmd
}

// printKey prints every field of a key.
func printKey(w io.Writer, k *apiKey) {
	allow := "any"
	if len(k.IPAllowlist) > 0 {
		allow = strings.Join(k.IPAllowlist, ", ")
	}
	lastUsed := when(k.LastUsedAt, "never")
	if k.LastUsedIP != nil && k.LastUsedAt != nil {
		lastUsed += " from " + *k.LastUsedIP
	}
	revokedBy := ""
	if k.RevokedBy != nil {
		revokedBy = *k.RevokedBy
	}
	fields(w,
		"ID", k.ID,
		"Name", k.Name,
		"Description", orDash(k.Description),
		"Tenant", k.Tenant,
		"Owner", k.Owner,
		"Group", orDash(k.Group),
		"Status", k.Status,
		"Expiry state", k.ExpiryState,
		"IP allowlist", allow,
		"Hint", k.Hint,
		"Created", when(k.CreatedAt, "-"),
		"Updated", when(k.UpdatedAt, "-"),
		"Expires", when(k.ExpiresAt, "never"),
		"Revoked", when(k.RevokedAt, "-"),
		"Revoked by", orDash(revokedBy),
		"Last used", lastUsed,
	)
}

func keysEditCommand(conn *connection) *cobra.Command {
	var name, description, group, expires string
	var ips []string
	var clearIPs bool
	cmd := &cobra.Command{
		Use:   "edit <key id>",
		Short: "Edit a key's name, description, group or IP allowlist (never its secret or expiry)",
		Args:  cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name")
	f.StringVar(&description, "description", "", "new description")
	f.StringVar(&group, "group", "", `new group ("" for none; tenant_admin only)`)
	f.StringSliceVar(&ips, "ip", nil, "replace the IP allowlist (repeat or comma-separate)")
	f.BoolVar(&clearIPs, "clear-ips", false, "empty the IP allowlist (allow any IP)")
	f.StringVar(&expires, "expires", "", "not editable: rotate the key to change its expiry")
	_ = f.MarkHidden("expires")
	cmd.RunE = action(conn, func(in *invocation) error {
		changed := in.cmd.Flags().Changed
		if changed("expires") {
			return errors.New("a key's expiry cannot be edited; rotate it instead: keygate keys rotate " + in.args[0] + " --expires …")
		}
		if changed("ip") && clearIPs {
			return errors.New("give either --ip or --clear-ips")
		}
		patch := map[string]any{}
		if changed("name") {
			patch["name"] = name
		}
		if changed("description") {
			patch["description"] = description
		}
		if changed("group") {
			patch["group"] = group
		}
		if changed("ip") {
			patch["ip_allowlist"] = ips
		}
		if clearIPs {
			patch["ip_allowlist"] = []string{}
		}
		if len(patch) == 0 {
			return errors.New("nothing to change: give --name, --description, --group, --ip or --clear-ips")
		}
		var k apiKey
		if err := in.callInto("PATCH", in.tenantPath("keys", in.args[0]), nil, patch, &k); err != nil || in.conn.json {
			return err
		}
		printKey(in.cmd.OutOrStdout(), &k)
		return nil
	})
	return cmd
}

func keysRotateCommand(conn *connection) *cobra.Command {
	var expires, grace string
	cmd := &cobra.Command{
		Use:   "rotate <key id>",
		Short: "Give a key a new secret (the old one stops working, or after --grace)",
		Args:  cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&expires, "expires", "", "new expiry: RFC 3339 time or duration from now (default: keep the current one)")
	f.StringVar(&grace, "grace", "", "keep the old secret working this long (e.g. 1h) for zero-downtime rollouts")
	cmd.RunE = action(conn, func(in *invocation) error {
		body := map[string]any{}
		if expires != "" {
			t, err := parseExpiry(expires, time.Now())
			if err != nil {
				return err
			}
			body["expires_at"] = t
		}
		if grace != "" {
			d, err := parseDuration(grace)
			if err != nil {
				return fmt.Errorf("--grace %q: give a duration such as 1h", grace)
			}
			body["grace_period"] = d.String()
		}
		var rotated keyWithSecret
		if err := in.callInto("POST", in.tenantPath("keys", in.args[0], "rotate"), nil, body, &rotated); err != nil {
			return err
		}
		printSecret(in, "Rotated", rotated)
		if grace != "" && !in.conn.json {
			fmt.Fprintf(in.cmd.OutOrStdout(), "The previous secret keeps working for %s.\n", grace)
		}
		return nil
	})
	return cmd
}

func keysRevokeCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke <key id>...",
		Short: "Revoke keys at once and for good (several ids: bulk revoke, tenant_admin)",
		Args:  cobra.MinimumNArgs(1),
	}
	cmd.RunE = action(conn, func(in *invocation) error {
		out := in.cmd.OutOrStdout()
		if len(in.args) == 1 {
			var k apiKey
			if err := in.callInto("POST", in.tenantPath("keys", in.args[0], "revoke"), nil, nil, &k); err != nil || in.conn.json {
				return err
			}
			fmt.Fprintf(out, "Revoked key %s (%q). It is rejected from now on.\n", k.ID, k.Name)
			return nil
		}
		var res struct {
			Results []struct {
				ID    string  `json:"id"`
				OK    bool    `json:"ok"`
				Error *string `json:"error"`
			} `json:"results"`
		}
		if err := in.callInto("POST", in.tenantPath("keys", "revoke"), nil, map[string]any{"ids": in.args}, &res); err != nil {
			return err
		}
		failed := 0
		t := newTable(out, "ID", "RESULT")
		for _, r := range res.Results {
			result := "revoked"
			if !r.OK {
				failed++
				result = "failed"
				if r.Error != nil {
					result += ": " + *r.Error
				}
			}
			t.row(r.ID, result)
		}
		if !in.conn.json {
			t.flush()
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d keys were not revoked", failed, len(res.Results))
		}
		return nil
	})
	return cmd
}

func keysDeleteCommand(conn *connection) *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "delete <key id> | --owner me|<user>",
		Short: "Delete a key record (or all keys of an owner); its audit events stay",
		Args:  cobra.MaximumNArgs(1),
	}
	cmd.Flags().StringVar(&owner, "owner", "", `delete every key of this owner ("me", or a user id as tenant_admin)`)
	cmd.RunE = action(conn, func(in *invocation) error {
		out := in.cmd.OutOrStdout()
		switch {
		case len(in.args) == 1 && owner == "":
			if _, err := in.call("DELETE", in.tenantPath("keys", in.args[0]), nil, nil); err != nil {
				return err
			}
			if !in.conn.json {
				fmt.Fprintf(out, "Deleted key %s.\n", in.args[0])
			}
			return nil
		case len(in.args) == 0 && owner != "":
			var res struct {
				Deleted int `json:"deleted"`
			}
			if err := in.callInto("DELETE", in.tenantPath("keys"), url.Values{"owner": {owner}}, nil, &res); err != nil || in.conn.json {
				return err
			}
			fmt.Fprintf(out, "Deleted %d keys of %s.\n", res.Deleted, owner)
			return nil
		}
		return errors.New("give either one key id or --owner")
	})
	return cmd
}
