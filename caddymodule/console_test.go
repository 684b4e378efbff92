package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/keygate/keygate/admin/console"
)

// consoleSite is the admin site of the console tests: the REST API and the
// console at /console/.
const consoleSite = `http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	api_key_admin {
		operator_token {env.KEYGATE_CONSOLE_OP}
	}
}`

const consoleOp = "console-operator-token-0123456789"

// browser is one headless Chromium tab driving the console, with what it
// saw: every request it sent, JavaScript dialogs, exceptions and console
// or browser-log errors (a CSP violation is one).
type browser struct {
	t      *testing.T
	ctx    context.Context
	origin string
	shots  string // directory for screenshots ("" = none)

	mu       sync.Mutex
	requests []string
	dialogs  []string
	problems []string
	headers  map[string]network.Headers // response headers by URL
}

func newBrowser(t *testing.T, origin string) *browser {
	t.Helper()
	// The whole browser session is bounded: a hung step cannot hang CI.
	root, cancelRoot := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancelRoot)
	allocCtx, cancelAlloc := chromiumAllocator(t, root,
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 820),
	)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	b := &browser{t: t, ctx: ctx, origin: origin, shots: os.Getenv("KEYGATE_CONSOLE_SCREENSHOTS"), headers: map[string]network.Headers{}}
	// Starts the browser; the viewport is what the screenshots show.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 820)); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if err := chromedp.Listen(ctx, b.observe); err != nil {
		t.Fatal(err)
	}
	// Alerts would block the page: answer them (and fail the test below).
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return b
}

// observe runs in the tab's event loop: it only records.
func (b *browser) observe(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, ev.Request.URL)
	case *network.EventResponseReceived:
		b.headers[ev.Response.URL] = ev.Response.Headers
	case *page.EventJavascriptDialogOpening:
		b.dialogs = append(b.dialogs, string(ev.Type)+": "+ev.Message)
	case *runtime.EventExceptionThrown:
		b.problems = append(b.problems, "exception: "+ev.ExceptionDetails.Text+" "+describeException(ev))
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			b.problems = append(b.problems, "console.error")
		}
	case *log.EventEntryAdded:
		// The browser's own log: CSP violations and failed loads. The
		// API's own 4xx answers (expected in these tests) are network
		// entries; anything else is a problem.
		if ev.Entry.Level == log.EntryLevelError && ev.Entry.Source != log.EntrySourceNetwork {
			b.problems = append(b.problems, fmt.Sprintf("%s: %s", ev.Entry.Source, ev.Entry.Text))
		}
	}
}

func describeException(ev *runtime.EventExceptionThrown) string {
	if ev.ExceptionDetails.Exception != nil {
		return ev.ExceptionDetails.Exception.Description
	}
	return ""
}

// do runs steps with a per-step bound.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v%s", what, err, b.pageState())
	}
}

