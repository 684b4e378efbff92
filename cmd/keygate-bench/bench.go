package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keygate/keygate/store"
)

// Config is one benchmark session.
type Config struct {
	Binary      string        // keygate binary (built if missing)
	Keys        int           // keys of the main instance (scenarios uniform, zipf, garbage, malformed)
	Cache       int64         // api_keys cache of the main instance
	Scenarios   []string      // of the main instance, in order
	Big         bool          // also run the miss-path scenario on a second instance
	BigKeys     int           // keys of the big instance
	BigCache    int64         // api_keys cache of the big instance (smaller than BigKeys)
	BlockCache  int64         // api_keys block_cache in MiB of both instances (0: the module's default)
	Conns       int           // concurrent connections (one worker each)
	Duration    time.Duration // of each timed run
	Warmup      time.Duration // untimed A and B run before each scenario
	Rounds      int           // A,B pairs per scenario, run in A B B A order
	ZipfS       float64       // Zipf exponent (> 1)
	Seed        uint64        // of the key pickers
	IdleConns   int           // reverse_proxy keepalive_idle_conns_per_host for both sites (0: Caddy's default)
	Flush       time.Duration // api_keys flush_interval (default 5s, the store's default)
	KeygateLog  string        // when set: keygate's output is saved as <name>-<instance>.log
	ProfileDir  string        // when set: admin on loopback and one extra profiled A,B pair per scenario
	WorkDir     string        // temporary files (default: os.TempDir())
	Keep        bool          // keep the temporary directory
	Logf        func(format string, args ...any)
	ImportChunk int    // keys per call of the import endpoint (≤ 10,000)
	ImportProf  string // when set, a CPU profile of keygate during the (first) import is written here
}

// Scenario names.
const (
	ScUniform   = "uniform"
	ScZipf      = "zipf"
	ScGarbage   = "garbage"
	ScMalformed = "malformed"
	ScUnknown   = "unknown401"
	ScUnknownAs = "unknown401same"
	ScMiss      = "miss"
)

// unknownSecrets is how many distinct unknown secrets ScUnknown cycles
// through (issue 13's 401-path target).
const unknownSecrets = 1000

var scenarioText = map[string]string{
	ScUniform:   "valid keys, uniform over all keys (cache hits)",
	ScZipf:      "valid keys, Zipf-distributed",
	ScGarbage:   "well-formed unknown keys, a fresh one per request (negative-cache miss + store read, 401)",
	ScMalformed: "malformed keys: bad checksum/length/prefix/character (401 before any lookup)",
	ScUnknown:   "1000 distinct well-formed unknown keys (401 from the negative cache) against A = plain `respond 401`",
	ScUnknownAs: "the same 1000 unknown keys against A = Caddy's `header` and `respond` giving keygate's 401 headers and JSON body (like for like)",
	ScMiss:      "valid keys, uniform over more keys than the cache holds (the miss path)",
}

// Instance is one keygate process with its store.
type Instance struct {
	Name             string  `json:"name"`
	Keys             int     `json:"keys"`
	Cache            int64   `json:"cache"`
	ImportSeconds    float64 `json:"import_seconds"`
	ImportKeysPerSec float64 `json:"import_keys_per_sec"`
	ImportCPUSeconds float64 `json:"import_keygate_cpu_seconds"` // keygate's CPU time over the import calls
	StoreBytes       int64   `json:"store_bytes"`
	StartSeconds     float64 `json:"start_seconds"`
	IdleWaitSeconds  float64 `json:"idle_wait_seconds"`
	RSSKB            int64   `json:"rss_kb_after"`
	HWMKB            int64   `json:"rss_peak_kb"`
	// RSSFileKB is the part of RSSKB that maps files (the binary's code
	// and read-only data, shared with the page cache); RSSAnonKB the
	// process's own memory (Go heap, Pebble's block cache, memtables).
	RSSFileKB int64    `json:"rss_file_kb_after"`
	RSSAnonKB int64    `json:"rss_anon_kb_after"`
	Caddyfile string   `json:"caddyfile"`
	Scenarios []*Scene `json:"scenarios"`
}

