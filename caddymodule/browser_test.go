package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keygate/keygate/store"
)

// chromiumPath finds Debian's chromium (or another Chromium build). The
// browser test does not skip without it: CI must run it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium not found: install it (Debian: apt-get install -y chromium); .ci/run installs it when missing")
	return ""
}

// chromiumAllocator starts headless Chromium as root on this closed network:
// no sandbox, no GPU, no QUIC, none of the background connections Chromium
// makes at start, and a fresh profile. extra options come last.
func chromiumAllocator(t *testing.T, ctx context.Context, extra ...chromedp.ExecAllocatorOption) (context.Context, context.CancelFunc) {
	t.Helper()
	opts := append([]chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium puts its singleton socket in a directory of its own
		// under TMPDIR, left behind when the test ends it: keep it in the
		// test's directory, removed with it.
		chromedp.Env("TMPDIR=" + t.TempDir()),
	}, extra...)
	return chromedp.NewExecAllocator(ctx, opts...)
}

// TestBrowserFetchCrossOrigin: a page on one loopback origin calls the
// gateway on another with fetch and X-API-Key, in real headless Chromium:
// the browser's preflights are answered by keygate, the admitted call's
// body and the 401's body and challenge are readable by the page.
func TestBrowserFetchCrossOrigin(t *testing.T) {
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<!doctype html><title>app</title><p>app")
	}))
	t.Cleanup(page.Close)
	g := startGateway(t, "{\n\t\tcors "+page.URL+"\n\t}")
	enable(t, g.st, store.DefaultTenant)
	_, secret := newKey(t, g.st, store.DefaultTenant, store.KeyInput{})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, cancelAlloc := chromiumAllocator(t, ctx)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	// Both calls send Content-Type: application/json, so both are
	// preflighted; the second has no key.
	script := fmt.Sprintf(`(async () => {
	const out = [];
	for (const key of [%q, ""]) {
		const headers = {"Content-Type": "application/json"};
		if (key) headers["X-API-Key"] = key;
		const r = await fetch(%q, {method: "POST", headers, body: "{}"});
		out.push({status: r.status, body: await r.text(), challenge: r.headers.get("WWW-Authenticate") || ""});
	}
	return out;
})()`, secret, g.url+"/v1/chat")
	type answer struct {
		Status    int    `json:"status"`
		Body      string `json:"body"`
		Challenge string `json:"challenge"`
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(page.URL+"/")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	got, err := chromedp.Run(bctx, chromedp.Evaluate[[]answer](script, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("page script: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("page got %+v", got)
	}
	if got[0].Status != 200 {
		t.Fatalf("keyed call: %d %s", got[0].Status, got[0].Body)
	}
	var e echoed
	if err := json.Unmarshal([]byte(got[0].Body), &e); err != nil || e.Method != "POST" || e.Path != "/v1/chat" {
		t.Fatalf("keyed call body %q: %v", got[0].Body, err)
	}
	if _, ok := e.Headers["X-Api-Key"]; ok {
		t.Error("the key reached the upstream")
	}
	r := result{status: got[1].Status, body: []byte(got[1].Body)}
	if r.status != 401 || r.code() != "missing_key" {
		t.Fatalf("keyless call: %d %q", got[1].Status, got[1].Body)
	}
	if got[1].Challenge != `Bearer realm="keygate"` {
		t.Errorf("page read WWW-Authenticate %q", got[1].Challenge)
	}
	if n := g.up.options.Load(); n != 0 {
		t.Errorf("upstream saw %d preflights", n)
	}
}
