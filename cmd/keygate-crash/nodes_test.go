package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestThreeNodesKillRestart: three keygate processes share one etcd (SPEC
// section 7). Node 3, which has admitted (cached) two keys, is killed with
// SIGKILL: its lease lives on for up to max_staleness, so a revoke through
// node 1 waits for it, and must answer within max_staleness + 1 s;
// meanwhile a key is created through node 2. Once node 3's lease is gone a
// revoke through node 2 and a rotation (no grace) through node 1 answer
// without waiting. Node 3 restarted: its first request with each revoked
// key (one of them cached before the kill) gets 401 key_revoked, the
// rotated-out secret 401, the new key and the new secret 200; and a revoke
// through node 1 after the restart waits for node 3 again (it is back in
// the set that acknowledges) and node 3 rejects that key at once. Last,
// node 3 is killed and restarted at once, while its old lease lives: a
// revoke right after is rejected by it, and the old lease's expiry leaves
// the new process's record in place.
func TestThreeNodesKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three keygate processes and etcd; skipped with -short")
	}
	srv, err := startEtcd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop) // after the nodes' own cleanups (they stop gracefully first)
	const stale = 2 * time.Second
	prefix := etcdtest.Prefix(t)
	node := func(n int) (*site, *process, *client) {
		return startSiteWith(t, fmt.Sprintf("node%d", n), func(s *site) {
			s.Etcd = &etcdStorage{Endpoint: srv.Endpoint, Prefix: prefix, NodeID: fmt.Sprintf("node%d", n), MaxStaleness: stale}
		})
	}
	_, _, c1 := node(1)
	_, _, c2 := node(2)
	s3, p3, c3 := node(3)

	mustAPI(t, c1, "PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}, nil)
	create := func(c *client, name string) keyAndSecret {
		t.Helper()
		var ks keyAndSecret
		mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": name, "owner": "nodes"}, &ks)
		return ks
	}
	cached := create(c1, "cached on node 3, revoked through node 1 while it is down")
	uncached := create(c1, "never used on node 3, revoked through node 2 while it is down")
	rotated := create(c2, "cached on node 3, rotated through node 1 while it is down")
	later := create(c2, "cached on restarted node 3, revoked through node 1")
	for _, ks := range []keyAndSecret{cached, rotated} {
		for _, c := range []*client{c1, c2, c3} {
			wantAnswer(t, c, ks.Secret, http.StatusOK, "")
		}
	}

	p3.kill()
	killed := time.Now()
	etcd := srv.Client(t)
	node3Record := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := etcd.Get(ctx, prefix+"nodes/node3", clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return r.Count > 0
	}
	// node3Lease is the lease of node 3's record (0: no record).
	node3Lease := func() clientv3.LeaseID {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := etcd.Get(ctx, prefix+"nodes/node3")
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 0 {
			return 0
		}
		return clientv3.LeaseID(r.Kvs[0].Lease)
	}
	leaseAlive := func(id clientv3.LeaseID) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := etcd.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL > 0
	}
	if !node3Record() {
		t.Fatal("node 3's liveness record vanished with the process: its lease should outlive it (the revoke below would not wait)")
	}

	// The revoke through node 1 waits for node 3's lease; the create
	// through node 2 runs meanwhile.
	type answer struct {
		took   time.Duration
		status int
		raw    []byte
		err    error
	}
	revoked := make(chan answer, 1)
	go func() {
		t0 := time.Now()
		status, raw, err := c1.api("POST", tenantPath+"/keys/"+cached.Key.ID+"/revoke", nil)
		revoked <- answer{time.Since(t0), status, raw, err}
	}()
	t0 := time.Now()
	fresh := create(c2, "created through node 2 while node 3 is down")
	createTook := time.Since(t0)
	rv := <-revoked
	if rv.err != nil || rv.status != http.StatusOK {
		t.Fatalf("revoke through node 1: %d %s %v", rv.status, rv.raw, rv.err)
	}
	recordGone := !node3Record()
	t.Logf("node 3 killed: revoke through node 1 answered in %v (%v after the kill; node 3's record gone: %v); create through node 2 meanwhile %v",
		rv.took.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), recordGone, createTook.Round(time.Millisecond))
	if rv.took > stale+time.Second {
		t.Errorf("the revoke waited %v for the dead node, more than max_staleness (%v) + 1s", rv.took, stale)
	}
	wantAnswer(t, c1, cached.Secret, http.StatusUnauthorized, "key_revoked")
	wantAnswer(t, c2, cached.Secret, http.StatusUnauthorized, "key_revoked")
	wantAnswer(t, c1, fresh.Secret, http.StatusOK, "")

	// Node 3's lease has run out (or the revoke's bound was reached): wait
	// for its record to go, then these answer without waiting for it.
	deadline := time.Now().Add(stale + 2*time.Second)
	for node3Record() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if node3Record() {
		t.Fatalf("node 3's record still there %v after the kill: its lease did not expire", time.Since(killed).Round(time.Millisecond))
	}
	t0 = time.Now()
	mustAPI(t, c2, "POST", tenantPath+"/keys/"+uncached.Key.ID+"/revoke", nil, nil)
	revoke2 := time.Since(t0)
	var rot keyAndSecret
	t0 = time.Now()
	mustAPI(t, c1, "POST", tenantPath+"/keys/"+rotated.Key.ID+"/rotate", map[string]any{}, &rot)
	rotateTook := time.Since(t0)
	t.Logf("node 3's lease gone %v after the kill or earlier: revoke through node 2 %v, rotate through node 1 %v",
		time.Since(killed).Round(time.Millisecond), revoke2.Round(time.Millisecond), rotateTook.Round(time.Millisecond))

	// Node 3 restarted: its first request with each key is right.
	start := time.Now()
	p3, err = s3.start(keygateBinary(t), "node3-restarted")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p3.stop() {
			t.Errorf("restarted node 3 did not stop within 15 s of SIGINT; log:\n%s", p3.logTail(20))
		}
	})
	c3.close()
	c3 = newClient(s3)
	defer c3.close()
	if err := c3.waitReady(p3, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	wantAnswer(t, c3, cached.Secret, http.StatusUnauthorized, "key_revoked")
	wantAnswer(t, c3, uncached.Secret, http.StatusUnauthorized, "key_revoked")
	wantAnswer(t, c3, rotated.Secret, http.StatusUnauthorized, "")
	wantAnswer(t, c3, fresh.Secret, http.StatusOK, "")
	firstAdmit := time.Since(start)
	wantAnswer(t, c3, rot.Secret, http.StatusOK, "")
	wantAnswer(t, c3, later.Secret, http.StatusOK, "")
	t.Logf("node 3 restarted: answering %v after the start, first admit %v after the start",
		ready.Round(time.Millisecond), firstAdmit.Round(time.Millisecond))

	// The restarted node acknowledges again: a revoke through node 1 is
	// answered once node 3 applied it, and node 3 rejects the key at once.
	t0 = time.Now()
	mustAPI(t, c1, "POST", tenantPath+"/keys/"+later.Key.ID+"/revoke", nil, nil)
	t.Logf("revoke through node 1 with node 3 back: %v", time.Since(t0).Round(time.Millisecond))
	wantAnswer(t, c3, later.Secret, http.StatusUnauthorized, "key_revoked")

	// Killed and restarted at once, while its old lease still lives: the
	// new process takes over the record (a put with its own lease), so the
	// old lease's expiry later deletes nothing, and a revoke through node 1
	// right after the restart is answered once the new process applied it.
	wantAnswer(t, c3, rot.Secret, http.StatusOK, "")
	oldLease := node3Lease()
	if oldLease == 0 {
		t.Fatal("the restarted node 3 has no liveness record")
	}
	p3.kill()
	start = time.Now()
	if p3, err = s3.start(keygateBinary(t), "node3-restarted-again"); err != nil {
		t.Fatal(err)
	}
	c3.close()
	if err := c3.waitReady(p3, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ready = time.Since(start)
	t0 = time.Now()
	mustAPI(t, c1, "POST", tenantPath+"/keys/"+rotated.Key.ID+"/revoke", nil, nil)
	revoke3 := time.Since(t0)
	wantAnswer(t, c3, rot.Secret, http.StatusUnauthorized, "key_revoked")
	wantAnswer(t, c3, fresh.Secret, http.StatusOK, "")
	t.Logf("node 3 killed and restarted at once: answering %v after the start; revoke through node 1 then %v",
		ready.Round(time.Millisecond), revoke3.Round(time.Millisecond))
	if revoke3 > stale+time.Second {
		t.Errorf("the revoke took %v with every node up, more than max_staleness (%v) + 1s", revoke3, stale)
	}
	// Once the old lease has expired, node 3's record is still there (it is
	// the new process's), and node 3 still acknowledges.
	deadline = time.Now().Add(stale + 2*time.Second)
	for leaseAlive(oldLease) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if leaseAlive(oldLease) {
		t.Fatalf("node 3's old lease still alive %v after the kill", time.Since(start).Round(time.Millisecond))
	}
	if l := node3Lease(); l == 0 || l == oldLease {
		t.Fatalf("after the old lease expired node 3's record has lease %x (old %x): the restarted node's record is gone", l, oldLease)
	}
	t0 = time.Now()
	mustAPI(t, c2, "POST", tenantPath+"/keys/"+fresh.Key.ID+"/revoke", nil, nil)
	t.Logf("revoke through node 2 after node 3's old lease expired: %v", time.Since(t0).Round(time.Millisecond))
	wantAnswer(t, c3, fresh.Secret, http.StatusUnauthorized, "key_revoked")
}

// wantAnswer sends one request with secret through c's gateway and checks
// the status and, unless code is "" on a rejection, the error code.
func wantAnswer(t *testing.T, c *client, secret string, status int, code string) {
	t.Helper()
	got, gotCode, err := c.gateway(secret)
	if err != nil || got != status || (code != "" || status == http.StatusOK) && gotCode != code {
		t.Errorf("gateway %s: %d %q %v, want %d %q", c.site.GatewayURL(), got, gotCode, err, status, code)
	}
}
