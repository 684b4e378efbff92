package cli_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/keygate/keygate/admin/cli"
	"github.com/keygate/keygate/store"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustVerify(t *testing.T, st *store.Store, secret, owner string) {
	t.Helper()
	view, v, err := st.Verify("default", secret, time.Now())
	if err != nil || v != store.VerdictValid || view.Owner != owner {
		t.Fatalf("imported secret %q: verdict %d, view %+v, %v", secret, v, view, err)
	}
}

// TestKeysImportJSONL: JSON lines, batches, per-line errors on stderr
// (never a secret), a summary, a failing exit when something was skipped.
func TestKeysImportJSONL(t *testing.T) {
	e := newEnv(t)
	if _, err := e.st.PutGroup("test", "default", "payments", store.GroupInput{}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	var b strings.Builder
	fmt.Fprintf(&b, `{"name": "from kong", "owner": "alice", "secret": "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a", "group": "payments", "expires_at": %q, "ip_allowlist": ["10.0.0.0/8"]}`+"\n", exp)
	b.WriteString("\n") // blank lines are skipped
	b.WriteString(`{"name": "from apisix", "owner": "bob", "secret": "0123456789abcdef0123456789abcdef01234567"}` + "\n")
	b.WriteString(`{"name": "dup", "owner": "bob", "secret": "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a"}` + "\n")
	b.WriteString(`{"name": "short", "owner": "bob", "secret": "short-secret"}` + "\n")
	for i := range 5 {
		fmt.Fprintf(&b, `{"name": "bulk %d", "owner": "carol", "secret": "bulk-secret-%08d"}`+"\n", i, i)
	}
	path := writeFile(t, "keys.jsonl", b.String())

	r := e.run(e.bossToken, "keys", "import", path, "--batch", "3")
	if r.err == nil || !strings.Contains(r.err.Error(), "2 of 9 keys were not imported") {
		t.Fatalf("err %v\nstdout %s\nstderr %s", r.err, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "Imported 7 of 9 keys in 3 calls; 2 skipped.") {
		t.Fatalf("summary: %s", r.stdout)
	}
	if !strings.Contains(r.stderr, "line 4: secret: the same as line 1's") || !strings.Contains(r.stderr, "line 5: validation failed: secret:") {
		t.Fatalf("per-entry errors: %s", r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, "short-secret") || strings.Contains(r.stdout+r.stderr, "3f2b8c1e-7d4a") {
		t.Fatal("the output holds a secret")
	}
	mustVerify(t, e.st, "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a", "alice")
	mustVerify(t, e.st, "0123456789abcdef0123456789abcdef01234567", "bob")
	mustVerify(t, e.st, "bulk-secret-00000004", "carol")

	// --json prints the raw answer of each call; a clean file succeeds.
	path = writeFile(t, "more.jsonl", `{"name": "json out", "owner": "dave", "secret": "json-output-secret-1"}`+"\n")
	r = e.run(e.bossToken, "keys", "import", path, "--json").ok(t)
	var ans struct {
		Imported int `json:"imported"`
		Results  []struct {
			ID *string `json:"id"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ans); err != nil || ans.Imported != 1 || ans.Results[0].ID == nil {
		t.Fatalf("--json: %v %s", err, r.stdout)
	}

	// A malformed line stops the import after what was read before it,
	// naming the line without quoting it.
	path = writeFile(t, "bad.jsonl", `{"name": "fine", "owner": "erin", "secret": "fine-secret-0000001"}`+"\n"+`{"name": "broken", "secret": "broken-secret-000001"`+"\n")
	r = e.run(e.bossToken, "keys", "import", path)
	if r.err == nil || !strings.Contains(r.stderr, "line 2") || strings.Contains(r.stderr, "broken-secret") {
		t.Fatalf("malformed line: %v %s", r.err, r.stderr)
	}
	mustVerify(t, e.st, "fine-secret-0000001", "erin")

	// Developers may not import.
	path = writeFile(t, "dev.jsonl", `{"name": "mine", "secret": "developer-secret-001"}`+"\n")
	if r = e.run(e.devToken, "keys", "import", path); r.err == nil || !strings.Contains(r.stderr, "tenant_admin") {
		t.Fatalf("developer import: %v %s", r.err, r.stderr)
	}
}

// TestKeysImportCSV: a CSV file with a header row, from standard input.
func TestKeysImportCSV(t *testing.T) {
	e := newEnv(t)
	exp := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	csvText := "name,owner,expires_at,ip_allowlist,secret\n" +
		"from kong,alice," + exp + ",10.0.0.0/8;192.0.2.1,3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a\n" +
		`"name, with comma",bob,,,0123456789abcdef0123456789abcdef01234567` + "\n"
	root := &cobra.Command{Use: "keygate", SilenceUsage: true}
	root.AddCommand(cli.Commands()...)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(csvText))
	root.SetArgs([]string{"keys", "import", "-", "--url", e.url, "--token", e.bossToken})
	if err := root.Execute(); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "Imported 2 of 2 keys in 1 calls; 0 skipped.") {
		t.Fatalf("summary: %s", out.String())
	}
	mustVerify(t, e.st, "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a", "alice")
	mustVerify(t, e.st, "0123456789abcdef0123456789abcdef01234567", "bob")
	view, _, _ := e.st.Verify("default", "3f2b8c1e-7d4a-4e9b-9c2f-1a5e6d7c8b9a", time.Now())
	key, err := e.st.GetKey("default", view.ID)
	if err != nil || len(key.IPAllowlist) != 2 || key.ExpiresAt == nil || key.Name != "from kong" {
		t.Fatalf("imported key %+v (%v)", key, err)
	}
	view, _, _ = e.st.Verify("default", "0123456789abcdef0123456789abcdef01234567", time.Now())
	if view.Name != "name, with comma" {
		t.Fatalf("quoted CSV field: %q", view.Name)
	}

	// A header without the secret column, or with an unknown one, is refused.
	for _, header := range []string{"name,owner\nx1,alice\n", "name,secret,colour\nab,abcdefghijklmnopq,red\n"} {
		r := e.run(e.bossToken, "keys", "import", writeFile(t, "bad.csv", header))
		if r.err == nil || !strings.Contains(r.stderr, "CSV header") {
			t.Fatalf("header %q: %v %s", header, r.err, r.stderr)
		}
	}
}
