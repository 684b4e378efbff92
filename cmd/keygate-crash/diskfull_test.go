//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDiskFull runs the real binary with its key store on a 6 MB tmpfs and
// fills that filesystem: admin writes answer 507 insufficient_storage, the
// gateway keeps admitting known keys (also one read from Pebble, not the
// cache), the usage flusher fails without taking the process down, and
// once space is freed admin writes work again and the buffered last use is
// written. Then, on the full disk again, SIGTERM ends the process within
// seconds, and a start fails at once naming the path, the free bytes and
// the reserve. Mounting needs root (CI runs as root).
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the key store needs root")
	}
	const reserve = 1 << 20
	s, p, c := startSiteWith(t, "diskfull", func(s *site) {
		s.AppOptions = []string{fmt.Sprintf("disk_reserve %d", reserve)}
		mountTmpfs(t, s.StorePath(), "6m")
	})
	mustAPI(t, c, "PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}, nil)
	var hot, cold keyAndSecret
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "verified before", "owner": "a"}, &hot)
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "first verified on a full disk", "owner": "a"}, &cold)
	wantGateway(t, c, hot.Secret)

	filler := filepath.Join(s.StorePath(), "filler")
	fill(t, filler)
	t.Logf("store filesystem filled: %d bytes free", freeBytes(t, s.StorePath()))
	status, raw, err := c.api("POST", tenantPath+"/keys", map[string]any{"name": "refused", "owner": "a"})
	if err != nil || status != http.StatusInsufficientStorage || errorCode(raw) != "insufficient_storage" {
		t.Fatalf("create on a full disk: %d %s %v, want 507 insufficient_storage\nlog:\n%s", status, raw, err, p.logTail(20))
	}
	wantGateway(t, c, hot.Secret)
	wantGateway(t, c, cold.Secret)
	time.Sleep(2500 * time.Millisecond) // two flush intervals: the flusher fails, twice
	if p.exited() {
		t.Fatalf("keygate exited on a full disk (%v); log:\n%s", p.waitErr, p.logTail(30))
	}
	wantGateway(t, c, hot.Secret)
	var key apiKey
	mustAPI(t, c, "GET", tenantPath+"/keys/"+hot.Key.ID, nil, &key) // reads work

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "after space returned", "owner": "a"}, nil)
	// The flusher writes what it kept (it logs so once), and nothing is
	// left in memory.
	for time.Since(start) < 10*time.Second && !logHas(p, "written again after") {
		time.Sleep(50 * time.Millisecond)
	}
	if !logHas(p, "written again after") {
		t.Fatalf("the usage kept in memory was not written after space returned; log:\n%s", p.logTail(20))
	}
	t.Logf("space freed: admin writes work again at once, buffered usage written %v later", time.Since(start).Round(time.Millisecond))
	m := metrics(t, c)
	for _, want := range []string{"keygate_usage_pending_minutes 0", "keygate_store_writes_refused_total ", "keygate_usage_flush_failures_total "} {
		if !strings.Contains(m, "\n"+want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(m, "\nkeygate_usage_flush_failures_total 0\n") || strings.Contains(m, "\nkeygate_store_writes_refused_total 0\n") {
		t.Errorf("/metrics did not count the refused writes and failed flushes")
	}

	logged, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		n    int
	}{{"disk nearly full", 1}, {"usage flush: flush usage", 1}, {"written again after", 1}, {"panic", 0}} {
		if n := strings.Count(string(logged), c.what); n != c.n {
			t.Errorf("the log has %q %d times, want %d", c.what, n, c.n)
		}
	}

	// SIGTERM on the full disk ends the process within seconds.
	fill(t, filler)
	wantGateway(t, c, hot.Secret) // a use to flush, which cannot be written
	start = time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("keygate did not exit within 15 s of SIGTERM on a full disk; log:\n%s", p.logTail(20))
	}
	t.Logf("SIGTERM on the full disk: exited in %v (%v)", time.Since(start).Round(time.Millisecond), p.waitErr)

	// A start on the full disk fails fast, saying why.
	start = time.Now()
	p2, err := s.start(keygateBinary(t), "fullstart")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p2.done:
	case <-time.After(15 * time.Second):
		p2.kill()
		t.Fatalf("a start on the full disk did not fail within 15 s; log:\n%s", p2.logTail(20))
	}
	took := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(p2.waitErr, &exit) {
		t.Fatalf("a start on the full disk ended with %v, want a non-zero exit", p2.waitErr)
	}
	out, _ := os.ReadFile(p2.logPath)
	for _, want := range []string{s.StorePath(), "bytes free on the filesystem", fmt.Sprintf("disk reserve of %d bytes", reserve)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the failed start's output does not name %q:\n%s", want, p2.logTail(10))
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "bytes free") {
			t.Logf("start on the full disk: failed in %v: %s", took.Round(time.Millisecond), line)
		}
	}
}

// wantGateway fails unless the gateway admits the secret.
func wantGateway(t *testing.T, c *client, secret string) {
	t.Helper()
	if status, code, err := c.gateway(secret); err != nil || status != http.StatusOK {
		t.Fatalf("gateway: %d %q %v, want 200", status, code, err)
	}
}

