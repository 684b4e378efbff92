package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// apiUser is a user as the API shows it.
type apiUser struct {
	ID        string     `json:"id"`
	Tenant    string     `json:"tenant"`
	Roles     []string   `json:"roles"`
	CreatedAt *time.Time `json:"created_at"`
	UpdatedAt *time.Time `json:"updated_at"`
}

// apiToken is a user token as the API shows it (never with its secret).
type apiToken struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	Hint      string     `json:"hint"`
	Status    string     `json:"status"`
	CreatedAt *time.Time `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
}

func usersCommand() *cobra.Command {
	cmd, conn := topCommand("users", "Manage a tenant's users and their roles (tenant_admin)",
		"List, create or update (put) and delete the users of --tenant. Roles: developer, tenant_admin.\n"+
			"Deleting a user revokes its tokens; its keys stay.")
	cmd.AddCommand(usersListCommand(conn), usersPutCommand(conn), usersDeleteCommand(conn))
	return cmd
}

func usersListCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the tenant's users", Args: cobra.NoArgs}
	pageQuery := pageFlags(cmd)
	cmd.RunE = action(conn, func(in *invocation) error {
		query := pageQuery()
		var page struct {
			Users      []apiUser `json:"users"`
			NextCursor *string   `json:"next_cursor"`
		}
		if err := in.callInto("GET", in.tenantPath("users"), query, nil, &page); err != nil || in.conn.json {
			return err
		}
		out := in.cmd.OutOrStdout()
		t := newTable(out, "USER", "ROLES", "CREATED", "UPDATED")
		for _, u := range page.Users {
			t.row(u.ID, strings.Join(u.Roles, ","), when(u.CreatedAt, "-"), when(u.UpdatedAt, "-"))
		}
		t.flush()
		if page.NextCursor != nil {
			fmt.Fprintf(out, "\nNext page: --cursor %s\n", *page.NextCursor)
		}
		return nil
	})
	return cmd
}

func usersPutCommand(conn *connection) *cobra.Command {
	var roles []string
	cmd := &cobra.Command{
		Use:     "put <user id> --role developer|tenant_admin",
		Short:   "Create a user or replace its roles",
		Example: "  keygate users put alice@example.com --role developer\n  keygate users put bob --role developer,tenant_admin",
		Args:    cobra.ExactArgs(1),
	}
	cmd.Flags().StringSliceVar(&roles, "role", nil, "role: developer, tenant_admin (repeat or comma-separate)")
	_ = cmd.MarkFlagRequired("role")
	cmd.RunE = action(conn, func(in *invocation) error {
		var u apiUser
		if err := in.callInto("PUT", in.tenantPath("users", in.args[0]), nil, map[string]any{"roles": roles}, &u); err != nil || in.conn.json {
			return err
		}
		fmt.Fprintf(in.cmd.OutOrStdout(), "User %s of tenant %s has roles: %s.\n", u.ID, u.Tenant, strings.Join(u.Roles, ", "))
		return nil
	})
	return cmd
}

func usersDeleteCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "delete <user id>", Short: "Delete a user and revoke its tokens", Args: cobra.ExactArgs(1)}
	cmd.RunE = action(conn, func(in *invocation) error {
		if _, err := in.call("DELETE", in.tenantPath("users", in.args[0]), nil, nil); err != nil || in.conn.json {
			return err
		}
		fmt.Fprintf(in.cmd.OutOrStdout(), "Deleted user %s; its tokens are revoked (its keys stay).\n", in.args[0])
		return nil
	})
	return cmd
}

func tokensCommand() *cobra.Command {
	cmd, conn := topCommand("tokens", "Manage users' admin API tokens (tenant_admin)",
		"List, create and revoke the admin API tokens (kga_…) of a user of --tenant. A token acts with its user's\n"+
			"roles; its secret is shown once, when created.")
	cmd.AddCommand(tokensListCommand(conn), tokensCreateCommand(conn), tokensRevokeCommand(conn))
	return cmd
}

func tokensListCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "list <user id>", Short: "List a user's tokens", Args: cobra.ExactArgs(1)}
	cmd.RunE = action(conn, func(in *invocation) error {
		var page struct {
			Tokens []apiToken `json:"tokens"`
		}
		if err := in.callInto("GET", in.tenantPath("users", in.args[0], "tokens"), nil, nil, &page); err != nil || in.conn.json {
			return err
		}
		t := newTable(in.cmd.OutOrStdout(), "ID", "NAME", "STATUS", "HINT", "CREATED", "EXPIRES")
		for _, tok := range page.Tokens {
			t.row(tok.ID, orDash(tok.Name), tok.Status, tok.Hint, when(tok.CreatedAt, "-"), when(tok.ExpiresAt, "never"))
		}
		t.flush()
		return nil
	})
	return cmd
}

func tokensCreateCommand(conn *connection) *cobra.Command {
	var name, expires string
	cmd := &cobra.Command{
		Use:   "create <user id>",
		Short: "Create an admin token for a user and print its secret (shown only once)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&name, "name", "", "what the token is for (e.g. laptop, ci)")
	cmd.Flags().StringVar(&expires, "expires", "", "expiry: RFC 3339 time or duration from now (720h, 30d); default: never")
	cmd.RunE = action(conn, func(in *invocation) error {
		body := map[string]any{"name": name}
		if expires != "" {
			t, err := parseExpiry(expires, time.Now())
			if err != nil {
				return err
			}
			body["expires_at"] = t
		}
		var created struct {
			Token  apiToken `json:"token"`
			Secret string   `json:"secret"`
		}
		if err := in.callInto("POST", in.tenantPath("users", in.args[0], "tokens"), nil, body, &created); err != nil {
			return err
		}
		if !in.conn.json {
			fmt.Fprintf(in.cmd.OutOrStdout(), "Created token %s for user %s (expires %s).\n\nToken: %s\n\nUse it as KEYGATE_TOKEN (or Authorization: Bearer) with the admin API.\n",
				created.Token.ID, created.Token.User, when(created.Token.ExpiresAt, "never"), created.Secret)
		}
		warnSecret(in.cmd.ErrOrStderr(), "token")
		return nil
	})
	return cmd
}

func tokensRevokeCommand(conn *connection) *cobra.Command {
	cmd := &cobra.Command{Use: "revoke <user id> <token id>", Short: "Revoke a user's token at once", Args: cobra.ExactArgs(2)}
	cmd.RunE = action(conn, func(in *invocation) error {
		if _, err := in.call("DELETE", in.tenantPath("users", in.args[0], "tokens", in.args[1]), nil, nil); err != nil || in.conn.json {
			return err
		}
		fmt.Fprintf(in.cmd.OutOrStdout(), "Revoked token %s of user %s.\n", in.args[1], in.args[0])
		return nil
	})
	return cmd
}
