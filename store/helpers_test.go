package store

import (
	"errors"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// clock is an injectable, adjustable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

// t0 is the start of every test clock: a fixed instant so that results do
// not depend on when the tests run.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// kvFactories are the KV implementations the store's tests run on: memStore
// opens its store with the one testKV names (etcd_suite_test.go runs a set
// of tests with each). The etcd one is a node with its own usage records.
var kvFactories = map[string]func(t testing.TB, o *Options){
	"pebble": nil, // memStore's own in-memory Pebble
	"etcd": func(t testing.TB, o *Options) {
		o.KV, o.NodeID = newEtcdKV(t), "node-1"
	},
}

// testEachKV runs test once on each KV implementation (named by backend),
// with a fresh store.
func testEachKV(t *testing.T, test func(t *testing.T, backend string, s *Store, clk *clock)) {
	for _, name := range []string{"pebble", "etcd"} {
		t.Run(name, func(t *testing.T) {
			clk := newClock()
			s := memStore(t, clk, func(o *Options) {
				if f := kvFactories[name]; f != nil {
					f(t, o)
				}
			})
			test(t, name, s, clk)
		})
	}
}

// memPebble opens an in-memory Pebble KV, for a test to wrap (to make
// writes fail, count or block them) and give memStore as Options.KV.
func memPebble(t testing.TB) *pebbleKV {
	t.Helper()
	kv, err := openPebble("db", vfs.NewMem(), nopLogger{}, 8<<20, mergeValues)
	mustNil(t, err)
	return kv
}

// testKV is the factory memStore uses (nil: in-memory Pebble, or etcd
// with KEYGATE_STORE_TESTS=etcd).
var testKV func(t testing.TB, o *Options)

// onEtcd: `KEYGATE_STORE_TESTS=etcd go test ./store/` (make test runs it)
// runs every store test on the etcd KV, but those of Pebble itself
// (pebbleOnly).
var onEtcd = os.Getenv("KEYGATE_STORE_TESTS") == "etcd"

// pebbleOnly marks a test of Pebble itself (disk space, its own failures,
// record sizes etcd refuses) or one that does by hand what the etcd watch
// does at the same moment: the etcd pass leaves it to the Pebble pass.
func pebbleOnly(t *testing.T) {
	if onEtcd {
		t.Skip("a test of the Pebble KV; it runs in the Pebble pass of make test")
	}
}

// memStore opens a store on an in-memory filesystem (or on testKV) with an
// injected clock and no background flusher.
func memStore(t testing.TB, clk *clock, tweak ...func(*Options)) *Store {
	t.Helper()
	opts := Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1}
	switch {
	case testKV != nil:
		testKV(t, &opts)
	case onEtcd:
		kvFactories["etcd"](t, &opts)
	}
	if clk != nil {
		opts.Now = clk.Now
	}
	for _, f := range tweak {
		f(&opts)
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// diskStore opens (or reopens) a store in dir on the real filesystem (or
// on testKV).
func diskStore(t testing.TB, dir string, clk *clock, tweak ...func(*Options)) *Store {
	t.Helper()
	opts := Options{Dir: dir, FlushInterval: -1}
	if testKV != nil {
		testKV(t, &opts)
	}
	if clk != nil {
		opts.Now = clk.Now
	}
	for _, f := range tweak {
		f(&opts)
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// enable makes sure tenant exists and has API keys enabled, with a generous
// per-user limit unless the test sets its own.
func enable(t testing.TB, s *Store, tenant string) {
	t.Helper()
	if _, err := s.GetTenant(tenant); KindOf(err) == KindNotFound {
		if _, err := s.CreateTenant("op", TenantInput{ID: tenant}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateSettings("op", tenant, SettingsPatch{APIKeysEnabled: Some(true), MaxKeysPerUser: Some(MaxKeysPerUserMax)}); err != nil {
		t.Fatal(err)
	}
}

func mustKey(t testing.TB, s *Store, tenant, owner string, in KeyInput) (*Key, string) {
	t.Helper()
	if in.Name == "" {
		in.Name = "key of " + owner
	}
	key, secret, err := s.CreateKey("op", tenant, owner, in)
	if err != nil {
		t.Fatalf("CreateKey(%s, %s, %+v): %v", tenant, owner, in, err)
	}
	return key, secret
}

// wantErr asserts err is a domain error of the kind (and code, if given).
func wantErr(t testing.TB, err error, kind Kind, code string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("want error of kind %d (%s), got nil", kind, code)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error of kind %d, got %T: %v", kind, err, err)
	}
	if e.Kind != kind {
		t.Fatalf("want kind %d, got %d: %v", kind, e.Kind, err)
	}
	if code != "" && e.Code != code {
		t.Fatalf("want code %q, got %q: %v", code, e.Code, err)
	}
	return e
}

// wantFields asserts err is a validation error naming exactly the fields.
func wantFields(t testing.TB, err error, fields ...string) {
	t.Helper()
	e := wantErr(t, err, KindInvalid, "invalid")
	got := make([]string, 0, len(e.Fields))
	for f, problem := range e.Fields {
		got = append(got, f)
		if problem == "" {
			t.Errorf("field %s has an empty problem", f)
		}
	}
	sort.Strings(got)
	want := append([]string(nil), fields...)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("want invalid fields %v, got %v (%v)", want, got, err)
	}
}

func mustNil(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

func dur(d time.Duration) *Duration { v := Duration(d); return &v }

// verdict verifies and returns only the verdict, failing on store errors.
func verdict(t testing.TB, s *Store, tenant, secret string, now time.Time) Verdict {
	t.Helper()
	_, v, err := s.Verify(tenant, secret, now)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return v
}

var verdictNames = map[Verdict]string{VerdictValid: "valid", VerdictInvalid: "invalid", VerdictRevoked: "revoked", VerdictExpired: "expired"}

func vname(v Verdict) string {
	if n, ok := verdictNames[v]; ok {
		return n
	}
	return "?"
}

// allEvents walks every page of a tenant's events.
func allEvents(t testing.TB, s *Store, tenant string, q EventQuery) []*Event {
	t.Helper()
	var out []*Event
	for {
		page, next, err := s.ListEvents(tenant, q)
		mustNil(t, err)
		out = append(out, page...)
		if next == "" {
			return out
		}
		q.Cursor = next
	}
}

func memFS() vfs.FS { return vfs.NewMem() }

// memStoreFS opens a store on a given in-memory filesystem (to reopen it).
func memStoreFS(t testing.TB, fs vfs.FS, clk *clock, pepper []byte) *Store {
	t.Helper()
	s, err := Open(Options{Dir: "db", FS: fs, FlushInterval: -1, Now: clk.Now, Pepper: pepper})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// hookKV runs its hook's fn once, at the first read of the hook's key,
// before or after the read: it puts another writer's commit between two
// steps of a store call. (A call that holds wmu meanwhile needs fn to
// write through the KV itself, as another node would.)
type hookKV struct {
	KV
	hook atomic.Pointer[readHook]
}

type readHook struct {
	key    string
	before bool
	fn     func()
	ran    atomic.Bool
}

func (k *hookKV) Get(key []byte) ([]byte, error) {
	h := k.hook.Load()
	fire := h != nil && string(key) == h.key && h.ran.CompareAndSwap(false, true)
	if fire && h.before {
		h.fn()
	}
	v, err := k.KV.Get(key)
	if fire && !h.before {
		h.fn()
	}
	return v, err
}
