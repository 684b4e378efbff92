package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// End-to-end tests through the real binary: `keygate reload` under load,
// and the `keygate keys` CLI against a running server.

// startSite writes a Caddyfile with Caddy's admin endpoint on a random
// loopback port, starts keygate on it and waits until it answers. The
// server is stopped gracefully when the test ends.
func startSite(t *testing.T, name string) (*site, *process, *client) {
	t.Helper()
	return startSiteWith(t, name, nil)
}

// startSiteWith is startSite with a hook that adjusts each new site before
// its config is written and the server started (a start that lost a port
// race is retried on a fresh site).
func startSiteWith(t *testing.T, name string, prepare func(*site)) (*site, *process, *client) {
	t.Helper()
	bin := keygateBinary(t)
	var s *site
	var p *process
	var c *client
	for attempt := 0; ; attempt++ {
		var err error
		if s, err = newSite(t.TempDir(), true); err != nil {
			t.Fatal(err)
		}
		if prepare != nil {
			prepare(s)
		}
		if err := s.WriteConfig(); err != nil {
			t.Fatal(err)
		}
		if p, err = s.start(bin, name); err != nil {
			t.Fatal(err)
		}
		c = newClient(s)
		err = c.waitReady(p, 30*time.Second)
		if err == nil {
			break
		}
		p.kill()
		c.close()
		if attempt == 2 || !errAddrInUse(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		c.close()
		if !p.stop() {
			t.Errorf("keygate did not stop within 15 s of SIGINT; log:\n%s", p.logTail(20))
		}
	})
	return s, p, c
}

// mustAPI calls the admin API as the operator and decodes a 2xx answer.
func mustAPI(t *testing.T, c *client, method, path string, body, into any) {
	t.Helper()
	status, raw, err := c.api(method, path, body)
	if err != nil || status/100 != 2 {
		t.Fatalf("%s %s: %d %s %v", method, path, status, raw, err)
	}
	if into != nil {
		if err := json.Unmarshal(raw, into); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
}

// enableAndCreate turns API keys on for tenant default and creates a key.
func enableAndCreate(t *testing.T, c *client, name, owner string) keyAndSecret {
	t.Helper()
	mustAPI(t, c, "PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}, nil)
	var ks keyAndSecret
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": name, "owner": owner}, &ks)
	return ks
}

// TestReloadUnderLoad: `keygate reload --force` ten times while clients
// send requests with a key through the gateway. Every request is answered
// 200. A request sent on a kept-alive connection that the old server closed
// fails before any answer: the client retries it (as browsers and Go's
// transport do for GET), and those retries are counted separately. The load
// uses POST so that Go's transport does not hide them by retrying itself.
// Any non-200 answer is a failure. So is an error on a fresh connection,
// with one exception the gateway cannot prevent: Caddy binds with
// SO_REUSEPORT, and Linux resets the connections still queued on the old
// config's socket when it closes (an EOF before any answer). Those are
// retried too and counted apart; more than a handful fails the test.
func TestReloadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary; skipped with -short")
	}
	const reloads, clients = 10, 4
	s, p, c := startSite(t, "reload")
	ks := enableAndCreate(t, c, "reload load", "load")

	var ok, retried, queueResets, failed atomic.Int64
	var mu sync.Mutex
	var failures, retries []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(50 * time.Second)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc := newClient(s) // own connections, kept alive across reloads
			defer lc.close()
			for n := 0; n < 1_000_000 && time.Now().Before(deadline); n++ {
				select {
				case <-stop:
					return
				default:
				}
				// POST: Go's transport would retry a GET itself, unseen.
				status, code, reused, err := postThrough(lc, ks.Secret)
				for try := 0; err != nil && try < 3; try++ {
					if reused {
						retried.Add(1)
					} else if isQueueReset(err) {
						queueResets.Add(1)
					} else {
						break
					}
					mu.Lock()
					if len(retries) < 5 {
						retries = append(retries, err.Error())
					}
					mu.Unlock()
					status, code, reused, err = postThrough(lc, ks.Secret)
				}
				if err == nil && status == http.StatusOK {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				mu.Lock()
				if len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("%d %q %v", status, code, err))
				}
				mu.Unlock()
			}
		}()
	}

	start := time.Now()
	time.Sleep(200 * time.Millisecond) // traffic before the first reload too
	for i := 1; i <= reloads; i++ {
		cmd := exec.Command(keygateBinary(t), "reload", "--config", s.ConfigPath(), "--adapter", "caddyfile",
			"--address", s.AdminAddr(), "--force")
		cmd.Env = s.Env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("reload %d: %v\n%s\nserver log:\n%s", i, err, out, p.logTail(20))
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // requests on the new config's connections too
	}
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond) // and after the last one
	close(stop)
	wg.Wait()

	// The reloads happened: Caddy logs "load complete" for each new config
	// (the first one is "serving initial configuration").
	logged, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(logged, []byte(`"load complete"`)); n != reloads {
		t.Errorf("the server logged %d config loads, want %d", n, reloads)
	}
	t.Logf("%d reloads in %v: %d requests answered 200, %d failed, %d retried after a connection closed by a reload",
		reloads, took.Round(time.Millisecond), ok.Load(), failed.Load(), retried.Load())
	if len(retries) > 0 {
		t.Logf("retried after: %s", strings.Join(retries, "; "))
	}
	if failed.Load() > 0 {
		t.Errorf("%d requests failed across reloads, e.g. %s", failed.Load(), strings.Join(failures, "; "))
	}
	t.Logf("%d fresh connections reset by a closing socket's accept queue (retried)", queueResets.Load())
	if queueResets.Load() > 5 {
		t.Errorf("%d fresh connections reset across %d reloads: more than the accept-queue race explains", queueResets.Load(), reloads)
	}
	if ok.Load() < 100 {
		t.Errorf("only %d requests got through: the load did not run", ok.Load())
	}
	// The store stayed usable: the admin API and the key still work.
	if status, code, err := c.gateway(ks.Secret); err != nil || status != http.StatusOK {
		t.Errorf("after the reloads the key gets %d %q %v", status, code, err)
	}
	var k apiKey
	mustAPI(t, c, "GET", tenantPath+"/keys/"+ks.Key.ID, nil, &k)
}

