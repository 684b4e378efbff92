// Package caddymodule is keygate's thin Caddy glue: the api_keys app (which
// owns the store shared across config reloads), the api_key gateway handler
// and the api_key_admin handler, with their Caddyfile syntax.
package caddymodule

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/keygate/keygate/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// stores shares open stores across config reloads, keyed by the canonical
// storage path: Caddy provisions the new config before it cleans up the old
// one, and Pebble's lock would refuse a second open (PITFALLS 1, 2).
var stores = caddy.NewUsagePool()

// App is the api_keys app. It owns the key store (Pebble), the
// verification caches, the last-used flusher and the rate limiters.
type App struct {
	// Storage is the directory of the Pebble store. Default:
	// "keygate" under Caddy's data directory.
	Storage string `json:"storage,omitempty"`

	// BlockCacheMB is Pebble's block cache in MiB. Default 64; raise it
	// when the key set is far larger than CacheEntries (the miss path):
	// about 250 bytes per stored key keeps the key records cached.
	BlockCacheMB int64 `json:"block_cache_mb,omitempty"`

	// CacheEntries bounds the verification cache (keys). Default 100000.
	CacheEntries int64 `json:"cache_entries,omitempty"`

	// NegativeCacheEntries bounds the cache of unknown secrets. Default 10000.
	NegativeCacheEntries int64 `json:"negative_cache_entries,omitempty"`

	// NegativeTTL is how long an unknown secret stays cached. Default 10s.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`

	// FlushInterval is how often last-used times and usage counters are
	// written to the store. Default 5s.
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// EventRetention is how long audit events are kept: older ones
	// (denied-request summaries included) are deleted in the background,
	// hourly and in bounded batches. Default 90 days ("2160h"); at least
	// 24h; a negative value (Caddyfile: "off") keeps them forever.
	EventRetention caddy.Duration `json:"event_retention,omitempty"`

	// Pepper, when set, hashes secrets with HMAC-SHA-256 keyed by it
	// (placeholders such as {env.KEYGATE_PEPPER} are expanded). Changing it
	// invalidates every existing key.
	Pepper string `json:"pepper,omitempty"`

	// DiskReserve is the free space, in bytes, that the store keeps on its
	// filesystem. Every write first checks the free space (statfs); below
	// the reserve, admin writes answer 507 insufficient_storage and
	// last-used/usage data stay in memory (bounded) while the gateway goes
	// on verifying keys; everything resumes once space is freed. A start
	// with less free space than the reserve fails. The reserve is the room
	// Pebble needs to finish its flushes and compactions once writes stop:
	// keep it at least 64 MiB and about a quarter of the store's size.
	// Default 256 MiB (268435456); -1 disables the check (Pebble then
	// meets a full disk itself: writes fail until keygate is restarted).
	DiskReserve int64 `json:"disk_reserve,omitempty"`

	// Etcd, when set, keeps the key store in an etcd cluster that several
	// keygate nodes share (SPEC section 7) instead of Pebble: storage,
	// block_cache_mb and disk_reserve then do not apply.
	Etcd *EtcdConfig `json:"etcd,omitempty"`

	// NodeID names this node among those sharing an etcd; it must be
	// unique per node (each writes its own usage records under it).
	// Default: the host name. Only with etcd.
	NodeID string `json:"node_id,omitempty"`

	path   string
	shared *shared
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "api_keys",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision resolves the storage path and joins (or creates) the shared
// state for it. The store itself is opened in Start (or by the first
// request), so that `caddy validate` in a second process never needs the
// running server's lock (PITFALLS 8).
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	var path string
	var etcd *store.EtcdConfig
	if a.Etcd != nil {
		cfg := a.Etcd.storeConfig(repl)
		etcd, path = &cfg, a.Etcd.poolKey()
		if a.NodeID == "" {
			id, err := defaultNodeID()
			if err != nil {
				return err
			}
			a.NodeID = id
		}
		cfg.NodeID = a.NodeID
	} else {
		dir := repl.ReplaceAll(a.Storage, "")
		if dir == "" {
			dir = filepath.Join(caddy.AppDataDir(), "keygate")
		}
		var err error
		if path, err = canonicalPath(dir); err != nil {
			return fmt.Errorf("api_keys storage: %w", err)
		}
	}
	opts := store.Options{
		NodeID:          a.NodeID,
		BlockCache:      a.BlockCacheMB << 20,
		CacheEntries:    a.CacheEntries,
		NegativeEntries: a.NegativeCacheEntries,
		NegativeTTL:     time.Duration(a.NegativeTTL),
		FlushInterval:   time.Duration(a.FlushInterval),
		EventRetention:  time.Duration(a.EventRetention),
		Logger:          zapLogger{},
		Decorate:        decorate,
		DiskReserve:     a.DiskReserve,
	}
	if p := repl.ReplaceAll(a.Pepper, ""); p != "" {
		opts.Pepper = []byte(p)
	}
	if etcd == nil {
		opts.Dir = path
	}
	val, loaded, err := stores.LoadOrNew(path, func() (caddy.Destructor, error) {
		sh := newShared(opts)
		sh.etcd = etcd
		return sh, nil
	})
	if err != nil {
		return err
	}
	a.path = path
	a.shared = val.(*shared)
	if loaded && !a.shared.sameOptions(opts) {
		a.logger.Warn("api_keys options other than storage take effect when the store is next opened (restart, or reload to another path)",
			zap.String("storage", path))
	}
	registerMetrics(ctx, a.shared)
	return nil
}

