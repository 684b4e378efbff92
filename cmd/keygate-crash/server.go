package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// buildKeygate builds ./cmd/keygate of the module containing dir (no -race:
// the binary under test is the one users run) into outDir and returns its
// path.
func buildKeygate(ctx context.Context, dir, outDir string) (string, error) {
	goTool := "go"
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	gomod, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return "", fmt.Errorf("%s is not inside the keygate module", dir)
	}
	bin := filepath.Join(outDir, "keygate")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/keygate")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=") // no -race or other flags from the caller
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keygate: %w\n%s", err, out)
	}
	return bin, nil
}

// randomToken is n base62 characters from crypto/rand.
func randomToken(n int) string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// site describes one keygate instance: its Caddyfile and where it answers.
type site struct {
	Dir        string // scratch directory: config, key store, Caddy storage, logs
	Token      string // operator token
	AdminPort  int    // Caddy's admin endpoint; 0 = admin off
	APIPort    int    // the api_key_admin site
	GatewayPrt int    // the api_key site: route { api_key; respond "ok" 200 }
	// AppOptions are extra lines for the api_keys block (e.g. "disk_reserve 1MiB").
	AppOptions []string
	// Etcd, when set, keeps the keys in etcd instead of Pebble under Dir.
	Etcd *etcdStorage
}

// etcdStorage is a node's place in an etcd cluster shared by nodes.
type etcdStorage struct {
	Endpoint     string        // host:port on loopback
	Prefix       string        // e.g. /crash-1/; the same on every node of one key space
	NodeID       string        // unique per node (a restarted node keeps its id)
	MaxStaleness time.Duration // 0: keygate's default (2s)
}

// storage is the api_keys lines that say where keys are kept.
func (s *site) storage() string {
	e := s.Etcd
	if e == nil {
		return "storage " + s.StorePath()
	}
	stale := ""
	if e.MaxStaleness > 0 {
		stale = "\n\t\t\tmax_staleness " + e.MaxStaleness.String()
	}
	return fmt.Sprintf("etcd {\n\t\t\tendpoints %s\n\t\t\tprefix %s%s\n\t\t}\n\t\tnode_id %s",
		e.Endpoint, e.Prefix, stale, e.NodeID)
}

func newSite(dir string, withAdmin bool) (*site, error) {
	s := &site{Dir: dir, Token: randomToken(32)}
	if err := s.pickPorts(withAdmin); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *site) pickPorts(withAdmin bool) error {
	var err error
	if s.APIPort, err = freePort(); err != nil {
		return err
	}
	if s.GatewayPrt, err = freePort(); err != nil {
		return err
	}
	s.AdminPort = 0
	if withAdmin {
		if s.AdminPort, err = freePort(); err != nil {
			return err
		}
	}
	return nil
}

func (s *site) ConfigPath() string { return filepath.Join(s.Dir, "Caddyfile") }
func (s *site) StorePath() string  { return filepath.Join(s.Dir, "keys") }
func (s *site) APIURL() string     { return fmt.Sprintf("http://127.0.0.1:%d", s.APIPort) }
func (s *site) GatewayURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", s.GatewayPrt) }
func (s *site) AdminAddr() string  { return fmt.Sprintf("127.0.0.1:%d", s.AdminPort) }

// WriteConfig writes the Caddyfile: the admin API site, the gateway site,
// the key store (unless in etcd) and Caddy's own storage under Dir, nothing
// persisted elsewhere, loopback only.
func (s *site) WriteConfig() error {
	admin := "admin off"
	if s.AdminPort != 0 {
		admin = "admin " + s.AdminAddr()
	}
	cfg := fmt.Sprintf(`{
	%s
	persist_config off
	auto_https off
	storage file_system %s
	api_keys {
		%s
		flush_interval 1s%s
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key_admin {
		operator_token %s
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	route {
		api_key
		respond "ok" 200
	}
}
`, admin, filepath.Join(s.Dir, "caddy"), s.storage(), appOptions(s.AppOptions), s.APIPort, s.Token, s.GatewayPrt)
	if err := os.MkdirAll(filepath.Join(s.Dir, "logs"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(s.ConfigPath(), []byte(cfg), 0o600)
}

func appOptions(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("\n\t\t" + l)
	}
	return b.String()
}

// Env is the environment for keygate processes: Caddy's XDG directories
// point into Dir so nothing lands in the user's home.
func (s *site) Env() []string {
	return append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(s.Dir, "xdg-config"),
		"XDG_DATA_HOME="+filepath.Join(s.Dir, "xdg-data"),
	)
}

// process is one running `keygate run`.
type process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// start runs `keygate run --config <Caddyfile> --adapter caddyfile`, its
// output going to logs/<name>.log.
func (s *site) start(bin, name string) (*process, error) {
	logPath := filepath.Join(s.Dir, "logs", name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", s.ConfigPath(), "--adapter", "caddyfile")
	cmd.Env = s.Env()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	p := &process{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop asks for a graceful shutdown (SIGINT) and waits up to 15 s, then
// kills. It reports whether the process stopped by itself.
func (p *process) stop() bool {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
		return true
	case <-time.After(15 * time.Second):
		p.kill()
		return false
	}
}

// logTail is the end of the process's log, for error messages.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// client speaks JSON to the admin API and plain HTTP to the gateway.
type client struct {
	site *site
	hc   *http.Client
}

func newClient(s *site) *client {
	return &client{site: s, hc: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 32, Proxy: nil},
	}}
}

func (c *client) close() { c.hc.CloseIdleConnections() }

// api sends a request to the admin API with the operator token and returns
// the status and body. err is a transport error: no answer was received.
func (c *client) api(method, path string, body any) (int, []byte, error) {
	return c.apiAs(c.site.Token, method, path, body)
}

func (c *client) apiAs(token, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.site.APIURL()+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, raw, nil
}

// gateway sends GET / with the secret in X-API-Key and returns the status
// and the error code of a rejection ("" on success, when the body is "ok").
func (c *client) gateway(secret string) (int, string, error) {
	req, err := http.NewRequest("GET", c.site.GatewayURL(), nil)
	if err != nil {
		return 0, "", err
	}
	if secret != "" {
		req.Header.Set("X-API-Key", secret)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode == http.StatusOK {
		if string(raw) != "ok" {
			return resp.StatusCode, "unexpected body " + string(raw), nil
		}
		return resp.StatusCode, "", nil
	}
	return resp.StatusCode, errorCode(raw), nil
}

// errorCode is the code of an error answer {"error": {"code": ...}}.
func errorCode(raw []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &e) != nil || e.Error.Code == "" {
		return "(no error code: " + strings.TrimSpace(string(raw)) + ")"
	}
	return e.Error.Code
}

// waitReady waits until the admin API answers GET /v1/me with 200 and the
// gateway answers a request without a key with 401 missing_key. It fails
// early when the process exits.
func (c *client) waitReady(p *process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("keygate exited during start-up (%v); log:\n%s", p.waitErr, p.logTail(30))
		}
		status, _, err := c.api("GET", "/v1/me", nil)
		switch {
		case err != nil:
			last = err.Error()
		case status != http.StatusOK:
			last = fmt.Sprintf("GET /v1/me: %d", status)
		default:
			gs, code, err := c.gateway("")
			if err == nil && gs == http.StatusUnauthorized && code == "missing_key" {
				return nil
			}
			last = fmt.Sprintf("gateway without a key: %d %s %v", gs, code, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("keygate did not answer within %v (last: %s); log:\n%s", timeout, last, p.logTail(30))
}

// errAddrInUse tells whether a failed start was a port collision.
func errAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

var errViolation = errors.New("durability violation")
