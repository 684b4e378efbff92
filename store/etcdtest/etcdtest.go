// Package etcdtest starts a real etcd server (Debian's etcd-server, or any
// etcd binary on PATH) for tests: on free loopback ports, with its data
// directory on /dev/shm when it exists (etcd 3.4 fsyncs every commit and has
// no --unsafe-no-fsync, PITFALLS 23), killed when the test binary ends.
//
// One server is shared per test binary (Shared, stopped by StopShared from
// TestMain); tests keep apart by using a fresh key prefix each (Prefix).
package etcdtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// InstallHint says how to get an etcd binary.
const InstallHint = "etcd not found: install it (Debian/Ubuntu: apt-get install -y etcd-server) or put an etcd binary on PATH"

// MaxTxnOps is the --max-txn-ops the servers are started with: above etcd's
// default 128, so that bulk operations of the store's tests fit in one
// transaction (README, "Running several nodes", asks the same of production).
const MaxTxnOps = 10000

// MaxRequestBytes is the --max-request-bytes the servers are started with.
const MaxRequestBytes = 32 << 20

// Server is a running etcd.
type Server struct {
	// Endpoint is host:port of its client URL (https://host:port with TLS).
	Endpoint string
	tls      *tls.Config // the client's, with TLS
	cmd      *exec.Cmd
	dir      string
	done     chan struct{}
	stopped  atomic.Bool
}

// TLSFiles are the PEM files of a server that requires TLS and client
// certificates signed by CA; Client is the configuration its clients use.
type TLSFiles struct {
	Cert, Key, CA string
	Client        *tls.Config
}

// Start starts an etcd server; the caller stops it. It fails (never skips)
// when no etcd binary is installed.
func Start() (*Server, error) { return StartTLS(nil) }

// StartTLS starts an etcd server that serves clients over TLS with f (nil:
// plain HTTP).
func StartTLS(f *TLSFiles) (*Server, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("%s", InstallHint)
	}
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "keygate-etcd-")
	if err != nil {
		return nil, fmt.Errorf("etcd data dir: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port may be taken meanwhile
		client, peer, err := freePorts()
		if err != nil {
			return nil, err
		}
		s, err := start(bin, dir, client, peer, f)
		if err == nil {
			return s, nil
		}
		lastErr = err
		_ = os.RemoveAll(filepath.Join(dir, "data"))
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

func start(bin, dir, client, peer string, f *TLSFiles) (*Server, error) {
	curl, purl := "http://"+client, "http://"+peer
	var extra []string
	if f != nil {
		curl = "https://" + client
		extra = []string{"--cert-file", f.Cert, "--key-file", f.Key, "--trusted-ca-file", f.CA, "--client-cert-auth"}
	}
	cmd := exec.Command(bin, append([]string{
		"--name", "keygate-test",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "keygate-test=" + purl,
		"--initial-cluster-state", "new",
		"--max-txn-ops", fmt.Sprint(MaxTxnOps),
		"--max-request-bytes", fmt.Sprint(MaxRequestBytes),
		"--log-level", "warn",
	}, extra...)...)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	s := &Server{Endpoint: client, cmd: cmd, dir: dir, done: make(chan struct{})}
	if f != nil {
		s.Endpoint, s.tls = curl, f.Client
	}
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(15 * time.Second); err != nil {
		s.kill()
		return nil, fmt.Errorf("etcd on %s did not become ready: %w; its output:\n%s", client, err, log.String())
	}
	return s, nil
}

func (s *Server) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("etcd exited")
		default:
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: time.Second, TLS: s.tls, Logger: zap.NewNop()})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = c.Get(ctx, "health")
			cancel()
			_ = c.Close()
			if err == nil {
				return nil
			}
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return lastErr
}

// Stop kills the server and removes its data.
func (s *Server) Stop() {
	s.kill()
	_ = os.RemoveAll(s.dir)
}

// Kill stops the server abruptly (SIGKILL) and keeps its data: Restart
// starts it again on the same ports.
func (s *Server) kill() {
	if s.stopped.CompareAndSwap(false, true) {
		_ = s.cmd.Process.Kill()
	}
	<-s.done
}

// Pause stops the server (SIGKILL), keeping its data, so that clients see it
// gone; Resume starts it again on the same ports and data.
func (s *Server) Pause() { s.kill() }

// Resume restarts a paused server.
func (s *Server) Resume() error {
	args := s.cmd.Args
	cmd := exec.Command(args[0], args[1:]...)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restart etcd: %w", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	s.stopped.Store(false)
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(15 * time.Second); err != nil {
		return fmt.Errorf("restarted etcd not ready: %w; its output:\n%s", err, log.String())
	}
	return nil
}

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 5 * time.Second, TLS: s.tls, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func freePorts() (string, string, error) {
	var addrs []string
	var ls []net.Listener
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", "", fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return addrs[0], addrs[1], nil
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedErr error
	prefixes  atomic.Int64
)

// Shared returns the test binary's etcd server, starting it on first use;
// the test fails (with how to install etcd) when it cannot start. TestMain
// calls StopShared after m.Run.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	if sharedErr != nil {
		t.Fatalf("etcd test server: %v", sharedErr)
	}
	return shared
}

// StopShared stops the shared server, if one was started.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
		shared = nil
	}
}

// Prefix returns a key prefix no other test of this binary uses.
func Prefix(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return fmt.Sprintf("/test/%d-%s/", prefixes.Add(1), name)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Metrics reads the server's Prometheus counters and gauges (its /metrics
// page on the client URL): each series under its full name with labels
// (`name{a="x",b="y"}`), and each name summed over its labels.
func (s *Server) Metrics() (map[string]float64, error) {
	url := s.Endpoint + "/metrics"
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: s.tls}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		series, rest, ok := strings.Cut(line, " ")
		name := series
		if i := strings.IndexByte(line, '{'); i >= 0 {
			var labels string
			name = line[:i]
			labels, rest, ok = strings.Cut(line[i:], "} ")
			series = name + labels + "}"
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		if series != name {
			out[series] = v
		}
		out[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	return out, nil
}
