package cli_test

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/spf13/cobra"

	"github.com/keygate/keygate/admin"
	"github.com/keygate/keygate/admin/cli"
	"github.com/keygate/keygate/store"
)

const operatorToken = "cli-test-operator"

// env is an admin API over a fresh in-memory store: tenant "default" with
// API keys enabled, user "dev" (developer) and "boss" (tenant_admin), each
// with a token.
type env struct {
	t                   *testing.T
	st                  *store.Store
	url                 string
	devToken, bossToken string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	for _, v := range []string{cli.EnvURL, cli.EnvToken, cli.EnvTenant} {
		t.Setenv(v, "") // the caller's environment must not leak in
	}
	st, err := store.Open(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	srv := httptest.NewServer(admin.New(st, admin.Config{OperatorTokens: []string{operatorToken}}))
	t.Cleanup(srv.Close)
	e := &env{t: t, st: st, url: srv.URL}
	if _, err := st.UpdateSettings("test", "default", store.SettingsPatch{APIKeysEnabled: store.Some(true)}); err != nil {
		t.Fatal(err)
	}
	e.devToken = e.userToken("dev", store.RoleDeveloper)
	e.bossToken = e.userToken("boss", store.RoleTenantAdmin)
	return e
}

func (e *env) userToken(user string, roles ...store.Role) string {
	e.t.Helper()
	if _, err := e.st.PutUser("test", "default", user, roles); err != nil {
		e.t.Fatal(err)
	}
	_, secret, err := e.st.CreateToken("test", "default", user, store.TokenInput{Name: "cli test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// result is one CLI run.
type result struct {
	stdout, stderr string
	err            error
}

// run executes `keygate <args…> --url <server> --token <token>` through a
// root command the way cmd/keygate mounts Commands().
func (e *env) run(token string, args ...string) result {
	e.t.Helper()
	root := &cobra.Command{Use: "keygate", SilenceUsage: true}
	root.AddCommand(cli.Commands()...)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	args = append(args, "--url", e.url)
	if token != "" {
		args = append(args, "--token", token)
	}
	root.SetArgs(args)
	err := root.Execute()
	return result{stdout: out.String(), stderr: errOut.String(), err: err}
}

// ok fails unless the run succeeded.
func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.err != nil {
		t.Fatalf("failed: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	return r
}

var secretRE = regexp.MustCompile(`kg_[0-9A-Za-z]{22}_[0-9A-Za-z]{6}`)

func TestKeysCreatePrintsSecretOnceWithWarning(t *testing.T) {
	e := newEnv(t)
	r := e.run(e.devToken, "keys", "create", "billing backend", "--description", "for billing", "--expires", "30d", "--ip", "10.0.0.0/8,192.0.2.1").ok(t)
	secrets := secretRE.FindAllString(r.stdout, -1)
	if len(secrets) != 1 {
		t.Fatalf("want the secret exactly once on stdout, got %d:\n%s", len(secrets), r.stdout)
	}
	if !strings.Contains(r.stderr, "WARNING: store this secret now") || strings.Contains(r.stderr, secrets[0]) {
		t.Fatalf("stderr %q", r.stderr)
	}
	view, verdict, err := e.st.Verify("default", secrets[0], time.Now())
	if err != nil || verdict != store.VerdictValid || view.Name != "billing backend" || view.Owner != "dev" {
		t.Fatalf("printed secret does not verify: %+v %v %v", view, verdict, err)
	}
	if view.ValidUntil.Before(time.Now().Add(29*24*time.Hour)) || view.Allow == nil {
		t.Fatalf("flags not applied: %+v", view)
	}

	// --json prints the raw answer (secret included) for scripts; the warning
	// still goes to stderr.
	r = e.run(e.devToken, "keys", "create", "ci key", "--json").ok(t)
	var created struct {
		Key    struct{ ID, Name string }
		Secret string
	}
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil || created.Key.Name != "ci key" || !secretRE.MatchString(created.Secret) {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if !strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("no warning with --json: %q", r.stderr)
	}
}

func TestKeysListTableAndJSON(t *testing.T) {
	e := newEnv(t)
	var secrets []string
	for _, name := range []string{"alpha key", "beta key"} {
		r := e.run(e.devToken, "keys", "create", name).ok(t)
		secrets = append(secrets, secretRE.FindString(r.stdout))
	}
	e.run(e.bossToken, "keys", "create", "boss key").ok(t)

	r := e.run(e.devToken, "keys", "list").ok(t)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	header := regexp.MustCompile(`^ID\s+NAME\s+OWNER\s+GROUP\s+STATUS\s+EXPIRY\s+EXPIRES\s+LAST USED\s+HINT$`)
	if !header.MatchString(lines[0]) {
		t.Fatalf("header %q", lines[0])
	}
	// Columns are aligned: every row's NAME starts where the header's does.
	col := strings.Index(lines[0], "NAME")
	for _, l := range lines[1:3] {
		if !strings.HasPrefix(l[col:], "alpha key") && !strings.HasPrefix(l[col:], "beta key") {
			t.Fatalf("misaligned row %q", l)
		}
		if !strings.Contains(l, " dev ") || !strings.Contains(l, "active") || !strings.Contains(l, "kg_") {
			t.Fatalf("row %q", l)
		}
	}
	if strings.Contains(r.stdout, "boss key") {
		t.Fatal("a developer's list shows someone else's key")
	}
	if !strings.Contains(r.stdout, "2 of 2 matching keys shown") || !strings.Contains(r.stdout, "Tenant default: 3 keys, no key limit.") {
		t.Fatalf("footer missing:\n%s", r.stdout)
	}
	for _, s := range secrets {
		if strings.Contains(r.stdout, s) {
			t.Fatal("list shows a secret")
		}
	}

	r = e.run(e.bossToken, "keys", "list", "--json", "--limit", "2").ok(t)
	var page struct {
		Keys       []map[string]any
		NextCursor *string `json:"next_cursor"`
		Total      int
	}
	if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, r.stdout)
	}
	if len(page.Keys) != 2 || page.Total != 3 || page.NextCursor == nil {
		t.Fatalf("page %+v", page)
	}
	r = e.run(e.bossToken, "keys", "list", "--cursor", *page.NextCursor, "-q", "boss").ok(t)
	if !strings.Contains(r.stdout, "boss key") || strings.Contains(r.stdout, "Next page") {
		t.Fatalf("second page:\n%s", r.stdout)
	}
}

func TestKeysShowEditRotateRevokeDelete(t *testing.T) {
	e := newEnv(t)
	var created struct {
		Key struct {
			ID string `json:"id"`
		} `json:"key"`
		Secret string `json:"secret"`
	}
	r := e.run(e.devToken, "keys", "create", "payments", "--json").ok(t)
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil {
		t.Fatal(err)
	}
	id := created.Key.ID

	r = e.run(e.devToken, "keys", "show", id).ok(t)
	for _, want := range []string{"ID", id, "payments", "IP allowlist", "any", "Last used", "never"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = e.run(e.devToken, "keys", "edit", id, "--name", "payments v2", "--ip", "203.0.113.0/24").ok(t)
	if !strings.Contains(r.stdout, "payments v2") || !strings.Contains(r.stdout, "203.0.113.0/24") {
		t.Fatalf("edit:\n%s", r.stdout)
	}
	r = e.run(e.devToken, "keys", "edit", id, "--expires", "30d")
	if r.err == nil || !strings.Contains(r.stderr, "rotate") {
		t.Fatalf("edit --expires: %v %q", r.err, r.stderr)
	}

	r = e.run(e.devToken, "keys", "rotate", id).ok(t)
	newSecret := secretRE.FindString(r.stdout)
	if newSecret == "" || newSecret == created.Secret || !strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("rotate:\n%s\n%s", r.stdout, r.stderr)
	}
	if _, verdict, _ := e.st.Verify("default", created.Secret, time.Now()); verdict != store.VerdictInvalid {
		t.Fatalf("old secret after rotate: %v", verdict)
	}

	r = e.run(e.devToken, "keys", "revoke", id).ok(t)
	if !strings.Contains(r.stdout, "Revoked key "+id) {
		t.Fatalf("revoke: %q", r.stdout)
	}
	if _, verdict, _ := e.st.Verify("default", newSecret, time.Now()); verdict != store.VerdictRevoked {
		t.Fatalf("after revoke: %v", verdict)
	}
	r = e.run(e.devToken, "keys", "revoke", id)
	if r.err == nil || !strings.Contains(r.stderr, "already revoked") || !strings.Contains(r.stderr, "HTTP 409") {
		t.Fatalf("second revoke: %v %q", r.err, r.stderr)
	}

	r = e.run(e.devToken, "keys", "delete", id).ok(t)
	if !strings.Contains(r.stdout, "Deleted key "+id) {
		t.Fatalf("delete: %q", r.stdout)
	}
	if r = e.run(e.devToken, "keys", "show", id); r.err == nil || !strings.Contains(r.stderr, "HTTP 404") {
		t.Fatalf("show after delete: %v %q", r.err, r.stderr)
	}

	// Bulk revoke (several ids) reports each id.
	var ids []string
	for _, name := range []string{"one key", "two key"} {
		var c struct {
			Key struct {
				ID string `json:"id"`
			} `json:"key"`
		}
		r := e.run(e.devToken, "keys", "create", name, "--json").ok(t)
		if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.Key.ID)
	}
	r = e.run(e.bossToken, append([]string{"keys", "revoke"}, append(ids, "key_missing")...)...)
	if r.err == nil || strings.Count(r.stdout, "revoked") != 2 || !strings.Contains(r.stdout, "key_missing") || !strings.Contains(r.stderr, "1 of 3 keys were not revoked") {
		t.Fatalf("bulk revoke: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	r = e.run(e.devToken, "keys", "delete", "--owner", "me").ok(t)
	if !strings.Contains(r.stdout, "Deleted 2 keys of me") {
		t.Fatalf("delete --owner me: %q", r.stdout)
	}
}

func TestErrorsGoToStderrAndFail(t *testing.T) {
	e := newEnv(t)
	r := e.run("kga_not_a_real_token", "keys", "list")
	if r.err == nil || r.stdout != "" {
		t.Fatalf("bad token: err %v stdout %q", r.err, r.stdout)
	}
	if !strings.Contains(r.stderr, "invalid, revoked or expired token") || !strings.Contains(r.stderr, "HTTP 401") {
		t.Fatalf("stderr %q", r.stderr)
	}
	if strings.Count(r.stderr, "Error:") != 1 {
		t.Fatalf("the error is printed %d times: %q", strings.Count(r.stderr, "Error:"), r.stderr)
	}

	// Validation errors show each field.
	r = e.run(e.devToken, "keys", "create", "x", "--ip", "300.1.1.1")
	if r.err == nil || !strings.Contains(r.stderr, "name: must be 2–200 characters") || !strings.Contains(r.stderr, "ip_allowlist: ") {
		t.Fatalf("validation: %v %q", r.err, r.stderr)
	}
	// Forbidden.
	r = e.run(e.devToken, "settings", "show")
	if r.err == nil || !strings.Contains(r.stderr, "HTTP 403") {
		t.Fatalf("forbidden: %v %q", r.err, r.stderr)
	}
	// No token at all.
	r = e.run("", "keys", "list")
	if r.err == nil || !strings.Contains(r.stderr, cli.EnvToken) {
		t.Fatalf("no token: %v %q", r.err, r.stderr)
	}
	// Nothing listening.
	root := &cobra.Command{Use: "keygate"}
	root.AddCommand(cli.Commands()...)
	var errOut bytes.Buffer
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&errOut)
	root.SetArgs([]string{"keys", "list", "--url", "http://127.0.0.1:1", "--token", "x"})
	if err := root.Execute(); err == nil || !strings.Contains(errOut.String(), "cannot reach the admin API") {
		t.Fatalf("unreachable: %v %q", err, errOut.String())
	}
}

func TestTokenFromEnvironment(t *testing.T) {
	e := newEnv(t)
	t.Setenv(cli.EnvToken, e.devToken)
	t.Setenv(cli.EnvURL, e.url)
	root := &cobra.Command{Use: "keygate"}
	root.AddCommand(cli.Commands()...)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"keys", "list"})
	if err := root.Execute(); err != nil || !strings.Contains(out.String(), "No keys.") {
		t.Fatalf("%v %q", err, out.String())
	}
}

// TestWalkthrough runs the CLI half of WALKTHROUGH.md: the operator enables
// API keys, puts a developer and creates its token; the developer creates a
// key; the admin revokes it.
func TestWalkthrough(t *testing.T) {
	e := newEnv(t)
	op := operatorToken
	e.run(op, "tenants", "create", "acme", "--name", "Acme Corp", "--key-limit", "100").ok(t)
	r := e.run(op, "tenants", "list").ok(t)
	if !regexp.MustCompile(`(?m)^acme\s+Acme Corp\s+0\s+100`).MatchString(r.stdout) {
		t.Fatalf("tenants list:\n%s", r.stdout)
	}
	r = e.run(op, "settings", "set", "--tenant", "acme", "--api-keys-enabled", "--max-expiration", "90d").ok(t)
	if !regexp.MustCompile(`API keys enabled\s+yes`).MatchString(r.stdout) || !strings.Contains(r.stdout, "2160h") {
		t.Fatalf("settings set:\n%s", r.stdout)
	}
	e.run(op, "users", "put", "alice", "--tenant", "acme", "--role", "developer").ok(t)
	e.run(op, "users", "put", "olivia", "--tenant", "acme", "--role", "tenant_admin").ok(t)
	r = e.run(op, "users", "list", "--tenant", "acme").ok(t)
	if !regexp.MustCompile(`(?m)^alice\s+developer`).MatchString(r.stdout) {
		t.Fatalf("users list:\n%s", r.stdout)
	}
	r = e.run(op, "tokens", "create", "alice", "--tenant", "acme", "--name", "laptop").ok(t)
	aliceToken := regexp.MustCompile(`kga_[0-9A-Za-z]{22}_[0-9A-Za-z]{6}`).FindString(r.stdout)
	if aliceToken == "" || !strings.Contains(r.stderr, "WARNING: store this token now") {
		t.Fatalf("tokens create:\n%s\n%s", r.stdout, r.stderr)
	}
	r = e.run(op, "tokens", "create", "olivia", "--tenant", "acme").ok(t)
	oliviaToken := regexp.MustCompile(`kga_[0-9A-Za-z]{22}_[0-9A-Za-z]{6}`).FindString(r.stdout)

	r = e.run(aliceToken, "keys", "create", "my service", "--tenant", "acme").ok(t)
	secret := secretRE.FindString(r.stdout)
	view, verdict, _ := e.st.Verify("acme", secret, time.Now())
	if verdict != store.VerdictValid {
		t.Fatalf("key: %v", verdict)
	}
	r = e.run(oliviaToken, "keys", "list", "--tenant", "acme").ok(t)
	if !strings.Contains(r.stdout, "my service") || !strings.Contains(r.stdout, "Tenant acme: 1/100 keys.") {
		t.Fatalf("keys list as admin:\n%s", r.stdout)
	}
	r = e.run(aliceToken, "keys", "rotate", view.ID, "--tenant", "acme", "--grace", "1h").ok(t)
	if !strings.Contains(r.stdout, "previous secret keeps working for 1h") {
		t.Fatalf("rotate:\n%s", r.stdout)
	}
	e.run(oliviaToken, "keys", "revoke", view.ID, "--tenant", "acme").ok(t)
	r = e.run(op, "tokens", "list", "alice", "--tenant", "acme").ok(t)
	if !strings.Contains(r.stdout, "laptop") || !strings.Contains(r.stdout, "active") || strings.Contains(r.stdout, aliceToken) {
		t.Fatalf("tokens list:\n%s", r.stdout)
	}
	tokenID := regexp.MustCompile(`tok_\w+`).FindString(r.stdout)
	e.run(op, "tokens", "revoke", "alice", tokenID, "--tenant", "acme").ok(t)
	if r = e.run(aliceToken, "keys", "list", "--tenant", "acme"); r.err == nil {
		t.Fatal("revoked token still works")
	}
	e.run(op, "tenants", "edit", "acme", "--key-limit", "none").ok(t)
	r = e.run(op, "tenants", "show", "acme").ok(t)
	if !regexp.MustCompile(`Key limit\s+none`).MatchString(r.stdout) {
		t.Fatalf("tenants show:\n%s", r.stdout)
	}
	e.run(op, "users", "delete", "alice", "--tenant", "acme").ok(t)
}

// TestPopulate mounts a command the way cmd/keygate does through
// caddycmd.RegisterCommand's CobraFunc.
func TestPopulate(t *testing.T) {
	e := newEnv(t)
	root := &cobra.Command{Use: "keygate"}
	for _, c := range cli.Commands() {
		dst := &cobra.Command{Use: c.Name() + " <command>", Short: c.Short}
		cli.Populate(dst, c)
		root.AddCommand(dst)
	}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"keys", "create", "populated", "--url", e.url, "--token", e.devToken})
	if err := root.Execute(); err != nil || secretRE.FindString(out.String()) == "" {
		t.Fatalf("%v\n%s", err, out.String())
	}
}