// Validate checks the ranges the Caddyfile parser checks too, for JSON
// configs: no negative sizes or intervals (a negative flush_interval would
// stop the flusher), and a retention of at least a day.
func (a *App) Validate() error {
	switch {
	case a.BlockCacheMB < 0 || a.BlockCacheMB > 1<<20:
		return fmt.Errorf("api_keys: block_cache_mb must be 1–%d MiB (0: default), got %d", 1<<20, a.BlockCacheMB)
	case a.CacheEntries < 0:
		return fmt.Errorf("api_keys: cache_entries must not be negative, got %d", a.CacheEntries)
	case a.NegativeCacheEntries < 0:
		return fmt.Errorf("api_keys: negative_cache_entries must not be negative, got %d", a.NegativeCacheEntries)
	case a.NegativeTTL < 0:
		return fmt.Errorf("api_keys: negative_ttl must not be negative, got %s", time.Duration(a.NegativeTTL))
	case a.FlushInterval < 0:
		return fmt.Errorf("api_keys: flush_interval must not be negative, got %s", time.Duration(a.FlushInterval))
	case a.EventRetention > 0 && time.Duration(a.EventRetention) < store.MinEventRetention:
		return fmt.Errorf("api_keys: event_retention must be at least %s (or negative: keep forever), got %s",
			store.Duration(store.MinEventRetention), time.Duration(a.EventRetention))
	case a.DiskReserve < -1:
		return fmt.Errorf("api_keys: disk_reserve must be a size in bytes, or -1 to disable the check; got %d", a.DiskReserve)
	case a.NodeID != "" && a.Etcd == nil:
		return fmt.Errorf("api_keys: node_id names a node sharing an etcd: it needs an etcd block")
	}
	if err := store.CheckNodeID(a.NodeID); err != nil {
		return fmt.Errorf("api_keys: node_id: %w", err)
	}
	if a.Etcd != nil {
		if a.Storage != "" {
			return fmt.Errorf("api_keys: storage (a Pebble directory) and etcd exclude each other")
		}
		return a.Etcd.validate()
	}
	return nil
}

// Start opens the store if no earlier config has.
func (a *App) Start() error {
	if _, err := a.shared.open(); err != nil {
		return err
	}
	if a.Etcd != nil {
		a.logger.Info("api key store ready", zap.Strings("etcd", a.Etcd.Endpoints), zap.String("prefix", a.shared.etcd.Prefix),
			zap.String("node_id", a.NodeID))
		return nil
	}
	a.logger.Info("api key store ready", zap.String("storage", a.path))
	return nil
}

// Stop does nothing: the store outlives this config while another config
// uses it; Cleanup releases it.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on the shared store; the last holder
// flushes and closes it. It also runs after a failed Provision.
func (a *App) Cleanup() error {
	if a.shared == nil {
		return nil
	}
	a.shared = nil
	_, err := stores.Delete(a.path)
	return err
}

// canonicalPath makes one string of every spelling of a directory
// (relative, absolute, through symlinks), creating it if needed.
func canonicalPath(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	abs = filepath.Clean(abs)
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// shared is the state that outlives a config: it must not keep a
// caddy.Context or its logger (PITFALLS 3).
type shared struct {
	opts store.Options
	etcd *store.EtcdConfig // not nil: the store is on etcd, opened with opts.KV

	mu    sync.Mutex
	st    *store.Store
	ready chan struct{} // closed once st is set

	limiters  limiterSet
	outcomes  outcomeCounters
	adminAuth adminAuthCounters

	// streams are the requests in flight, ended when their key stops
	// admitting (streams.go); told by the store's subscription.
	streams     *streamRegistry
	unsubscribe func()
}

func newShared(opts store.Options) *shared {
	return &shared{opts: opts, ready: make(chan struct{}), streams: newStreamRegistry(time.Now)}
}

func (s *shared) sameOptions(o store.Options) bool {
	a, b := s.opts, o
	return a.BlockCache == b.BlockCache && a.CacheEntries == b.CacheEntries && a.NegativeEntries == b.NegativeEntries &&
		a.NegativeTTL == b.NegativeTTL && a.FlushInterval == b.FlushInterval && string(a.Pepper) == string(b.Pepper) &&
		a.EventRetention == b.EventRetention && a.DiskReserve == b.DiskReserve && a.NodeID == b.NodeID
}

// open opens the store once; later calls return it.
func (s *shared) open() (*store.Store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st != nil {
		return s.st, nil
	}
	opts := s.opts
	where := opts.Dir
	if s.etcd != nil {
		kv, err := store.OpenEtcd(*s.etcd)
		if err != nil {
			return nil, fmt.Errorf("open api key store on etcd %v: %w", s.etcd.Endpoints, err)
		}
		opts.KV, where = kv, fmt.Sprintf("etcd %v %s", s.etcd.Endpoints, s.etcd.Prefix)
	}
	st, err := store.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open api key store at %s: %w", where, err)
	}
	s.unsubscribe = st.Subscribe(func(inv store.Invalidation) { s.streams.invalidate(st, inv) })
	s.st = st
	close(s.ready)
	return st, nil
}

// store returns the open store, opening it on first use.
func (s *shared) store() (*store.Store, error) {
	select {
	case <-s.ready:
		return s.st, nil
	default:
		return s.open()
	}
}

// Destruct flushes buffered usage and closes the store when the last
// config using it is cleaned up.
func (s *shared) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == nil {
		return nil
	}
	s.unsubscribe()
	s.streams.close()
	return s.st.Close()
}

// zapLogger sends store diagnostics to Caddy's current default logger; it
// looks the logger up on each call because the store outlives configs.
type zapLogger struct{}

func (zapLogger) Infof(format string, args ...any) {
	caddy.Log().Named("api_keys.store").Sugar().Infof(format, args...)
}

func (zapLogger) Errorf(format string, args ...any) {
	caddy.Log().Named("api_keys.store").Sugar().Errorf(format, args...)
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*shared)(nil)
)