// pageState is a short dump for failure messages.
func (b *browser) pageState() string {
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash + " | " + document.body.innerText.slice(0, 1500)`))
	return "\npage: " + s
}

func evalJS[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v%s", expr, err, b.pageState())
	}
	return v
}

// waitFor polls a JavaScript condition until it is true.
func (b *browser) waitFor(what, cond string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		b.t.Fatalf("waiting for %s (%s): %v%s", what, cond, err, b.pageState())
	}
}

func (b *browser) click(sel string) {
	b.t.Helper()
	b.do("click "+sel, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

func (b *browser) typeInto(sel, text string) {
	b.t.Helper()
	b.do("type into "+sel, chromedp.SendKeys(chromedp.CSS(sel), text, chromedp.NodeVisible))
}

// set sets a control's value as a user would and fires input and change.
func (b *browser) set(sel, value string) {
	b.t.Helper()
	evalJS[bool](b, fmt.Sprintf(`(() => { const e = document.querySelector(%s); e.value = %s;
		e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true})); return true })()`, jsString(sel), jsString(value)))
}

func (b *browser) shot(name string) {
	b.t.Helper()
	if b.shots == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	// Let transitions and fonts settle.
	time.Sleep(300 * time.Millisecond)
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func jsString(s string) string {
	j, _ := json.Marshal(s)
	return string(j)
}

// signIn opens the console fresh and signs in with token.
func (b *browser) signIn(token string) {
	b.t.Helper()
	b.do("open the console", chromedp.Navigate(b.origin+"/console/"))
	b.waitFor("the sign-in form", `!!document.querySelector('form.signin input[name=token]')`)
	b.typeInto("form.signin input[name=token]", token)
	b.click("form.signin button[type=submit]")
	b.waitFor("the keys page", `!!document.querySelector('#keys-table') && document.querySelector('#key-usage').textContent !== ''`)
}

func (b *browser) signOut() {
	b.t.Helper()
	b.click("#sign-out")
	b.waitFor("the sign-in form", `!!document.querySelector('form.signin')`)
	if n := evalJS[int](b, `sessionStorage.length + localStorage.length + document.cookie.length`); n != 0 {
		b.t.Fatalf("after sign-out the tab still keeps %d items (session/local storage, cookies)", n)
	}
}

// rows lists the key table's rows as {id, name, owner, status}.
type keyRow struct {
	ID, Name, Owner, Status string
}

func (b *browser) rows() []keyRow {
	b.t.Helper()
	return evalJS[[]keyRow](b, `[...document.querySelectorAll('#keys-table tbody tr[data-id]')].map(r => ({
		ID: r.dataset.id, Name: r.querySelector('.key-name').textContent,
		Owner: r.querySelector('.owner').textContent, Status: r.dataset.status}))`)
}

// waitRows waits until the table shows exactly n rows.
func (b *browser) waitRows(what string, n int) []keyRow {
	b.t.Helper()
	b.waitFor(what, fmt.Sprintf(`document.querySelectorAll('#keys-table tbody tr[data-id]').length === %d`, n))
	return b.rows()
}

// waitIDs waits until the table shows exactly the keys ids, in any order.
func (b *browser) waitIDs(what string, ids ...string) {
	b.t.Helper()
	want, _ := json.Marshal(ids)
	b.waitFor(what, fmt.Sprintf(`JSON.stringify([...document.querySelectorAll('#keys-table tbody tr[data-id]')].map(r => r.dataset.id).sort()) === JSON.stringify(%s.sort())`, want))
}

// rowAction opens a row's "⋯" menu and picks an action, in one script
// run: the table reloads after each change, and a reload between two
// separate clicks would leave the second on a replaced row. (Opening the
// menu with real key presses is tested on its own.)
func (b *browser) rowAction(id, action string) {
	b.t.Helper()
	row := fmt.Sprintf(`#keys-table tr[data-id=%q]`, id)
	b.waitFor("the row's "+action, fmt.Sprintf(`!!document.querySelector(%s)`, jsString(row+" button[data-action="+action+"]")))
	evalJS[bool](b, fmt.Sprintf(`(() => { const m = document.querySelector(%s); m.open = true;
		m.querySelector(%s).click(); return true })()`, jsString(row+" details"), jsString("button[data-action="+action+"]")))
}

// readSecret returns the secret of the open copy-once modal, closes it and
// checks the secret is gone from the page.
func (b *browser) readSecret(prefix string) string {
	b.t.Helper()
	b.waitFor("the secret modal", `!!document.querySelector('dialog[open] #secret-value')`)
	secret := evalJS[string](b, `document.querySelector('#secret-value').textContent`)
	warning := evalJS[string](b, `document.querySelector('dialog[open] .warning').textContent`)
	if !strings.HasPrefix(secret, prefix) || !strings.Contains(warning, "will not be shown again") {
		b.t.Fatalf("secret modal: %q / %q", secret, warning)
	}
	b.click("#copy-secret")
	b.waitFor("the copy status", `document.querySelector('dialog[open] .copy-status').textContent !== ''`)
	b.click("#close-secret")
	b.waitFor("the modal to close", `!document.querySelector('#secret-value')`)
	if evalJS[bool](b, fmt.Sprintf(`document.documentElement.outerHTML.includes(%s) || document.body.innerText.includes(%[1]s)`, jsString(secret))) {
		b.t.Fatal("the secret is still in the page after the modal closed")
	}
	return secret
}

// checkNames fails when a control on the page (dialogs included) has no
// accessible name: a label, aria-label, aria-labelledby or, for buttons
// and links, text.
func (b *browser) checkNames(where string) {
	b.t.Helper()
	unnamed := evalJS[[]string](b, `[...document.querySelectorAll('input, select, textarea, button, summary, a[href]')]
		.filter(e => e.type !== 'hidden')
		.filter(e => !((e.getAttribute('aria-label') || '').trim() || e.getAttribute('aria-labelledby') ||
			(e.labels && [...e.labels].some(l => l.textContent.trim())) ||
			(['BUTTON', 'SUMMARY', 'A'].includes(e.tagName) && e.textContent.trim())))
		.map(e => e.outerHTML.slice(0, 120))`)
	if len(unnamed) > 0 {
		b.t.Errorf("%s: controls without an accessible name: %q", where, unnamed)
	}
}

