package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config of a crash run.
type config struct {
	Bin        string // keygate binary
	Dir        string // scratch directory (exists; the store accumulates here)
	Iterations int
	Seed       uint64
	Workers    int
	MinDelay   time.Duration // kill -9 after a delay in [MinDelay, MaxDelay)
	MaxDelay   time.Duration
	Logf       func(format string, args ...any) // progress lines
	// Etcd, when set, keeps the keys in etcd (keygate's etcd mode) instead
	// of a Pebble store under Dir.
	Etcd *etcdCluster
}

// result of a crash run.
type result struct {
	Passed     int // iterations whose crash was survived
	Acked      int // acknowledged changes, all verified after the last crash
	Keys       int
	Checks     int    // requests made to verify them, over all restarts
	InFlight   int    // changes without an answer when the process died
	Resolved   int    // of those, on known keys: settled one way or the other
	LostCreate int    // creates without an answer (the key may or may not exist)
	Refused    int    // 4xx answers (nothing changed)
	ByKind     string // the acknowledged changes by kind
	EtcdKills  int    // iterations that killed the etcd server too
	// Restarts is how long each restart took until keygate answered, and
	// Checking how long the check after it took.
	Restarts, Checking []time.Duration
	Violations         []string
}

func (r *result) Summary(iterations int) string {
	etcd := ""
	if r.EtcdKills > 0 {
		etcd = fmt.Sprintf(", %d of them with etcd killed too", r.EtcdKills)
	}
	return fmt.Sprintf("crash test: %d/%d iterations passed%s, %d acknowledged changes verified "+
		"(%s, 1 settings; %d keys; %d checks; %d changes in flight at the kills, %d of them on known keys settled either way); "+
		"restart until answering %s, check after it %s",
		r.Passed, iterations, etcd, r.Acked, r.ByKind, r.Keys, r.Checks, r.InFlight, r.Resolved,
		spread(r.Restarts), spread(r.Checking))
}

// spread is "median m, max x" of durations.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("median %v, max %v", s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

const tenantPath = "/v1/tenants/default"

// allowlists a key may have; canonical forms, so GET answers them as sent.
// The gateway's client is 127.0.0.1: the last one turns it away (403).
var allowlists = [][]string{nil, {"127.0.0.0/8", "::1/128"}, {"192.0.2.0/24"}}

func admits(allow []string) bool { return len(allow) == 0 || allow[0] == "127.0.0.0/8" }

type opKind int

const (
	opCreate opKind = iota
	opEdit
	opRotate
	opRevoke
)

var opNames = [...]string{"create", "edit", "rotate", "revoke"}

// meta is what an edit changes.
type meta struct {
	Name, Description string
	Allow             []string
}

// trackedKey is what the acknowledged answers say about one key.
type trackedKey struct {
	ID, Owner string
	Secret    string   // the current secret; "" once unknown (an unanswered rotation went through)
	Old       []string // secrets rotated out: rejected from then on
	Revoked   bool
	meta
	acked   int        // acknowledged changes to this key
	pending *pendingOp // a change that got no answer: either outcome is fine, once
}

type pendingOp struct {
	kind opKind
	meta meta // for edits
}

// apiKey is the part of the admin API's key object the test reads.
type apiKey struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Owner       string   `json:"owner"`
	IPAllowlist []string `json:"ip_allowlist"`
	Status      string   `json:"status"`
}

type keyAndSecret struct {
	Key    apiKey `json:"key"`
	Secret string `json:"secret"`
}

// worker changes its own keys (no two workers touch one key, so each key's
// acknowledged history is a sequence).
type worker struct {
	id   int
	rng  *rand.Rand
	keys []*trackedKey

	acked    [4]int
	refused  int
	inFlight int
	lost     int // unanswered creates
	errs     []string
}

type outcome int

const (
	acked   outcome = iota // 2xx: the change happened and must survive
	refused                // 4xx: nothing changed
	unknown                // no answer, or 5xx: it may or may not have happened
)

func classify(status int, err error) outcome {
	switch {
	case err != nil || status >= 500:
		return unknown
	case status >= 200 && status < 300:
		return acked
	default:
		return refused
	}
}

