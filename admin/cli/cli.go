// Package cli is keygate's command line for the admin REST API: the
// `keygate keys|tenants|settings|users|tokens …` commands. It only talks
// HTTP to the API (--url, token from KEYGATE_TOKEN); it never opens the
// store. It imports nothing from Caddy: cmd/keygate registers Commands()
// with caddycmd (see Populate).
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"

	"github.com/spf13/cobra"
)

// Defaults of the connection flags.
const (
	DefaultURL    = "http://127.0.0.1:8081"
	DefaultTenant = "default"
)

// Environment variables the CLI reads.
const (
	EnvURL    = "KEYGATE_URL"
	EnvToken  = "KEYGATE_TOKEN"
	EnvTenant = "KEYGATE_TENANT"
)

// connection holds the flags shared by every command.
type connection struct {
	url, token, tenant string
	json               bool
}

// Commands returns the top-level commands keys, tenants, settings, users
// and tokens. Each call builds fresh commands.
func Commands() []*cobra.Command {
	return []*cobra.Command{
		keysCommand(),
		tenantsCommand(),
		settingsCommand(),
		usersCommand(),
		tokensCommand(),
	}
}

// Populate moves the top-level command src (one of Commands()) into dst, an
// empty command made by the host CLI — for caddycmd, the *cobra.Command its
// RegisterCommand hands to CobraFunc:
//
//	for _, c := range cli.Commands() {
//		caddycmd.RegisterCommand(caddycmd.Command{
//			Name: c.Name(), Short: c.Short,
//			CobraFunc: func(cmd *cobra.Command) { cli.Populate(cmd, c) },
//		})
//	}
func Populate(dst, src *cobra.Command) {
	if dst.Short == "" {
		dst.Short = src.Short
	}
	if dst.Long == "" {
		dst.Long = src.Long
	}
	if dst.Example == "" {
		dst.Example = src.Example
	}
	dst.PersistentFlags().AddFlagSet(src.PersistentFlags())
	dst.Flags().AddFlagSet(src.Flags())
	dst.Args, dst.RunE = src.Args, src.RunE
	for _, sub := range src.Commands() {
		src.RemoveCommand(sub)
		dst.AddCommand(sub)
	}
}

// topCommand makes a top-level command with the shared connection flags.
func topCommand(use, short, long string) (*cobra.Command, *connection) {
	conn := &connection{}
	cmd := &cobra.Command{Use: use, Short: short, Long: long}
	f := cmd.PersistentFlags()
	f.StringVar(&conn.url, "url", DefaultURL, "admin API base URL (env "+EnvURL+")")
	f.StringVar(&conn.token, "token", "", "admin token (env "+EnvToken+"; prefer the variable: flags show up in ps)")
	f.StringVar(&conn.tenant, "tenant", DefaultTenant, "tenant (env "+EnvTenant+")")
	f.BoolVar(&conn.json, "json", false, "print the API's raw JSON answer (for scripts)")
	return cmd, conn
}

// resolve fills flags the user did not give from the environment.
func (c *connection) resolve(cmd *cobra.Command) {
	fromEnv := func(flag, env string, dst *string) {
		if !cmd.Flags().Changed(flag) {
			if v := os.Getenv(env); v != "" {
				*dst = v
			}
		}
	}
	fromEnv("url", EnvURL, &c.url)
	fromEnv("token", EnvToken, &c.token)
	fromEnv("tenant", EnvTenant, &c.tenant)
}

// invocation is what an action gets: the command (for flags and output),
// its arguments and a ready client.
type invocation struct {
	cmd  *cobra.Command
	args []string
	conn *connection
	api  *client
}

func (in *invocation) ctx() context.Context {
	if ctx := in.cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// call sends a request and, with --json, prints the raw answer.
func (in *invocation) call(method, path string, query url.Values, body any) ([]byte, error) {
	raw, err := in.api.call(in.ctx(), method, path, query, body)
	if err == nil && in.conn.json && len(raw) > 0 {
		_, err = in.cmd.OutOrStdout().Write(raw)
	}
	return raw, err
}

// callInto is call plus decoding the answer into v (for the human output).
func (in *invocation) callInto(method, path string, query url.Values, body, v any) error {
	raw, err := in.call(method, path, query, body)
	if err != nil {
		return err
	}
	if v != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, v); err != nil {
			return fmt.Errorf("unexpected answer from %s %s: %w", method, path, err)
		}
	}
	return nil
}

// tenantPath is apiPath under /v1/tenants/<tenant>.
func (in *invocation) tenantPath(segments ...string) string {
	return apiPath(append([]string{"tenants", in.conn.tenant}, segments...)...)
}

// action wraps a command body: it resolves the connection, builds the
// client, and prints any error (with the API's message and fields) to
// stderr itself before returning it, so the process exits non-zero.
func action(conn *connection, fn func(in *invocation) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		// Flag and argument mistakes were reported with usage already; from
		// here on errors are the API's, and usage would only hide them.
		cmd.SilenceUsage = true
		cmd.SilenceErrors = true
		conn.resolve(cmd)
		api, err := newClient(conn.url, conn.token)
		if err == nil {
			err = fn(&invocation{cmd: cmd, args: args, conn: conn, api: api})
		}
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "Error: %v\n", err)
		}
		return err
	}
}

// pageFlags adds --limit and --cursor to a list command; the returned
// function gives them as query parameters (limit only when set).
func pageFlags(cmd *cobra.Command) func() url.Values {
	var cursor string
	var limit int
	cmd.Flags().IntVar(&limit, "limit", 0, "page size, 1–500")
	cmd.Flags().StringVar(&cursor, "cursor", "", "next_cursor of the previous page")
	return func() url.Values {
		query := url.Values{}
		if cmd.Flags().Changed("limit") {
			query.Set("limit", strconv.Itoa(limit))
		}
		if cursor != "" {
			query.Set("cursor", cursor)
		}
		return query
	}
}