// apiCall is a REST call to the admin API for setting up and checking.
func apiCall(t *testing.T, base, method, path, token, body string) map[string]any {
	t.Helper()
	status, out := adminRequest(t, base, method, path, token, body)
	if status >= 300 {
		t.Fatalf("%s %s: %d %v", method, path, status, out)
	}
	return out
}

// TestConsoleInBrowser drives the management console in headless Chromium
// against the real api_key_admin handler in Caddy, as the operator, a
// tenant admin and a developer, and checks each change at the REST API and
// at the gateway.
func TestConsoleInBrowser(t *testing.T) {
	t.Setenv("KEYGATE_CONSOLE_OP", consoleOp)
	g := startGateway(t, "", consoleSite)
	adm := g.extra["0"]
	call := func(method, path, token, body string) map[string]any {
		t.Helper()
		return apiCall(t, adm, method, path, token, body)
	}
	gw := func(secret string) int {
		t.Helper()
		return get(t, g.url+"/orders", map[string]string{"X-API-Key": secret}).status
	}

	// Security headers, straight from the handler.
	r := get(t, adm+"/console/", nil)
	if r.status != 200 || r.header.Get("Content-Security-Policy") != console.ContentSecurityPolicy ||
		r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("console answer: %d %v", r.status, r.header)
	}

	call("PATCH", "/v1/tenants/default", consoleOp, `{"key_limit": 20}`)
	call("PUT", "/v1/tenants/default/users/alice", consoleOp, `{"roles": ["tenant_admin"]}`)
	call("PUT", "/v1/tenants/default/users/dev", consoleOp, `{"roles": ["developer"]}`)
	call("PUT", "/v1/tenants/default/groups/readers", consoleOp, `{"description": "read-only", "rules": [{"methods": ["GET"], "paths": ["/orders*"]}], "rate_limit": {"requests_per_second": 50, "burst": 100}}`)
	aliceTok := call("POST", "/v1/tenants/default/users/alice/tokens", consoleOp, `{"name": "console"}`)["secret"].(string)
	devTok := call("POST", "/v1/tenants/default/users/dev/tokens", consoleOp, `{"name": "console"}`)["secret"].(string)

	b := newBrowser(t, adm)

	// The operator: picks the tenant, turns API keys on in Settings.
	b.do("open the console", chromedp.Navigate(adm+"/console/"))
	b.waitFor("the sign-in form", `!!document.querySelector('form.signin')`)
	b.shot("signin")
	b.signIn(consoleOp)
	b.waitFor("the tenant picker", `document.querySelector('#tenant-picker').value === 'default'`)
	if tok := evalJS[string](b, `sessionStorage.getItem('keygate.token') || ''`); tok != consoleOp {
		t.Fatalf("token not in sessionStorage: %q", tok)
	}
	if !evalJS[bool](b, `!!document.querySelector('#keys-disabled a[href="#/settings"]')`) {
		t.Fatal("no notice that API keys are disabled")
	}
	b.do("open settings", chromedp.Navigate(adm+"/console/#/settings"))
	b.waitFor("the settings form", `!!document.querySelector('#settings-form')`)
	if evalJS[bool](b, `document.querySelector('input[name=api_keys_enabled]').checked`) {
		t.Fatal("a new tenant's keys are enabled")
	}
	// A bad value: the API's 400 is shown next to its field.
	b.set("input[name=max_keys_per_user]", "5000")
	b.click("#save-settings")
	b.waitFor("the field error", `document.querySelector('[data-field=max_keys_per_user] .field-error').textContent !== ''`)
	b.set("input[name=max_keys_per_user]", "10")
	b.set("select[name=default_group]", "readers")
	b.click("input[name=api_keys_enabled]")
	b.click("#save-settings")
	b.waitFor("saved", `document.querySelector('#settings-status').textContent.includes('enabled')`)
	if st := call("GET", "/v1/tenants/default/settings", consoleOp, ""); st["api_keys_enabled"] != true || st["max_keys_per_user"] != float64(10) || st["default_group"] != "readers" {
		t.Fatalf("settings after the switch: %v", st)
	}
	b.shot("settings")
	b.checkNames("settings")
	b.signOut()

	// Keys made over REST: one to find, two to bulk revoke, one expiring
	// soon, one revoked, the developer's, and one with markup in its name.
	mk := func(owner, name, extra string) (string, string) {
		out := call("POST", "/v1/tenants/default/keys", consoleOp, fmt.Sprintf(`{"name": %s, "owner": %q%s}`, jsString(name), owner, extra))
		return out["key"].(map[string]any)["id"].(string), out["secret"].(string)
	}
	billingID, billingSecret := mk("alice", "billing export", `, "description": "nightly export to the ERP"`)
	bulkA, bulkASecret := mk("alice", "to revoke A", "")
	bulkB, _ := mk("bob", "to revoke B", "")
	soonID, _ := mk("bob", "expiring soon", fmt.Sprintf(`, "expires_at": %q`, time.Now().Add(48*time.Hour).UTC().Format(time.RFC3339)))
	oldID, _ := mk("bob", "old revoked", "")
	call("POST", "/v1/tenants/default/keys/"+oldID+"/revoke", consoleOp, "")
	devID, devSecret := mk("dev", "dev laptop", "")
	const xss = `<img src=x onerror=alert(1)>`
	xssID, _ := mk("bob", xss, "")

	// The tenant admin.
	b.signIn(aliceTok)
	rows := b.waitRows("all keys", 7)
	if evalJS[bool](b, `!!document.querySelector('#keys-disabled')`) {
		t.Fatal("the disabled notice shows while keys are enabled")
	}
	if got := evalJS[string](b, `document.querySelector('#key-usage').textContent`); got != "7 / 20 keys" {
		t.Fatalf("usage header %q", got)
	}
	// The name with markup is text: no <img> anywhere, no alert.
	var xssShown string
	for _, r := range rows {
		if r.ID == xssID {
			xssShown = r.Name
		}
	}
	if xssShown != xss || evalJS[int](b, `document.querySelectorAll('img').length`) != 0 {
		t.Fatalf("markup in a key name: shown as %q, img elements %d", xssShown, evalJS[int](b, `document.querySelectorAll('img').length`))
	}
	if evalJS[bool](b, `!!document.querySelector('a[data-page=settings]')`) != true {
		t.Fatal("a tenant admin has no Settings link")
	}

	// Dialogs: Esc closes them and focus goes back to the opener.
	b.click("#generate-key")
	b.waitFor("the generate form", `!!document.querySelector('dialog[open] input[name=name]')`)
	b.waitFor("focus in the dialog", `document.activeElement.name === 'name'`)
	b.do("Esc", chromedp.KeyEvent("\u001b"))
	b.waitFor("the dialog to close", `!document.querySelector('dialog') && document.activeElement.id === 'generate-key'`)

	// Generate → copy-once modal → the secret works at the gateway.
	b.click("#generate-key")
	b.waitFor("the generate form", `!!document.querySelector('dialog[open] input[name=name]')`)
	if owner := evalJS[string](b, `document.querySelector('dialog[open] input[name=owner]').value`); owner != "alice" {
		t.Fatalf("owner defaults to %q, want alice", owner)
	}
	b.typeInto("dialog[open] input[name=name]", "o")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the name error", `document.querySelector('dialog[open] [data-field=name] .field-error').textContent !== ''`)
	b.typeInto("dialog[open] input[name=name]", "rder sync") // "o" + "rder sync"
	b.set("dialog[open] textarea[name=description]", "syncs orders")
	b.set("dialog[open] select[name=group]", "readers")
	b.set("dialog[open] textarea[name=ip_allowlist]", "127.0.0.1\n10.0.0.0/8\n")
	b.checkNames("keys page with the generate form")
	b.shot("generate-form")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the secret modal", `!!document.querySelector('dialog[open] #secret-value')`)
	b.shot("generate-secret")
	orderSecret := b.readSecret("kg_")
	if code := gw(orderSecret); code != 200 {
		t.Fatalf("the generated secret at the gateway: %d", code)
	}
	rows = b.waitRows("the new key", 8)
	var orderID string
	for _, r := range rows {
		if r.Name == "order sync" {
			orderID = r.ID
		}
	}
	if orderID == "" {
		t.Fatalf("the new key is not listed: %v", rows)
	}
	k := call("GET", "/v1/tenants/default/keys/"+orderID, consoleOp, "")
	if k["group"] != "readers" || k["owner"] != "alice" || fmt.Sprint(k["ip_allowlist"]) != "[127.0.0.1/32 10.0.0.0/8]" {
		t.Fatalf("generated key: %v", k)
	}

	// Search on name, id and owner; status and expiry filters.
	b.typeInto("#key-search", "billing")
	b.waitIDs("search by name", billingID)
	b.set("#key-search", devID)
	b.waitIDs("search by id", devID)
	b.set("#key-search", "bob")
	b.waitIDs("search by owner", bulkB, soonID, oldID, xssID)
	b.set("#key-search", "")
	b.waitRows("no search", 8)
	b.set("#status-filter", "revoked")
	b.waitIDs("status filter", oldID)
	b.set("#status-filter", "")
	b.set("#expiry-filter", "expiring_soon")
	b.waitIDs("expiry filter", soonID)
	b.set("#expiry-filter", "")
	b.waitRows("all again", 8)

	// Edit: a bad name shows next to its field; then a rename.
	b.rowAction(billingID, "edit")
	b.waitFor("the edit form", `document.querySelector('dialog[open] input[name=name]')?.value === 'billing export'`)
	b.set("dialog[open] input[name=name]", "b")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the name error", `document.querySelector('dialog[open] [data-field=name] .field-error').textContent !== ''`)
	b.shot("edit-error")
	b.set("dialog[open] input[name=name]", "billing export v2")
	b.set("dialog[open] textarea[name=ip_allowlist]", "127.0.0.1")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the rename", `[...document.querySelectorAll('.key-name')].some(e => e.textContent === 'billing export v2')`)
	if k := call("GET", "/v1/tenants/default/keys/"+billingID, consoleOp, ""); k["name"] != "billing export v2" || fmt.Sprint(k["ip_allowlist"]) != "[127.0.0.1/32]" {
		t.Fatalf("after edit: %v", k)
	}

	// Rotate: the warning, then the old secret is refused and the new one works.
	b.rowAction(orderID, "rotate")
	b.waitFor("the rotate dialog", `document.querySelector('dialog[open] .message')?.textContent.includes('lose access')`)
	b.shot("rotate")
	b.click("dialog[open] button[type=submit]")
	newSecret := b.readSecret("kg_")
	if old, fresh := gw(orderSecret), gw(newSecret); old != 401 || fresh != 200 {
		t.Fatalf("after rotate: old secret %d, new %d", old, fresh)
	}

	// Revoke one key: the confirmation names it and warns.
	if code := gw(billingSecret); code != 200 {
		t.Fatalf("billing before revoke: %d", code)
	}
	b.rowAction(billingID, "revoke")
	b.waitFor("the revoke dialog", `!!document.querySelector('dialog[open] .message')`)
	b.shot("revoke")
	msg := evalJS[string](b, `document.querySelector('dialog[open] .message').textContent`)
	for _, want := range []string{"billing export v2", "cannot be undone", "lose access immediately"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("revoke confirmation %q lacks %q", msg, want)
		}
	}
	b.click("dialog[open] .btn.danger")
	b.waitFor("revoked", fmt.Sprintf(`document.querySelector('#keys-table tr[data-id=%q]')?.dataset.status === 'revoked'`, billingID))
	if code := gw(billingSecret); code != 401 {
		t.Fatalf("billing after revoke: %d", code)
	}

	// Bulk revoke.
	b.click(fmt.Sprintf(`#keys-table tr[data-id=%q] .row-check`, bulkA))
	b.click(fmt.Sprintf(`#keys-table tr[data-id=%q] .row-check`, bulkB))
	b.waitFor("the bulk button", `document.querySelector('#bulk-revoke').textContent === 'Revoke (2)'`)
	b.click("#bulk-revoke")
	b.waitFor("the bulk confirmation", `document.querySelector('dialog[open] .message')?.textContent.includes('revoke 2 API keys')`)
	b.click("dialog[open] .btn.danger")
	b.waitFor("both revoked", fmt.Sprintf(`[%q, %q].every(id => document.querySelector('#keys-table tr[data-id="' + id + '"]')?.dataset.status === 'revoked')`, bulkA, bulkB))
	for _, id := range []string{bulkA, bulkB} {
		if k := call("GET", "/v1/tenants/default/keys/"+id, consoleOp, ""); k["status"] != "revoked" || k["revoked_by"] != "user:alice" && k["revoked_by"] != "alice" {
			t.Fatalf("bulk revoked key: %v", k)
		}
	}
	if code := gw(bulkASecret); code != 401 {
		t.Fatalf("bulk revoked key at the gateway: %d", code)
	}

	// The row menu opens with the keyboard and Esc closes it.
	b.do("focus a row menu", chromedp.Focus(chromedp.CSS(fmt.Sprintf(`#keys-table tr[data-id=%q] summary`, orderID))))
	b.do("Enter", chromedp.KeyEvent("\r"))
	b.waitFor("the open menu", fmt.Sprintf(`document.querySelector('#keys-table tr[data-id=%q] details').open`, orderID))
	b.shot("keys")
	b.do("Tab", chromedp.KeyEvent("\t"))
	b.waitFor("focus in the menu", `document.activeElement.dataset.action === 'usage'`)
	b.do("Esc", chromedp.KeyEvent("\u001b"))
	b.waitFor("the closed menu", `!document.querySelector('details.row-menu[open]') && document.activeElement.tagName === 'SUMMARY'`)

	// Usage chart of the key used above.
	b.rowAction(orderID, "usage")
	b.waitFor("the chart", `!!document.querySelector('dialog[open] #usage-chart path.bar-ok')`)
	b.shot("usage")
	b.click("dialog[open] .actions .btn")
	b.waitFor("the usage dialog to close", `!document.querySelector('dialog[open]')`)

	// The other pages answer and list what the API has.
	// Going to another page closes an open dialog (it would block the page).
	b.click("#generate-key")
	b.waitFor("the generate form", `!!document.querySelector('dialog[open] input[name=name]')`)
	b.do("events", chromedp.Navigate(adm+"/console/#/events"))
	b.waitFor("no dialog", `!document.querySelector('dialog')`)
	b.waitFor("events", `[...document.querySelectorAll('.events-page code')].some(e => e.textContent === 'key.revoked')`)
	b.set("#event-key", billingID)
	b.click(".events-page button[type=submit]")
	b.waitFor("filtered events", fmt.Sprintf(`[...document.querySelectorAll('.events-page tbody tr')].length > 0 && [...document.querySelectorAll('.events-page tbody tr')].every(r => r.textContent.includes(%q))`, billingID))
	b.shot("events")
	b.checkNames("events")
	b.do("users", chromedp.Navigate(adm+"/console/#/users"))
	b.waitFor("users", `!!document.querySelector('tr[data-user=dev]')`)
	b.shot("users")
	// A user's admin token: created (shown once), works, revoked.
	b.click(`tr[data-user=dev] button[aria-label="Tokens user dev"]`)
	b.waitFor("the tokens dialog", `[...document.querySelectorAll('dialog[open] tbody tr')].some(r => r.textContent.includes('console'))`)
	b.click("dialog[open] .actions .btn.primary")
	b.waitFor("the token form", `!!document.querySelector('dialog[open] input[name=name]')`)
	b.typeInto("dialog[open] input[name=name]", "ci token")
	b.click("dialog[open] button[type=submit]")
	ciTok := b.readSecret("kga_")
	if me := call("GET", "/v1/me", ciTok, ""); me["user"] != "dev" {
		t.Fatalf("new user token: %v", me)
	}
	b.shot("tokens")
	b.checkNames("users with the tokens dialog")
	b.waitFor("the new token", `[...document.querySelectorAll('dialog[open] tbody tr')].some(r => r.textContent.includes('ci token'))`)
	b.click(`dialog[open] button[aria-label="Revoke token ci token"]`)
	b.click("dialog[open].confirm .btn.danger")
	b.waitFor("the revoked token", `[...document.querySelectorAll('dialog[open] tbody tr')].some(r => r.textContent.includes('ci token') && r.textContent.includes('revoked'))`)
	if r := get(t, adm+"/v1/me", map[string]string{"Authorization": "Bearer " + ciTok}); r.status != 401 {
		t.Fatalf("revoked user token: %d", r.status)
	}
	b.do("Esc", chromedp.KeyEvent("\u001b"))
	b.waitFor("the tokens dialog to close", `!document.querySelector('dialog')`)

	// Groups: a rule the API refuses is shown at the rules field; then a
	// group with a rule and a rate limit.
	b.do("groups", chromedp.Navigate(adm+"/console/#/groups"))
	b.waitFor("groups", `!!document.querySelector('tr[data-group=readers]')`)
	b.click("#new-group")
	b.waitFor("the group form", `!!document.querySelector('dialog[open] input[name=name]')`)
	b.typeInto("dialog[open] input[name=name]", "writers")
	b.set("dialog[open] textarea[name=rules]", "GET /status\nP@ST /orders/*")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the rules error", `document.querySelector('dialog[open] [data-field=rules] .field-error').textContent.startsWith('line 2 (methods): ')`)
	b.shot("group-error")
	b.checkNames("groups with the group form")
	b.set("dialog[open] textarea[name=rules]", "POST PUT /orders/*\nGET /status")
	b.set("dialog[open] input[name=requests_per_second]", "5")
	b.set("dialog[open] input[name=burst]", "10")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the new group", `!!document.querySelector('tr[data-group=writers]')`)
	if gr := call("GET", "/v1/tenants/default/groups/writers", consoleOp, ""); fmt.Sprint(gr["rules"]) != "[map[methods:[POST PUT] paths:[/orders/*]] map[methods:[GET] paths:[/status]]]" ||
		fmt.Sprint(gr["rate_limit"]) != "map[burst:10 requests_per_second:5]" {
		t.Fatalf("group made in the console: %v", gr)
	}
	b.shot("groups")
	b.signOut()

	// The developer: its own keys only, no settings, no group field.
	b.signIn(devTok)
	b.waitIDs("the developer's keys", devID)
	if evalJS[int](b, `document.querySelectorAll('a[data-page=settings], a[data-page=users], a[data-page=groups], a[data-page=events]').length`) != 0 {
		t.Fatal("a developer sees admin pages in the navigation")
	}
	if evalJS[bool](b, `!!document.querySelector('#bulk-revoke, .row-check')`) {
		t.Fatal("a developer has bulk revoke")
	}
	b.do("settings as developer", chromedp.Navigate(adm+"/console/#/settings"))
	b.waitFor("the keys page instead", `!document.querySelector('#settings-form') && !!document.querySelector('#keys-table')`)
	b.click("#generate-key")
	b.waitFor("the generate form", `!!document.querySelector('dialog[open] input[name=name]')`)
	if evalJS[bool](b, `!!document.querySelector('dialog[open] [name=group], dialog[open] [name=owner]')`) {
		t.Fatal("a developer's generate form has a group or owner field")
	}
	b.typeInto("dialog[open] input[name=name]", "dev ci")
	b.click("dialog[open] button[type=submit]")
	devNew := b.readSecret("kg_")
	if code := gw(devNew); code != 200 {
		t.Fatalf("developer's new key at the gateway: %d", code)
	}
	if r := doBody(t, "POST", g.url+"/orders", map[string]string{"X-API-Key": devNew}, "{}"); r.status != 403 {
		t.Fatalf("developer's key has the default group readers (GET only): POST answered %d", r.status)
	}
	rows = b.waitRows("the developer's two keys", 2)
	for _, r := range rows {
		if r.Owner != "dev" {
			t.Fatalf("developer sees %v", r)
		}
	}
	b.rowAction(devID, "edit")
	b.waitFor("the edit form", `!!document.querySelector('dialog[open] input[name=name]')`)
	if evalJS[bool](b, `!!document.querySelector('dialog[open] [name=group]')`) {
		t.Fatal("a developer's edit form has a group field")
	}
	b.set("dialog[open] input[name=name]", "dev laptop 2")
	b.click("dialog[open] button[type=submit]")
	b.waitFor("the rename", `[...document.querySelectorAll('.key-name')].some(e => e.textContent === 'dev laptop 2')`)
	b.shot("developer")
	b.checkNames("the developer's keys page")
	b.rowAction(devID, "delete")
	b.click("dialog[open] .btn.danger")
	b.waitRows("the deleted key gone", 1)
	if rows := b.rows(); rows[0].Name != "dev ci" {
		t.Fatalf("after delete: %v", rows)
	}
	if code := gw(devSecret); code != 401 {
		t.Fatalf("deleted key at the gateway: %d", code)
	}
	// "Delete all" (the seeds' developer page): DELETE …/keys?owner=me.
	b.click("#delete-all")
	b.waitFor("the confirmation", `!!document.querySelector('dialog[open] .btn.danger')`)
	b.click("dialog[open] .btn.danger")
	b.waitFor("no keys left", `document.querySelector('#keys-table tbody td.empty')?.textContent === 'No API keys yet.'`)
	if code := gw(devNew); code != 401 {
		t.Fatalf("after Delete all, the developer's key answers %d", code)
	}
	b.signOut()

	// Paging: 25 keys a page, next_cursor behind Next.
	call("PATCH", "/v1/tenants/default", consoleOp, `{"key_limit": 100}`)
	for i := range 24 {
		mk(fmt.Sprintf("carol%d", i%3), fmt.Sprintf("bulk %02d", i), "")
	}
	total := int(call("GET", "/v1/tenants/default/keys?limit=1", consoleOp, "")["total"].(float64))
	if total <= 25 || total > 50 {
		t.Fatalf("paging needs 26-50 keys, have %d", total)
	}
	b.signIn(consoleOp)
	b.waitRows("page 1", 25)
	b.waitFor("page info", `document.querySelector('.page-info').textContent === '1–25 of `+fmt.Sprint(total)+`'`)
	b.click("#next-page")
	b.waitRows("page 2", total-25)
	if evalJS[bool](b, `document.querySelector('#next-page').disabled`) != true {
		t.Fatal("Next is enabled on the last page")
	}
	b.click("#prev-page")
	b.waitRows("page 1 again", 25)
	b.signOut()

	// What the browser did: only this origin, no dialog, no error.
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range b.requests {
		// data: URLs are no request: Chromium's own date-picker icon is one.
		if !strings.HasPrefix(u, adm+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("request to another origin: %s", u)
		}
	}
	if len(b.requests) < 20 {
		t.Errorf("only %d requests seen", len(b.requests))
	}
	csp := ""
	for u, h := range b.headers {
		if pu, err := url.Parse(u); err == nil && pu.Path == "/console/" {
			csp, _ = h["Content-Security-Policy"].(string)
			if csp == "" {
				csp, _ = h["content-security-policy"].(string)
			}
		}
	}
	if csp != console.ContentSecurityPolicy {
		t.Errorf("the browser saw CSP %q", csp)
	}
	if len(b.dialogs) > 0 {
		t.Errorf("JavaScript dialogs opened: %q", b.dialogs)
	}
	if len(b.problems) > 0 {
		t.Errorf("errors in the page: %q", b.problems)
	}
}