// step makes one random change.
func (w *worker) step(c *client, iter, seq int) {
	kind := opCreate
	switch r := w.rng.IntN(100); {
	case r < 35:
	case r < 65:
		kind = opEdit
	case r < 83:
		kind = opRotate
	default:
		kind = opRevoke
	}
	var k *trackedKey
	if kind != opCreate {
		k = w.pick(kind)
		if k == nil {
			kind = opCreate
		}
	}
	name := fmt.Sprintf("crash %d.%d.%d", iter, w.id, seq)
	m := meta{Name: name, Description: fmt.Sprintf("%x", w.rng.Uint64()), Allow: allowlists[w.rng.IntN(len(allowlists))]}
	body := map[string]any{"name": m.Name, "description": m.Description, "ip_allowlist": nonNil(m.Allow)}

	switch kind {
	case opCreate:
		owner := fmt.Sprintf("crash-w%d-i%d", w.id, iter)
		body["owner"] = owner
		status, raw, err := c.api("POST", tenantPath+"/keys", body)
		switch classify(status, err) {
		case acked:
			var ks keyAndSecret
			if err := json.Unmarshal(raw, &ks); err != nil || ks.Key.ID == "" || ks.Secret == "" {
				w.errs = append(w.errs, fmt.Sprintf("create answered %d with an unreadable body %q", status, raw))
				return
			}
			w.keys = append(w.keys, &trackedKey{ID: ks.Key.ID, Owner: owner, Secret: ks.Secret, meta: m, acked: 1})
			w.acked[opCreate]++
		case refused:
			w.refused++
		case unknown:
			w.inFlight++
			w.lost++
		}
	case opEdit, opRotate, opRevoke:
		path := tenantPath + "/keys/" + k.ID
		var status int
		var raw []byte
		var err error
		switch kind {
		case opEdit:
			status, raw, err = c.api("PATCH", path, body)
		case opRotate:
			status, raw, err = c.api("POST", path+"/rotate", map[string]any{})
		case opRevoke:
			status, raw, err = c.api("POST", path+"/revoke", nil)
		}
		switch classify(status, err) {
		case acked:
			switch kind {
			case opEdit:
				k.meta = m
			case opRotate:
				var ks keyAndSecret
				if err := json.Unmarshal(raw, &ks); err != nil || ks.Secret == "" {
					w.errs = append(w.errs, fmt.Sprintf("rotate of %s answered %d with an unreadable body %q", k.ID, status, raw))
					k.pending = &pendingOp{kind: opRotate} // settle it after the restart
					return
				}
				if k.Secret != "" {
					k.Old = append(k.Old, k.Secret)
				}
				k.Secret = ks.Secret
			case opRevoke:
				k.Revoked = true
			}
			k.acked++
			w.acked[kind]++
		case refused:
			w.refused++
		case unknown:
			w.inFlight++
			k.pending = &pendingOp{kind: kind, meta: m}
		}
	}
}