// Scene is the result of one scenario: rounds × (A, B).
type Scene struct {
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Runs        []RunResult `json:"runs"`
	Summary     Summary     `json:"summary"`
	Profiles    []string    `json:"profiles,omitempty"`
}

// Report is the whole session.
type Report struct {
	Started   time.Time   `json:"started"`
	Host      HostInfo    `json:"host"`
	Config    ConfigView  `json:"config"`
	Instances []*Instance `json:"instances"`
	Targets   []Target    `json:"targets"`
	Seconds   float64     `json:"seconds"`
}

// HostInfo describes where it ran.
type HostInfo struct {
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go_version"`
	Load1     string `json:"load_avg_at_start"`
	Binary    string `json:"binary"`
	Upstream  string `json:"upstream"`
	BodyBytes int    `json:"upstream_body_bytes"`
}

// ConfigView is the JSON form of Config.
type ConfigView struct {
	Conns      int      `json:"connections"`
	Duration   string   `json:"duration"`
	Warmup     string   `json:"warmup"`
	Rounds     int      `json:"rounds"`
	Keys       int      `json:"keys"`
	Cache      int64    `json:"cache"`
	BigKeys    int      `json:"big_keys,omitempty"`
	BigCache   int64    `json:"big_cache,omitempty"`
	ZipfS      float64  `json:"zipf_s"`
	Scenarios  []string `json:"scenarios"`
	IdleConns  int      `json:"upstream_idle_conns_per_host"`
	Flush      string   `json:"flush_interval"`
	BlockCache int64    `json:"block_cache_mb,omitempty"`
	Profiling  bool     `json:"profiling"`
	ImportSize int      `json:"import_chunk"`
}

const upstreamBody = "hello from the bench upstream\n"