// TestConsoleOff: `console off` leaves /console/ to the API (404), and the
// API still answers.
func TestConsoleOff(t *testing.T) {
	t.Setenv("KEYGATE_CONSOLE_OP", consoleOp)
	g := startGateway(t, "", strings.Replace(consoleSite, "operator_token", "console off\n\t\toperator_token", 1))
	adm := g.extra["0"]
	if r := get(t, adm+"/console/", nil); r.status != 404 || r.code() != "not_found" || r.header.Get("Content-Security-Policy") != "" {
		t.Fatalf("console off: %d %s", r.status, r.body)
	}
	if r := get(t, adm+"/v1/me", map[string]string{"Authorization": "Bearer " + consoleOp}); r.status != 200 {
		t.Fatalf("API with console off: %d", r.status)
	}
}

// TestConsoleUnderPath: mounted with handle_path under /admin/, the
// console's redirect and its API calls (../v1/ from /admin/console/) stay
// under the prefix.
func TestConsoleUnderPath(t *testing.T) {
	t.Setenv("KEYGATE_CONSOLE_OP", consoleOp)
	g := startGateway(t, "", `http://127.0.0.1:{{PORT}} {
	bind 127.0.0.1
	handle_path /admin/* {
		api_key_admin {
			operator_token {env.KEYGATE_CONSOLE_OP}
		}
	}
}`)
	adm := g.extra["0"]
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(adm + "/admin/console")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != 301 || loc.Path != "/admin/console/" {
		t.Fatalf("redirect: %d to %v (%v)", resp.StatusCode, loc, err)
	}
	if r := get(t, adm+"/admin/console/", nil); r.status != 200 || !strings.Contains(string(r.body), `src="app.js"`) {
		t.Fatalf("index under /admin/: %d", r.status)
	}
	base, _ := url.Parse(adm + "/admin/console/api.js")
	api, _ := base.Parse("../v1/me") // what api.js resolves
	if r := get(t, api.String(), map[string]string{"Authorization": "Bearer " + consoleOp}); r.status != 200 {
		t.Fatalf("%s: %d", api, r.status)
	}
}