// postThrough sends POST / with the key through the gateway and tells
// whether the request went out on a kept-alive (reused) connection: only
// such a request may fail without an answer because a reload closed it.
func postThrough(c *client, secret string) (status int, code string, reused bool, err error) {
	req, err := http.NewRequest("POST", c.site.GatewayURL(), nil)
	if err != nil {
		return 0, "", false, err
	}
	req.Header.Set("X-API-Key", secret)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
	}))
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, "", reused, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", reused, err
	}
	if resp.StatusCode != http.StatusOK {
		code = errorCode(raw)
	} else if string(raw) != "ok" {
		code = "unexpected body " + string(raw)
	}
	return resp.StatusCode, code, reused, nil
}

// TestCLI: `keygate keys create|list|revoke` against the running binary,
// with a user's admin token in KEYGATE_TOKEN; the revoked key is then
// rejected by the gateway with 401 key_revoked.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary; skipped with -short")
	}
	s, _, c := startSite(t, "cli")
	mustAPI(t, c, "PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}, nil)
	mustAPI(t, c, "PUT", tenantPath+"/users/cli-dev", map[string]any{"roles": []string{"developer"}}, nil)
	var tok struct {
		Secret string `json:"secret"`
	}
	mustAPI(t, c, "POST", tenantPath+"/users/cli-dev/tokens", map[string]any{"name": "cli test"}, &tok)
	if !strings.HasPrefix(tok.Secret, "kga_") {
		t.Fatalf("user token %q", tok.Secret)
	}

	cli := func(args ...string) (string, string, error) {
		t.Helper()
		cmd := exec.Command(keygateBinary(t), append(args, "--url", s.APIURL())...)
		cmd.Env = append(s.Env(), "KEYGATE_TOKEN="+tok.Secret, "KEYGATE_TENANT=default", "KEYGATE_URL=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	out, errOut, err := cli("keys", "create", "cli key", "--description", "made by the CLI", "--json")
	if err != nil {
		t.Fatalf("keys create: %v\n%s%s", err, out, errOut)
	}
	var created keyAndSecret
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Key.ID == "" || created.Secret == "" {
		t.Fatalf("keys create --json printed %q (%v)", out, err)
	}
	if created.Key.Owner != "cli-dev" || created.Key.Description != "made by the CLI" {
		t.Errorf("created %+v", created.Key)
	}
	if status, code, err := c.gateway(created.Secret); err != nil || status != http.StatusOK {
		t.Fatalf("gateway with the CLI's key: %d %q %v", status, code, err)
	}

	out, errOut, err = cli("keys", "list", "--json")
	if err != nil {
		t.Fatalf("keys list --json: %v\n%s%s", err, out, errOut)
	}
	var page struct {
		Keys []apiKey `json:"keys"`
	}
	if err := json.Unmarshal([]byte(out), &page); err != nil || len(page.Keys) != 1 || page.Keys[0].ID != created.Key.ID {
		t.Fatalf("keys list --json printed %q (%v)", out, err)
	}
	out, errOut, err = cli("keys", "list")
	if err != nil || !strings.Contains(out, created.Key.ID) || !strings.Contains(out, "cli key") || strings.Contains(out, created.Secret) {
		t.Fatalf("keys list: %v\n%s%s", err, out, errOut)
	}

	out, errOut, err = cli("keys", "revoke", created.Key.ID)
	if err != nil || !strings.Contains(out, created.Key.ID) {
		t.Fatalf("keys revoke: %v\n%s%s", err, out, errOut)
	}
	if status, code, err := c.gateway(created.Secret); err != nil || status != http.StatusUnauthorized || code != "key_revoked" {
		t.Fatalf("gateway after keys revoke: %d %q %v, want 401 key_revoked", status, code, err)
	}
	out, errOut, err = cli("keys", "show", created.Key.ID, "--json")
	var shown apiKey
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil || shown.Status != "revoked" {
		t.Fatalf("keys show after revoke: %v\n%s%s", err, out, errOut)
	}

	// Revoking again is the API's 409, reported on stderr with a non-zero exit.
	_, errOut, err = cli("keys", "revoke", created.Key.ID)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(errOut, "Error:") {
		t.Fatalf("second revoke: %v, stderr %q", err, errOut)
	}
}

// isQueueReset reports the error of a request whose fresh connection was
// reset before any answer (EOF or ECONNRESET), as happens to connections
// queued on a SO_REUSEPORT socket that a reload closes.
func isQueueReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
