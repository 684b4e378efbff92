package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/keygate/keygate/store"
)

// operatorTokenEnv carries the import's operator token to keygate (never
// into the Caddyfile, which the results quote).
const operatorTokenEnv = "KEYGATE_BENCH_OPERATOR_TOKEN"

// importKeys builds the store in storeDir through keygate's own import
// endpoint, as a migration would: it starts keygate with the admin REST API
// on loopback, enables API keys for the default tenant, sends n fresh
// secrets in calls of cfg.ImportChunk keys (one owner per 1000 keys, the
// highest max_keys_per_user), and stops keygate gracefully, so the measured
// process then starts on the store as after a restart. It returns the
// secrets, the wall time of the import calls and keygate's CPU time over
// them. With profile set, a CPU profile of keygate during the import is
// written there.
//
// The secrets are native kg_ secrets, so the scenarios measure the native
// path (and the tenant's reject of malformed secrets before any lookup).
func importKeys(ctx context.Context, cfg Config, bin, dir, storeDir, upstream string, n int, profile string) ([]string, time.Duration, time.Duration, error) {
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return nil, 0, 0, err
	}
	var tok [24]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	kg, err := startKeygate(ctx, cfg, bin, dir, storeDir, upstream, 1000, startOptions{operatorToken: token, caddyAdmin: profile != ""})
	if err != nil {
		return nil, 0, 0, err
	}
	defer kg.stop()
	c := &http.Client{Timeout: 5 * time.Minute}
	call := func(method, path string, body []byte, into any) error {
		req, err := http.NewRequestWithContext(ctx, method, kg.api+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, tail(string(raw), 500))
		}
		if into != nil {
			return json.Unmarshal(raw, into)
		}
		return nil
	}
	if err := call("PATCH", "/v1/tenants/"+store.DefaultTenant+"/settings",
		[]byte(fmt.Sprintf(`{"api_keys_enabled":true,"max_keys_per_user":%d}`, store.MaxKeysPerUserMax)), nil); err != nil {
		return nil, 0, 0, err
	}

	var prof chan error
	if profile != "" {
		secs := min(60, max(5, n/20_000))
		prof = make(chan error, 1)
		go func() {
			prof <- fetchTo(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", kg.admin, secs), profile, time.Duration(secs+60)*time.Second)
		}()
	}

	type entry struct {
		Name   string `json:"name"`
		Owner  string `json:"owner"`
		Secret string `json:"secret"`
	}
	secrets := make([]string, 0, n)
	batch := make([]entry, 0, cfg.ImportChunk)
	cpu0, self0, t0 := procCPU(kg.pid()), procCPU(os.Getpid()), time.Now()
	for len(secrets) < n {
		batch = batch[:0]
		for i := len(secrets); i < n && len(batch) < cfg.ImportChunk; i++ {
			batch = append(batch, entry{Name: "bench key " + strconv.Itoa(i), Owner: fmt.Sprintf("bench-user-%06d", i/store.MaxKeysPerUserMax),
				Secret: store.NewSecret(store.KeyPrefix)})
		}
		body, err := json.Marshal(map[string]any{"keys": batch})
		if err != nil {
			return nil, 0, 0, err
		}
		var ans struct {
			Imported int `json:"imported"`
			Results  []struct {
				Error *string `json:"error"`
			} `json:"results"`
		}
		if err := call("POST", "/v1/tenants/"+store.DefaultTenant+"/keys/import", body, &ans); err != nil {
			return nil, 0, 0, err
		}
		if ans.Imported != len(batch) {
			for i, r := range ans.Results {
				if r.Error != nil {
					return nil, 0, 0, fmt.Errorf("import: key %d: %s", len(secrets)+i, *r.Error)
				}
			}
			return nil, 0, 0, fmt.Errorf("import: %d of %d keys imported", ans.Imported, len(batch))
		}
		for _, e := range batch {
			secrets = append(secrets, e.Secret)
		}
	}
	took, cpu := time.Since(t0), procCPU(kg.pid())-cpu0
	cfg.Logf("import: %d calls in %.1fs; keygate cpu %.1fs, this process (secrets, JSON) cpu %.1fs; load average %s",
		(n+cfg.ImportChunk-1)/cfg.ImportChunk, took.Seconds(), cpu.Seconds(), (procCPU(os.Getpid()) - self0).Seconds(), loadAvg())
	if prof != nil {
		if err := <-prof; err != nil {
			cfg.Logf("import profile: %v", err)
		} else {
			cfg.Logf("import profile: %s", profile)
		}
	}
	return secrets, took, cpu, nil
}