func (c *Config) defaults() {
	if c.Keys <= 0 {
		c.Keys = 10_000
	}
	if c.Cache <= 0 {
		c.Cache = 100_000
	}
	if c.BigKeys <= 0 {
		c.BigKeys = 1_000_000
	}
	if c.BigCache <= 0 {
		c.BigCache = 100_000
	}
	if c.Conns <= 0 {
		c.Conns = 50
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Flush <= 0 {
		c.Flush = 5 * time.Second
	}
	if c.ZipfS <= 1 {
		c.ZipfS = 1.1
	}
	if c.Scenarios == nil {
		c.Scenarios = []string{ScUniform, ScZipf, ScGarbage, ScMalformed, ScUnknown, ScUnknownAs}
	}
	if c.ImportChunk <= 0 || c.ImportChunk > store.MaxImport {
		c.ImportChunk = store.MaxImport
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Run runs the whole session: upstream, store import, keygate, load.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	for _, sc := range cfg.Scenarios {
		if _, ok := scenarioText[sc]; !ok || sc == ScMiss {
			return nil, fmt.Errorf("unknown scenario %q (want uniform, zipf, garbage, malformed, unknown401, unknown401same)", sc)
		}
	}
	start := time.Now()
	bin, err := ensureBinary(ctx, cfg.Binary, cfg.Logf)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(cfg.WorkDir, "keygate-bench-")
	if err != nil {
		return nil, err
	}
	if cfg.Keep {
		cfg.Logf("keeping %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	up, err := startUpstream()
	if err != nil {
		return nil, err
	}
	defer up.Close()

	rep := &Report{
		Started: start.UTC(),
		Host: HostInfo{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Load1: loadAvg(), Binary: bin,
			Upstream: "in-process net/http on " + up.Addr, BodyBytes: len(upstreamBody)},
		Config: ConfigView{Conns: cfg.Conns, Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(), Rounds: cfg.Rounds,
			Keys: cfg.Keys, Cache: cfg.Cache, ZipfS: cfg.ZipfS, Scenarios: cfg.Scenarios, IdleConns: cfg.IdleConns,
			Flush: cfg.Flush.String(), BlockCache: cfg.BlockCache, Profiling: cfg.ProfileDir != "", ImportSize: cfg.ImportChunk},
	}
	if cfg.Big {
		rep.Config.BigKeys, rep.Config.BigCache = cfg.BigKeys, cfg.BigCache
	}
	client := newClient(cfg.Conns)
	defer client.CloseIdleConnections()

	type plan struct {
		name      string
		keys      int
		cache     int64
		scenarios []string
	}
	plans := []plan{{"main", cfg.Keys, cfg.Cache, cfg.Scenarios}}
	if cfg.Big {
		plans = append(plans, plan{"big", cfg.BigKeys, cfg.BigCache, []string{ScMiss}})
	}
	for _, p := range plans {
		if len(p.scenarios) == 0 {
			continue
		}
		inst := &Instance{Name: p.name, Keys: p.keys, Cache: p.cache}
		rep.Instances = append(rep.Instances, inst)
		if err := runInstance(ctx, cfg, bin, filepath.Join(work, p.name), up.Addr, client, inst, p.scenarios); err != nil {
			return rep, err
		}
	}
	rep.Targets = evaluate(rep)
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

func runInstance(ctx context.Context, cfg Config, bin, dir, upstream string, client *http.Client, inst *Instance, scenarios []string) error {
	storeDir := filepath.Join(dir, "store")
	cfg.Logf("[%s] importing %d keys into %s through the import endpoint", inst.Name, inst.Keys, storeDir)
	profile := cfg.ImportProf
	cfg.ImportProf = ""
	secrets, took, importCPU, err := importKeys(ctx, cfg, bin, dir, storeDir, upstream, inst.Keys, profile)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	inst.ImportCPUSeconds = importCPU.Seconds()
	inst.ImportSeconds = took.Seconds()
	inst.ImportKeysPerSec = float64(inst.Keys) / took.Seconds()
	inst.StoreBytes = dirSize(storeDir)
	cfg.Logf("[%s] imported %d keys through the endpoint in %.1fs (%.0f keys/s, keygate cpu %.1fs), store %.1f MiB", inst.Name, inst.Keys, took.Seconds(),
		inst.ImportKeysPerSec, inst.ImportCPUSeconds, float64(inst.StoreBytes)/(1<<20))

	t0 := time.Now()
	kg, err := startKeygate(ctx, cfg, bin, dir, storeDir, upstream, inst.Cache, startOptions{})
	if err != nil {
		return err
	}
	defer func() {
		kg.stop()
		if cfg.KeygateLog != "" {
			name := strings.TrimSuffix(cfg.KeygateLog, ".log") + "-" + inst.Name + ".log"
			if err := os.WriteFile(name, []byte(kg.output()), 0o644); err != nil {
				cfg.Logf("keygate log: %v", err)
			}
		}
	}()
	inst.StartSeconds = time.Since(t0).Seconds()
	inst.Caddyfile = kg.caddyfile
	t0 = time.Now()
	waitIdle(ctx, kg.pid(), 30*time.Second)
	inst.IdleWaitSeconds = time.Since(t0).Seconds()
	cfg.Logf("[%s] keygate pid %d ready in %.1fs (+%.1fs until idle): A %s  B %s", inst.Name, kg.pid(), inst.StartSeconds,
		inst.IdleWaitSeconds, kg.urlA, kg.urlB)

	for _, name := range scenarios {
		if err := ctx.Err(); err != nil {
			return err
		}
		var pick pickerFactory
		switch name {
		case ScUniform, ScMiss:
			pick = uniformKeys(secrets, cfg.Seed)
		case ScZipf:
			pick = zipfKeys(secrets, cfg.ZipfS, cfg.Seed)
		case ScGarbage:
			pick = garbageKeys(cfg.Seed)
		case ScMalformed:
			pick = malformedKeys(cfg.Seed)
		case ScUnknown, ScUnknownAs:
			pick = fixedKeys(garbageKeys(cfg.Seed^0x401), unknownSecrets, cfg.Seed)
		}
		// Side A of the 401 scenarios is Caddy answering 401 by itself, not
		// the proxy: the target compares keygate's rejection with that.
		urlA := kg.urlA
		switch name {
		case ScUnknown:
			urlA = kg.urlR
		case ScUnknownAs:
			urlA = kg.urlS
			if err := kg.checkInvalid401(ctx, client, pick(0)()); err != nil {
				return err
			}
		}
		sc := &Scene{Name: name, Description: scenarioText[name]}
		inst.Scenarios = append(inst.Scenarios, sc)
		if cfg.Warmup > 0 {
			load(ctx, client, urlA, cfg.Conns, cfg.Warmup, pick)
			load(ctx, client, kg.urlB, cfg.Conns, cfg.Warmup, pick)
			settle(ctx, kg.pid(), cfg.Flush)
		}
		for round := 1; round <= cfg.Rounds; round++ {
			for _, side := range roundSides(round) {
				url := urlA
				if side == "B" {
					url = kg.urlB
				}
				cpu0 := procCPU(kg.pid())
				r := load(ctx, client, url, cfg.Conns, cfg.Duration, pick)
				cpuRun := procCPU(kg.pid()) - cpu0
				// Let the work the run caused finish before the next run, and
				// charge it to this one: after B, the usage flush of its keys
				// (at the next flush tick), after either, any other
				// background work.
				t0 := time.Now()
				if side == "B" {
					settle(ctx, kg.pid(), cfg.Flush)
				} else {
					settle(ctx, kg.pid(), 0)
				}
				r.SettleSeconds = time.Since(t0).Seconds()
				if cpu := procCPU(kg.pid()) - cpu0; r.Requests > 0 && cpu >= 0 && cpuRun >= 0 {
					r.ServerCPUus = cpu.Seconds() * 1e6 / float64(r.Requests)
					r.ServerCPURunUs = cpuRun.Seconds() * 1e6 / float64(r.Requests)
				}
				r.Round, r.Side = round, side
				sc.Runs = append(sc.Runs, r)
				sc.Summary = summarize(sc.Runs)
				cfg.Logf("[%s] %-9s round %d %s: %8.0f req/s  p50 %7.0fµs  p99 %7.0fµs  cpu %5.1fµs/req (in run %5.1f)  2xx %d 401 %d other %d err %d",
					inst.Name, name, round, side, r.RPS, r.P50us, r.P99us, r.ServerCPUus, r.ServerCPURunUs, r.Status2xx, r.Status401, r.StatusOther, r.Errors)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
		}
		if cfg.ProfileDir != "" {
			for _, side := range []string{"A", "B"} {
				url := urlA
				if side == "B" {
					url = kg.urlB
				}
				file := filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s-%s.pprof", inst.Name, name, side))
				err := profileRun(ctx, kg, client, url, cfg, pick, file, side == "B")
				if err != nil {
					cfg.Logf("profile %s: %v", file, err)
					continue
				}
				sc.Profiles = append(sc.Profiles, file)
				if side == "B" { // what the collector has to mark, after both sides ran
					heap := strings.TrimSuffix(file, ".pprof") + "-heap.pprof"
					if err := fetchTo(kg.admin+"/debug/pprof/heap?gc=1", heap, 30*time.Second); err != nil {
						cfg.Logf("heap profile %s: %v", heap, err)
					} else {
						sc.Profiles = append(sc.Profiles, heap)
					}
				}
				cfg.Logf("[%s] %-9s profile %s", inst.Name, name, file)
			}
		}
	}
	m := procRSS(kg.pid())
	inst.RSSKB, inst.HWMKB, inst.RSSFileKB, inst.RSSAnonKB = m.rss, m.hwm, m.file, m.anon
	cfg.Logf("[%s] keygate RSS %.1f MiB (peak %.1f MiB; anonymous %.1f MiB, files %.1f MiB)", inst.Name,
		float64(inst.RSSKB)/1024, float64(inst.HWMKB)/1024, float64(inst.RSSAnonKB)/1024, float64(inst.RSSFileKB)/1024)
	return nil
}

// ensureBinary returns the keygate binary, building it if it is missing.
func ensureBinary(ctx context.Context, bin string, logf func(string, ...any)) (string, error) {
	if bin == "" {
		bin = "bin/keygate"
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err == nil {
		return abs, nil
	}
	logf("building %s", abs)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", abs, "./cmd/keygate")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build keygate (run from the module root, or pass --bin): %w", err)
	}
	return abs, nil
}

// upstream is the tiny backend both sites proxy to.
type upstream struct {
	Addr string
	srv  *http.Server
}

func startUpstream() (*upstream, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	body := []byte(upstreamBody)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	go func() { _ = srv.Serve(l) }()
	return &upstream{Addr: l.Addr().String(), srv: srv}, nil
}

func (u *upstream) Close() { _ = u.srv.Close() }

// keygate is a running keygate process.
type keygate struct {
	cmd        *exec.Cmd
	done       chan struct{}
	log        *lockedWriter
	caddyfile  string
	urlA, urlB string
	urlR       string // site R: plain `respond 401` (the 401 scenario's A)
	urlS       string // site S: `respond` with keygate's 401 headers and body (unknown401same's A)
	admin      string // http://127.0.0.1:port when profiling
	api        string // the admin REST API, http://127.0.0.1:port, for the import
}

func (k *keygate) pid() int { return k.cmd.Process.Pid }

// caddyfile is the generated config: site A is reverse_proxy alone, site B
// the identical reverse_proxy block behind api_key (PITFALLS 18). With
// apiPort > 0 a third site serves the admin REST API (for the import), its
// operator token taken from the environment. Site R answers 401 by itself
// (`respond 401`): the baseline of keygate's rejection path. Site S answers
// what keygate answers an unknown key (invalid401), with Caddy's own
// directives.
func caddyfile(dir, storeDir, upstream string, cache, blockCache int64, flush time.Duration, portA, portB, portR, portS, adminPort, idleConns, apiPort int) string {
	admin := "admin off"
	if adminPort > 0 {
		admin = fmt.Sprintf("admin 127.0.0.1:%d", adminPort)
	}
	blockCacheLine := ""
	if blockCache > 0 {
		blockCacheLine = fmt.Sprintf("\n\t\tblock_cache %d", blockCache)
	}
	proxy := "reverse_proxy " + upstream
	if idleConns > 0 {
		proxy += fmt.Sprintf(" {\n\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host %d\n\t\t}\n\t}", idleConns)
	}
	apiSite := ""
	if apiPort > 0 {
		apiSite = fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key_admin {
		operator_token {env.%s}
	}
}
`, apiPort, operatorTokenEnv)
	}
	return fmt.Sprintf(`{
	%s
	persist_config off
	auto_https off
	storage file_system %s
	log {
		level error
	}
	api_keys {
		storage %s
		cache %d
		flush_interval %s%s
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	%s
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	api_key
	%s
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	respond 401
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	header Content-Type %s
	header Cache-Control %s
	header WWW-Authenticate %s
	respond %s 401
}
%s`, admin, filepath.Join(dir, "caddy"), storeDir, cache, flush, blockCacheLine, portA, proxy, portB, proxy, portR,
		portS, invalid401.contentType, invalid401.cacheControl, strconv.Quote(invalid401.challenge), "`"+strings.TrimSuffix(invalid401.body, "\n")+"`", apiSite)
}

// invalid401 is keygate's answer to an unknown key (SPEC section 3), which
// site S copies; checkInvalid401 makes sure the copy stays exact.
var invalid401 = struct{ contentType, cacheControl, challenge, body string }{
	contentType:  "application/json",
	cacheControl: "no-store",
	challenge:    `Bearer realm="keygate", error="invalid_token"`,
	body:         `{"error":{"code":"invalid_key","message":"invalid API key"}}` + "\n",
}

// checkInvalid401 compares site S's answer with keygate's answer to an
// unknown key: status, the three headers and the body.
func (k *keygate) checkInvalid401(ctx context.Context, c *http.Client, unknown string) error {
	answer := func(url, secret string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		if secret != "" {
			req.Header.Set("X-API-Key", secret)
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %q %q %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"),
			resp.Header.Get("WWW-Authenticate"), strings.TrimSuffix(string(body), "\n")), err
	}
	b, err := answer(k.urlB, unknown)
	if err != nil {
		return err
	}
	s, err := answer(k.urlS, "")
	if err != nil {
		return err
	}
	if b != s {
		return fmt.Errorf("site S answers %s, keygate %s: update invalid401", s, b)
	}
	return nil
}

// startOptions are what the import's keygate has on top of the measured one.
type startOptions struct {
	operatorToken string // serve the admin REST API with this operator token
	caddyAdmin    bool   // Caddy's admin endpoint on loopback (for /debug/pprof)
}

// startKeygate starts the binary on the store and waits until both sites
// answer. Ports are picked free; a start that loses a port race is retried.
func startKeygate(ctx context.Context, cfg Config, bin, dir, storeDir, upstream string, cache int64, opt startOptions) (*keygate, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports, err := freePorts(6)
		if err != nil {
			return nil, err
		}
		adminPort, apiPort := 0, 0
		if cfg.ProfileDir != "" || opt.caddyAdmin {
			adminPort = ports[2]
		}
		if opt.operatorToken != "" {
			apiPort = ports[3]
		}
		cf := filepath.Join(dir, "Caddyfile")
		text := caddyfile(dir, storeDir, upstream, cache, cfg.BlockCache, cfg.Flush, ports[0], ports[1], ports[4], ports[5], adminPort, cfg.IdleConns, apiPort)
		if err := os.WriteFile(cf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, "run", "--config", cf, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"),
			operatorTokenEnv+"="+opt.operatorToken)
		log := &lockedWriter{}
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the bench
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		kg := &keygate{cmd: cmd, done: make(chan struct{}), log: log, caddyfile: text,
			urlA: fmt.Sprintf("http://127.0.0.1:%d/", ports[0]), urlB: fmt.Sprintf("http://127.0.0.1:%d/", ports[1]),
			urlR: fmt.Sprintf("http://127.0.0.1:%d/", ports[4]), urlS: fmt.Sprintf("http://127.0.0.1:%d/", ports[5])}
		if adminPort > 0 {
			kg.admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
		}
		if apiPort > 0 {
			kg.api = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
		}
		go func() { _ = cmd.Wait(); close(kg.done) }()
		if err := kg.waitReady(ctx, 60*time.Second); err != nil {
			kg.stop()
			lastErr = fmt.Errorf("keygate did not start: %w\n--- Caddyfile\n%s--- keygate output (tail)\n%s", err, text, tail(kg.output(), 3000))
			if ctx.Err() != nil || !strings.Contains(kg.output(), "address already in use") {
				return nil, lastErr
			}
			continue
		}
		return kg, nil
	}
	return nil, lastErr
}

func (k *keygate) output() string { return k.log.String() }

// lockedWriter collects the process output (stdout and stderr).
type lockedWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitReady polls A (200 from the upstream) and B (401 without a key).
func (k *keygate) waitReady(ctx context.Context, timeout time.Duration) error {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-k.done:
			return errors.New("process exited")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if statusOf(c, k.urlA) == 200 && statusOf(c, k.urlB) == 401 && statusOf(c, k.urlR) == 401 && statusOf(c, k.urlS) == 401 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func statusOf(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// stop asks keygate to shut down gracefully (the store flushes and closes)
// and kills it if it has not exited within 15 s.
func (k *keygate) stop() {
	select {
	case <-k.done:
		return
	default:
	}
	_ = k.cmd.Process.Signal(os.Interrupt)
	select {
	case <-k.done:
	case <-time.After(15 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.done
	}
}

// profileRun fetches a CPU profile from Caddy's admin endpoint while load
// runs against url (an extra, unreported run). With flush set the profile
// also covers the flush interval after the load, so the usage flush the run
// caused is in it, as it is charged to B in the timed runs.
func profileRun(ctx context.Context, kg *keygate, client *http.Client, url string, cfg Config, pick pickerFactory, file string, flush bool) error {
	if kg.admin == "" {
		return errors.New("admin endpoint not enabled")
	}
	secs := max(1, int(cfg.Duration.Round(time.Second).Seconds()))
	profSecs := secs
	if flush {
		profSecs += int(cfg.Flush.Round(time.Second).Seconds()) + 2
	}
	type got struct {
		data []byte
		err  error
	}
	ch := make(chan got, 1)
	go func() {
		c := &http.Client{Timeout: time.Duration(profSecs+30) * time.Second}
		resp, err := c.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", kg.admin, profSecs))
		if err != nil {
			ch <- got{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, tail(string(b), 300))
		}
		ch <- got{b, err}
	}()
	cpu0 := procCPU(kg.pid())
	r := load(ctx, client, url, cfg.Conns, time.Duration(secs)*time.Second+500*time.Millisecond, pick)
	cpu := procCPU(kg.pid()) - cpu0
	g := <-ch
	cpuAll := procCPU(kg.pid()) - cpu0
	perReq := func(d time.Duration) float64 { return d.Seconds() * 1e6 / float64(max(r.Requests, 1)) }
	cfg.Logf("profiled run: %.0f req/s, p99 %.0fµs, %d requests, keygate cpu %.1fµs/req (%.1f with the profile's tail)",
		r.RPS, r.P99us, r.Requests, perReq(cpu), perReq(cpuAll))
	if g.err != nil {
		return g.err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	return os.WriteFile(file, g.data, 0o644)
}

// fetchTo saves the body of a GET of url in file.
func fetchTo(url, file string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d: %s", resp.StatusCode, tail(string(b), 300))
	}
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o644)
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// procCPU is the process's user+system CPU time from /proc/<pid>/stat, or
// -1 when it cannot be read.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ppid(1) … utime(11) stime(12).
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks
}

// rssKB is a process's resident memory from /proc/<pid>/status, in KiB:
// VmRSS, VmHWM (its peak), RssFile and RssAnon.
type rssKB struct{ rss, hwm, file, anon int64 }

// procRSS reads pid's resident memory (zero when it cannot).
func procRSS(pid int) (m rssKB) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = v
		case "VmHWM:":
			m.hwm = v
		case "RssFile:":
			m.file = v
		case "RssAnon:":
			m.anon = v
		}
	}
	return m
}

// settle waits out a flush interval (the next usage flush has then run or
// is running) and then until keygate is idle, at most 10 s more.
func settle(ctx context.Context, pid int, flush time.Duration) {
	if flush > 0 {
		select {
		case <-time.After(flush + 200*time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
	waitIdle(ctx, pid, 10*time.Second)
}

// waitIdle waits (at most max) until the process uses under 5 % of a core
// over half a second, e.g. after Pebble's start-up compactions.
func waitIdle(ctx context.Context, pid int, maxWait time.Duration) {
	deadline := time.Now().Add(maxWait)
	prev := procCPU(pid)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(500 * time.Millisecond)
		cur := procCPU(pid)
		if cur < 0 || cur-prev < 25*time.Millisecond {
			return
		}
		prev = cur
	}
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// roundSides is the order of the sides in a round: A B, then B A, … (A B B
// A), so that a drift over the session (a compaction, a warming cache,
// another process) weighs on both sides alike.
func roundSides(round int) []string {
	if round%2 == 0 {
		return []string{"B", "A"}
	}
	return []string{"A", "B"}
}