// pick chooses a key this kind of change applies to, or nil.
func (w *worker) pick(kind opKind) *trackedKey {
	var cands []*trackedKey
	for _, k := range w.keys {
		if k.pending != nil || (kind != opEdit && k.Revoked) {
			continue
		}
		cands = append(cands, k)
	}
	if len(cands) == 0 {
		return nil
	}
	return cands[w.rng.IntN(len(cands))]
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// verifier checks every tracked key against the restarted server.
type verifier struct {
	c          *client
	mu         sync.Mutex
	violations []string
	checks     atomic.Int64
	resolved   atomic.Int64
}

func (v *verifier) fail(format string, args ...any) {
	v.mu.Lock()
	v.violations = append(v.violations, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

// getKey reads a key, retrying a transport error once (reads are safe).
func (v *verifier) getKey(id string) (int, apiKey, error) {
	var status int
	var raw []byte
	var err error
	for try := 0; try < 2; try++ {
		if status, raw, err = v.c.api("GET", tenantPath+"/keys/"+id, nil); err == nil {
			break
		}
	}
	v.checks.Add(1)
	var k apiKey
	if err == nil && status == http.StatusOK {
		err = json.Unmarshal(raw, &k)
	}
	return status, k, err
}

func (v *verifier) gateway(secret string) (int, string, error) {
	var status int
	var code string
	var err error
	for try := 0; try < 2; try++ {
		if status, code, err = v.c.gateway(secret); err == nil {
			break
		}
	}
	v.checks.Add(1)
	return status, code, err
}

// expected is the gateway's answer to the key's current secret.
func (k *trackedKey) expected() (int, string) {
	switch {
	case k.Revoked:
		return http.StatusUnauthorized, "key_revoked"
	case !admits(k.Allow):
		return http.StatusForbidden, "ip_not_allowed"
	}
	return http.StatusOK, ""
}

func (v *verifier) key(k *trackedKey) {
	desc := fmt.Sprintf("key %s (owner %s, %d acknowledged changes)", k.ID, k.Owner, k.acked)
	status, got, err := v.getKey(k.ID)
	if err != nil || status != http.StatusOK {
		v.fail("%s: acknowledged create lost: GET answered %d %v", desc, status, err)
		return
	}

	// Settle a change that got no answer: either outcome is fine.
	if p := k.pending; p != nil {
		k.pending = nil
		v.resolved.Add(1)
		switch p.kind {
		case opEdit:
			if got.Name == p.meta.Name {
				k.meta = p.meta
			}
		case opRevoke:
			if got.Status == "revoked" {
				k.Revoked = true
			}
		case opRotate:
			if k.Secret != "" {
				gs, code, err := v.gateway(k.Secret)
				if err == nil && gs == http.StatusUnauthorized && code == "invalid_key" {
					k.Old = append(k.Old, k.Secret) // it went through; the new secret is unknown
					k.Secret = ""
				}
			}
		}
	}

	if got.Name != k.Name || got.Description != k.Description || !slices.Equal(nonNil(got.IPAllowlist), nonNil(k.Allow)) {
		v.fail("%s: acknowledged edit lost: want name %q description %q allowlist %q, GET says %q %q %q",
			desc, k.Name, k.Description, k.Allow, got.Name, got.Description, got.IPAllowlist)
	}
	wantStatus := "active"
	if k.Revoked {
		wantStatus = "revoked"
	}
	if got.Status != wantStatus {
		v.fail("%s: status %q, want %q (acknowledged revoke lost, or a revoked key came back)", desc, got.Status, wantStatus)
	}
	if k.Secret != "" {
		ws, wc := k.expected()
		gs, code, err := v.gateway(k.Secret)
		if err != nil || gs != ws || code != wc {
			v.fail("%s: gateway answers its current secret %d %q (%v), want %d %q", desc, gs, code, err, ws, wc)
		}
	}
	for i, old := range k.Old {
		gs, code, err := v.gateway(old)
		if err != nil || gs != http.StatusUnauthorized {
			v.fail("%s: gateway answers its secret rotated out #%d with %d %q (%v), want 401", desc, i+1, gs, code, err)
		}
	}
}

// verifyAll checks every key with a few parallel clients.
func (v *verifier) verifyAll(workers []*worker) {
	var keys []*trackedKey
	for _, w := range workers {
		keys = append(keys, w.keys...)
	}
	next := make(chan *trackedKey)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				v.key(k)
			}
		}()
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
}

// verifySettings checks the tenant's acknowledged settings.
func (v *verifier) verifySettings() {
	status, raw, err := v.c.api("GET", tenantPath+"/settings", nil)
	v.checks.Add(1)
	var s struct {
		Enabled bool `json:"api_keys_enabled"`
		Max     int  `json:"max_keys_per_user"`
	}
	if err != nil || status != http.StatusOK || json.Unmarshal(raw, &s) != nil || !s.Enabled || s.Max != 1000 {
		v.fail("acknowledged settings lost: GET settings answered %d %s %v", status, raw, err)
	}
}

// run is the crash test: cfg.Iterations times start keygate on the same
// store, change keys concurrently, kill -9 at a random moment; after every
// restart check that each acknowledged change survived.
func run(cfg config) (*result, error) {
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	s, err := newSite(cfg.Dir, false)
	if err != nil {
		return nil, err
	}
	if e := cfg.Etcd; e != nil {
		s.Etcd = &etcdStorage{Endpoint: e.Endpoint, Prefix: e.Prefix, NodeID: "crash"}
	}
	if err := s.WriteConfig(); err != nil {
		return nil, err
	}
	res := &result{}
	workers := make([]*worker, cfg.Workers)
	for i := range workers {
		workers[i] = &worker{id: i, rng: rand.New(rand.NewPCG(cfg.Seed+uint64(i)+1, uint64(i)))}
	}
	settingsAcked := false
	logf := cfg.Logf

	// start launches keygate and waits for it; the first start may move to
	// other ports if one was taken meanwhile.
	start := func(name string, first bool) (*process, *client, time.Duration, error) {
		for attempt := 0; ; attempt++ {
			t0 := time.Now()
			p, err := s.start(cfg.Bin, name)
			if err != nil {
				return nil, nil, 0, err
			}
			c := newClient(s)
			err = c.waitReady(p, 30*time.Second)
			if err == nil {
				return p, c, time.Since(t0), nil
			}
			p.kill()
			c.close()
			if first && attempt < 3 && errAddrInUse(err) {
				if err := s.pickPorts(false); err != nil {
					return nil, nil, 0, err
				}
				if err := s.WriteConfig(); err != nil {
					return nil, nil, 0, err
				}
				continue
			}
			return nil, nil, 0, err
		}
	}

	check := func(c *client, it int) bool {
		defer func(t0 time.Time) { res.Checking = append(res.Checking, time.Since(t0)) }(time.Now())
		v := &verifier{c: c}
		if settingsAcked {
			v.verifySettings()
		}
		v.verifyAll(workers)
		res.Checks += int(v.checks.Load())
		res.Resolved += int(v.resolved.Load())
		if len(v.violations) > 0 {
			sort.Strings(v.violations)
			for _, msg := range v.violations {
				res.Violations = append(res.Violations, fmt.Sprintf("after crash %d: %s", it, msg))
			}
			return false
		}
		return true
	}

	for it := 1; it <= cfg.Iterations; it++ {
		p, c, took, err := start(fmt.Sprintf("run-%02d", it), it == 1)
		if err != nil {
			if it > 1 {
				res.Violations = append(res.Violations, fmt.Sprintf("after crash %d: the store did not reopen cleanly: %v", it-1, err))
				return res, errViolation
			}
			return res, err
		}
		if it > 1 {
			ok := check(c, it-1)
			if !ok {
				p.stop()
				c.close()
				return res, errViolation
			}
			res.Passed++
			res.Restarts = append(res.Restarts, took)
			logf("  restart %d: up in %v, %d keys verified", it-1, took.Round(time.Millisecond), countKeys(workers))
		}
		if !settingsAcked {
			status, raw, err := c.api("PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true, "max_keys_per_user": 1000})
			if err != nil || status != http.StatusOK {
				p.stop()
				c.close()
				return res, fmt.Errorf("enable API keys: %d %s %v", status, raw, err)
			}
			settingsAcked = true
			res.Acked++
		}

		var stop atomic.Bool
		var wg sync.WaitGroup
		before := totalAcked(workers)
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 1; !stop.Load() && seq <= 100_000; seq++ {
					w.step(c, it, seq)
				}
			}()
		}
		delay := cfg.MinDelay
		if cfg.MaxDelay > cfg.MinDelay {
			delay += time.Duration(rng.Int64N(int64(cfg.MaxDelay - cfg.MinDelay)))
		}
		time.Sleep(delay)
		// In etcd mode, some iterations kill the etcd server first, with
		// writes in flight, then keygate; etcd restarts on its data.
		killEtcd := cfg.Etcd.killsAt(it)
		if killEtcd {
			cfg.Etcd.Server.Pause()
		}
		stop.Store(true)
		p.kill()
		wg.Wait()
		if killEtcd {
			res.EtcdKills++
			if err := cfg.Etcd.Server.Resume(); err != nil {
				c.close()
				return res, fmt.Errorf("iteration %d: %w", it, err)
			}
		}
		c.close()
		inFlight := 0
		for _, w := range workers {
			inFlight += w.inFlight
			w.inFlight = 0
			for _, e := range w.errs {
				res.Violations = append(res.Violations, fmt.Sprintf("iteration %d: %s", it, e))
			}
			w.errs = nil
		}
		res.InFlight += inFlight
		also := ""
		if killEtcd {
			also = " (etcd first)"
		}
		logf("iteration %d/%d: kill -9%s after %v: %d changes acknowledged, %d in flight",
			it, cfg.Iterations, also, delay.Round(time.Millisecond), totalAcked(workers)-before, inFlight)
		if len(res.Violations) > 0 {
			return res, errViolation
		}
	}

	// The last crash: restart, verify, stop gracefully.
	p, c, took, err := start("final", false)
	if err != nil {
		res.Violations = append(res.Violations, fmt.Sprintf("after crash %d: the store did not reopen cleanly: %v", cfg.Iterations, err))
		return res, errViolation
	}
	defer c.close()
	ok := check(c, cfg.Iterations)
	graceful := p.stop()
	if !ok {
		return res, errViolation
	}
	res.Passed++
	res.Restarts = append(res.Restarts, took)
	logf("  restart %d: up in %v, %d keys verified", cfg.Iterations, took.Round(time.Millisecond), countKeys(workers))
	if !graceful {
		return res, fmt.Errorf("keygate did not stop within 15 s of SIGINT; log:\n%s", p.logTail(30))
	}
	res.Acked += totalAcked(workers)
	res.Keys = countKeys(workers)
	res.ByKind = describe(workers)
	for _, w := range workers {
		res.Refused += w.refused
		res.LostCreate += w.lost
	}
	return res, nil
}

func totalAcked(workers []*worker) int {
	n := 0
	for _, w := range workers {
		for _, a := range w.acked {
			n += a
		}
	}
	return n
}

func countKeys(workers []*worker) int {
	n := 0
	for _, w := range workers {
		n += len(w.keys)
	}
	return n
}

// describe lists the acknowledged changes by kind.
func describe(workers []*worker) string {
	var by [4]int
	for _, w := range workers {
		for i, a := range w.acked {
			by[i] += a
		}
	}
	parts := make([]string, len(by))
	for i, n := range by {
		parts[i] = fmt.Sprintf("%d %s", n, opNames[i])
	}
	return strings.Join(parts, ", ")
}