// TestSettingsDefaultGroup: settings show/set carry default_group; a
// developer's key gets it, and the developer cannot choose another.
func TestSettingsDefaultGroup(t *testing.T) {
	e := newEnv(t)
	if _, err := e.st.PutGroup("test", "default", "basic", store.GroupInput{}); err != nil {
		t.Fatal(err)
	}
	r := e.run(e.bossToken, "settings", "show").ok(t)
	if !regexp.MustCompile(`Default group\s+none`).MatchString(r.stdout) {
		t.Fatalf("settings show:\n%s", r.stdout)
	}
	r = e.run(e.bossToken, "settings", "set", "--default-group", "nope")
	if r.err == nil || !strings.Contains(r.stderr, "default_group") {
		t.Fatalf("unknown default group: %v %q", r.err, r.stderr)
	}
	r = e.run(e.bossToken, "settings", "set", "--default-group", "basic").ok(t)
	if !regexp.MustCompile(`Default group\s+basic`).MatchString(r.stdout) {
		t.Fatalf("settings set:\n%s", r.stdout)
	}
	r = e.run(e.devToken, "keys", "create", "dev key", "--json").ok(t)
	if !strings.Contains(r.stdout, `"group": "basic"`) && !strings.Contains(r.stdout, `"group":"basic"`) {
		t.Fatalf("developer's key:\n%s", r.stdout)
	}
	r = e.run(e.devToken, "keys", "create", "dev key 2", "--group", "basic")
	if r.err == nil || !strings.Contains(r.stderr, "HTTP 403") || !strings.Contains(r.stderr, "group") {
		t.Fatalf("developer choosing a group: %v %q", r.err, r.stderr)
	}
	r = e.run(e.bossToken, "settings", "set", "--no-default-group").ok(t)
	if !regexp.MustCompile(`Default group\s+none`).MatchString(r.stdout) {
		t.Fatalf("settings set --no-default-group:\n%s", r.stdout)
	}
}