// logHas tells whether the process's log contains s.
func logHas(p *process, s string) bool {
	b, err := os.ReadFile(p.logPath)
	return err == nil && strings.Contains(string(b), s)
}

// metrics is the text of Caddy's /metrics (on its admin endpoint).
func metrics(t *testing.T, c *client) string {
	t.Helper()
	resp, err := c.hc.Get("http://" + c.site.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// mountTmpfs mounts a tmpfs of the size at dir for the rest of the test.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount a %s tmpfs at %s: %v", size, dir, err)
	}
	// Registered before the server's stop, so it runs after it.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes path until the filesystem has no space left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for len(buf) > 0 {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			buf = buf[:len(buf)/2] // top up the last blocks
		}
	}
}

// freeBytes is the free space of the filesystem holding path.
func freeBytes(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// TestDiskFullWithoutReserve: with the free-space check off
// (disk_reserve off) Pebble itself meets the full disk: its WAL write fails
// and it calls Fatalf. That is contained: the write answers 507, later
// writes too (at once, without hanging: Pebble's commit pipeline is wedged),
// the gateway keeps admitting keys, the process stays up and stops at once
// on SIGTERM; a start on the still full disk fails (Pebble cannot flush what
// it recovers from the WAL); a restart with space freed recovers every
// acknowledged write.
func TestDiskFullWithoutReserve(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the key store needs root")
	}
	s, p, c := startSiteWith(t, "noreserve", func(s *site) {
		s.AppOptions = []string{"disk_reserve off"}
		mountTmpfs(t, s.StorePath(), "6m")
	})
	mustAPI(t, c, "PATCH", tenantPath+"/settings", map[string]any{"api_keys_enabled": true}, nil)
	var hot, cold keyAndSecret
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "verified before", "owner": "a"}, &hot)
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "first verified after", "owner": "a"}, &cold)
	wantGateway(t, c, hot.Secret)
	filler := filepath.Join(s.StorePath(), "filler")
	fill(t, filler)

	// Pebble's WAL has room left in its last pages: write until it is gone.
	acked, refused := 2, 0
	for i := 0; i < 5000 && refused < 3; i++ {
		start := time.Now()
		status, raw, err := c.api("POST", tenantPath+"/keys",
			map[string]any{"name": "filling", "owner": fmt.Sprint("o", i), "description": strings.Repeat("d", 1000)})
		switch {
		case err == nil && status == http.StatusCreated:
			acked++
		case err == nil && status == http.StatusInsufficientStorage && errorCode(raw) == "insufficient_storage":
			refused++
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("a refused write took %v", took)
			}
		default:
			t.Fatalf("create %d on a full disk: %d %s %v; log:\n%s", i, status, raw, err, p.logTail(20))
		}
	}
	if refused == 0 {
		t.Fatalf("%d writes succeeded on a full 6 MB filesystem, none refused", acked)
	}
	wantGateway(t, c, hot.Secret)
	wantGateway(t, c, cold.Secret)
	time.Sleep(1500 * time.Millisecond) // a flush interval: the flusher fails
	if p.exited() {
		t.Fatalf("keygate exited after Pebble's fatal error (%v); log:\n%s", p.waitErr, p.logTail(30))
	}
	if !logHas(p, "pebble FATAL") {
		t.Errorf("Pebble's fatal error is not in the log:\n%s", p.logTail(20))
	}

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("keygate did not exit within 15 s of SIGTERM after Pebble's fatal error; log:\n%s", p.logTail(20))
	}
	t.Logf("%d writes acknowledged, then refused; SIGTERM: exited in %v", acked, time.Since(start).Round(time.Millisecond))

	// Without the check a start on the full disk gets as far as Pebble,
	// which cannot write what it recovers from the WAL: the start fails
	// instead of retrying forever (never listening, deaf to SIGTERM).
	start = time.Now()
	p1, err := s.start(keygateBinary(t), "fullstart")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p1.done:
	case <-time.After(15 * time.Second):
		p1.kill()
		t.Fatalf("a start on the full disk did not end within 15 s; log:\n%s", p1.logTail(20))
	}
	if p1.waitErr == nil || !logHas(p1, "recovered from the WAL failed") {
		t.Errorf("a start on the full disk: %v; log:\n%s", p1.waitErr, p1.logTail(10))
	}
	t.Logf("start on the full disk without the check: failed in %v", time.Since(start).Round(time.Millisecond))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	p2, err := s.start(keygateBinary(t), "restart")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p2.stop() {
			t.Errorf("keygate did not stop within 15 s of SIGINT")
		}
	})
	if err := c.waitReady(p2, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var list struct {
		Total int `json:"total"`
	}
	mustAPI(t, c, "GET", tenantPath+"/keys?limit=1", nil, &list)
	if list.Total != acked {
		t.Errorf("after the restart the store has %d keys, %d were acknowledged", list.Total, acked)
	}
	mustAPI(t, c, "POST", tenantPath+"/keys", map[string]any{"name": "after the restart", "owner": "a"}, nil)
	wantGateway(t, c, cold.Secret)
}
