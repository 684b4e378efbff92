package store

import (
	"fmt"
	"math/rand/v2"
	"path"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestReadPaths(t *testing.T) {
	cases := []struct {
		in              string
		literal, normal string // "" = refused
	}{
		{"", "/", "/"},
		{"/", "/", "/"},
		{"/orders/1", "/orders/1", "/orders/1"},
		{"/orders/", "/orders/", "/orders/"},
		{"/orders/1;jsessionid=x", "/orders/1;jsessionid=x", "/orders/1"},
		{"/orders;v=2/1", "/orders;v=2/1", "/orders/1"},
		{"/orders//1", "/orders//1", "/orders/1"},
		{"//orders/1", "//orders/1", "/orders/1"},
		{"/./orders/1", "/./orders/1", "/orders/1"},
		{"/orders/.", "/orders/.", "/orders/"},
		{"/orders/;x", "/orders/;x", "/orders/"},
		{"/orders/a%2Fb", "/orders/a%2Fb", "/orders/a/b"},
		{"/orders/a%2fb", "/orders/a%2Fb", "/orders/a/b"},
		{"/orders/a%5Cb", `/orders/a\b`, "/orders/a/b"},
		{`/orders/a\b`, `/orders/a\b`, "/orders/a/b"},
		{"/caf%C3%A9/x%20y", "/café/x y", "/café/x y"},
		{"/orders/%2e", "/orders/.", "/orders/"},
		{"/a%25b", "/a%b", "/a%b"}, // a literal % not followed by an escape of a dangerous byte
		// Refused: ".." in any reading, control characters, double encoding, bad escapes.
		{"/orders/..;/admin", "", ""},
		{"/orders/1/..;/..;/admin", "", ""},
		{"/orders/..%5cadmin", "", ""},
		{"/orders/..%5Cadmin", "", ""},
		{`/orders/..\admin`, "", ""},
		{"/orders/%2e%2e/admin", "", ""},
		{"/orders/%2E./admin", "", ""},
		{"/orders/..", "", ""},
		{"/orders/1/..", "", ""},
		{"/orders/..;x", "", ""},
		{"/orders/x%2F..%2F..%2Fadmin", "", ""},
		{`/orders/x\y/../../admin`, "", ""},
		{"/orders/%252e%252e/admin", "", ""},
		{"/orders/x%252Fadmin", "", ""},
		{"/orders/x%255c", "", ""},
		{"/orders/x%2525", "", ""},
		{"/orders/x%2500", "", ""},
		{"/orders/x%00", "", ""},
		{"/orders/x%0a", "", ""},
		{"/orders/x\x00", "", ""},
		{"/orders/x%zz", "", ""},
		{"/orders/x%4", "", ""},
		{"orders/1", "", ""},
		{"*", "", ""},
		{"/" + strings.Repeat("a", MaxMatchPathLen), "", ""},
	}
	for _, c := range cases {
		lit, norm, ok := readPaths(c.in)
		if ok != (c.literal != "") || lit != c.literal || norm != c.normal {
			t.Errorf("readPaths(%q) = %q, %q, %v; want %q, %q", c.in, lit, norm, ok, c.literal, c.normal)
		}
	}
	long := "/" + strings.Repeat("a", MaxMatchPathLen-1)
	if lit, norm, ok := readPaths(long); !ok || lit != long || norm != long {
		t.Errorf("a path of exactly MaxMatchPathLen bytes is refused")
	}
}

// A plain path is its own reading: nothing allocated on the hot path.
func TestReadPathsPlainDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _, _, _ = readPaths("/orders/17/items/") }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// The paths of issue #9: a group allowed GET /orders/* let them through.
func TestGroupPathsCannotStepOut(t *testing.T) {
	s := memStore(t, newClock())
	_, err := s.PutGroup("op", DefaultTenant, "orders", GroupInput{Rules: []Rule{
		{Methods: []string{"GET"}, Paths: []string{"/orders/*"}},
		{Methods: []string{"GET"}, Paths: []string{"/items/*/price", "/health", "/"}},
	}})
	mustNil(t, err)
	g := s.GroupView(DefaultTenant, "orders")
	cases := []struct {
		path string
		want bool
	}{
		{"/orders/", true}, // path.Clean used to drop the slash: Caddy's matcher has /orders/* match it
		{"/orders/1", true},
		{"/orders/1/items/2", true},
		{"/orders//1", true},
		{"/orders/./1", true},
		{"/orders/1;jsessionid=abc", true},
		{"/orders/a%2Fb", true},
		{"/orders/caf%C3%A9", true},
		{"/items/7/price", true},
		{"/items/7;v=1/price", true},
		{"/health", true},
		{"/", true},
		{"", true},
		// The bypasses of the issue, and their relatives.
		{"/orders/..;/admin", false},
		{"/orders/1/..;/..;/admin", false},
		{"/orders/..%5cadmin", false},
		{`/orders/..\admin`, false},
		{"/orders/..%5Cadmin", false},
		{"/orders/%2e%2e/admin", false},
		{"/orders/%2e%2e", false},
		{"/orders/..", false},
		{"/orders/1/..", false},
		{"/orders/x%2F..%2F..%2Fadmin", false},
		{"/orders/%252e%252e/admin", false},
		{"/orders/x%00", false},
		{"/orders/x\x00/../admin", false},
		{`/orders/x\y/../../admin`, false},
		// Readings that disagree about where /orders/ is.
		{"/orders%2F1", false}, // one segment "orders/1" for an upstream that keeps %2F
		{`/orders\1`, false},   // one segment for an upstream that keeps "\"
		{"/orders;x/1", false}, // "orders;x" for an upstream without ;parameters
		{"//orders/1", false},  // literally outside /orders/
		{"/./orders/1", false}, // literally outside /orders/
		{"/items/a%2Fb/price", false},
		{`/items/a\b/price`, false},
		{"/items//price", false},
		{"/health;x", false},
		{"/health/", false},
		{"/orders", false},
		{"/admin", false},
		{"/orders/" + strings.Repeat("a", MaxMatchPathLen), false},
	}
	for _, c := range cases {
		if got := g.Allows("GET", c.path); got != c.want {
			t.Errorf("GET %q = %v, want %v", c.path, got, c.want)
		}
	}
	// A rule without paths allows every path, stepping out or not.
	_, err = s.PutGroup("op", DefaultTenant, "deleters", GroupInput{Rules: []Rule{{Methods: []string{"DELETE"}}}})
	mustNil(t, err)
	if !s.GroupView(DefaultTenant, "deleters").Allows("DELETE", "/orders/..;/admin") {
		t.Error("a rule without paths restricted the path")
	}
}

// For "*"-only patterns and plain paths, matching is exactly Caddy's path
// matcher: a trailing "*" alone is a prefix, otherwise path.Match.
func TestPathPatternAgreesWithPathMatch(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	gen := func(alphabet string, n int) string {
		var b strings.Builder
		b.WriteByte('/')
		for range rnd.IntN(n) {
			b.WriteByte(alphabet[rnd.IntN(len(alphabet))])
		}
		return b.String()
	}
	checked, multi := 0, 0
	for range 200_000 {
		// Any pattern over this alphabet, also those validation refuses
		// (several "*" in a segment, "//"): stored ones must match as before.
		p, q := gen("ab/*", 10), gen("ab/", 12)
		if !plainPath(q) {
			continue
		}
		checked++
		var want bool
		if strings.IndexByte(p, '*') == len(p)-1 {
			want = strings.HasPrefix(q, p[:len(p)-1])
		} else {
			want, _ = path.Match(p, q)
		}
		if checkPathPattern(p) != "" && want {
			multi++
		}
		pp := compilePattern(p)
		v := newPathView(q, pp.nsegs, nil)
		if got := pp.match(&v); got != want {
			t.Fatalf("pattern %q, path %q: %v, want %v", p, q, got, want)
		}
	}
	if multi < 100 {
		t.Fatalf("only %d matches of patterns validation refuses", multi)
	}
	if checked < 10_000 {
		t.Fatalf("only %d pairs checked", checked)
	}
}

func TestGroupPathBounds(t *testing.T) {
	s := memStore(t, newClock())
	paths := func(n int, p string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s%d", p, i)
		}
		return out
	}
	maxed := make([]Rule, RulesMax)
	for i := range maxed {
		maxed[i] = Rule{Methods: []string{"GET"}, Paths: paths(GroupRuleEntryMax, "/"+strings.Repeat("p", PathPatternMax-4))}
	}
	_, err := s.PutGroup("op", DefaultTenant, "maxed", GroupInput{Rules: maxed})
	mustNil(t, err) // exactly at every bound

	p256 := "/" + strings.Repeat("é", PathPatternMax-1) // characters, not bytes
	_, err = s.PutGroup("op", DefaultTenant, "wide", GroupInput{Rules: []Rule{{Paths: []string{p256}}}})
	mustNil(t, err)

	bad := []struct {
		name  string
		rules []Rule
		field string
	}{
		{"65 rules", make([]Rule, RulesMax+1), "rules"},
		{"65 paths", []Rule{{Paths: paths(GroupRuleEntryMax+1, "/p")}}, "rules[0].paths"},
		{"65 methods", []Rule{{Methods: strings.Split(strings.Repeat("GET,", GroupRuleEntryMax+1), ",")[:GroupRuleEntryMax+1]}}, "rules[0].methods"},
		{"257 chars", []Rule{{Paths: []string{"/a", "/b", "/c", p256 + "x"}}}, "rules[0].paths[3]"},
		{"question mark", []Rule{{}, {Paths: []string{"/files/report-?.csv"}}}, "rules[1].paths[0]"},
		{"class", []Rule{{Paths: []string{"/v[12]/*"}}}, "rules[0].paths[0]"},
		{"backslash", []Rule{{Paths: []string{`/a\*`}}}, "rules[0].paths[0]"},
		{"semicolon", []Rule{{Paths: []string{"/a;b"}}}, "rules[0].paths[0]"},
		{"percent", []Rule{{Paths: []string{"/caf%C3%A9"}}}, "rules[0].paths[0]"},
		{"dot-dot", []Rule{{Paths: []string{"/orders/../admin"}}}, "rules[0].paths[0]"},
		{"dot", []Rule{{Paths: []string{"/orders/./x"}}}, "rules[0].paths[0]"},
		{"trailing dot", []Rule{{Paths: []string{"/orders/."}}}, "rules[0].paths[0]"},
		{"double slash", []Rule{{Paths: []string{"//orders"}}}, "rules[0].paths[0]"},
		{"control", []Rule{{Paths: []string{"/a\x00"}}}, "rules[0].paths[0]"},
		{"two stars", []Rule{{Paths: []string{"/files/*report*"}}}, "rules[0].paths[0]"},
		{"invalid UTF-8", []Rule{{Paths: []string{"/a\xff"}}}, "rules[0].paths[0]"},
		{"relative", []Rule{{Paths: []string{"orders/*"}}}, "rules[0].paths[0]"},
	}
	for _, c := range bad {
		_, err := s.PutGroup("op", DefaultTenant, "g", GroupInput{Rules: c.rules})
		wantFields(t, err, c.field)
		if e := err.(*Error); len(e.Fields[c.field]) < 10 {
			t.Errorf("%s: unclear problem %q", c.name, e.Fields[c.field])
		}
	}
	_, err = s.PutGroup("op", DefaultTenant, "g", GroupInput{Rules: []Rule{{Paths: []string{"/a?"}}}})
	if e := err.(*Error); !strings.Contains(e.Fields["rules[0].paths[0]"], `"*"`) {
		t.Errorf("the ? problem does not say what to use instead: %q", e.Fields["rules[0].paths[0]"])
	}
}

type captureLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *captureLog) Infof(f string, a ...any) { l.Errorf(f, a...) }
func (l *captureLog) Errorf(f string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(f, a...))
}

// Groups stored before the bounds (up to 100 rules × 100 paths × 1024
// bytes, path.Match syntax) still load, and match in linear time: the
// issue's 100 patterns against a 16 KB path took 3.2 s with path.Match.
func TestLegacyGroupStillLoads(t *testing.T) {
	pebbleOnly(t)
	log := &captureLog{}
	s := memStore(t, newClock(), func(o *Options) { o.Logger = log })
	legacy := Group{Name: "legacy", Tenant: DefaultTenant}
	for i := range 99 {
		r := Rule{}
		for range 100 {
			r.Paths = append(r.Paths, "/*"+strings.Repeat("a", 1000)+"b")
		}
		if i == 0 {
			r.Paths[0] = "/files/report-?.csv" // path.Match syntax, no longer accepted
		}
		legacy.Rules = append(legacy.Rules, r)
	}
	legacy.Rules = append(legacy.Rules, Rule{Methods: []string{"GET"}, Paths: []string{"/orders/*"}})
	var b Batch
	b.Set(k(pGroup+DefaultTenant, "legacy"), mustJSON(legacy))
	mustNil(t, s.kv.Apply(&b, true)) // a raw write: its effects are decoded from its keys

	g := s.GroupView(DefaultTenant, "legacy")
	if g == nil {
		t.Fatal("legacy group not loaded")
	}
	if !g.Allows("GET", "/orders/1") || g.Allows("GET", "/orders/..;/admin") || g.Allows("GET", "/files/report-1.csv") {
		t.Error("legacy group matches wrongly")
	}
	log.mu.Lock()
	logged := strings.Join(log.lines, "\n")
	log.mu.Unlock()
	if !strings.Contains(logged, `group "legacy" of tenant "default": 1 path pattern(s)`) {
		t.Errorf("unsupported pattern not logged: %q", logged)
	}
	long := "/" + strings.Repeat("a", 16<<10-1)
	start := time.Now()
	if g.Allows("POST", long) {
		t.Fatal("adversarial path allowed")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("9,900 adversarial patterns against a 16 KB path took %v", d)
	}
}

// worstGroup is the most expensive group the bounds allow for one shape of
// pattern: RulesMax rules × GroupRuleEntryMax paths, each PathPatternMax
// bytes, none matching, all tried on every request.
func worstGroup(pattern func(i int) string) *GroupView {
	g := &Group{Name: "worst"}
	for i := range RulesMax {
		r := Rule{}
		for j := range GroupRuleEntryMax {
			r.Paths = append(r.Paths, pattern(i*GroupRuleEntryMax+j))
		}
		g.Rules = append(g.Rules, r)
	}
	return compileGroup(g)
}

// BenchmarkGroupAllowsWorst: the worst allowed group against a 16 KB path.
func BenchmarkGroupAllowsWorst(b *testing.B) {
	fill := func(n int, s string) string { return strings.Repeat(s, n/len(s)+1)[:n] }
	pad := func(prefix, suffix string) string {
		return prefix + fill(PathPatternMax-len(prefix)-len(suffix), "a") + suffix
	}
	path16k := "/" + fill(MaxMatchPathLen-1, "a")
	segs16k := strings.Repeat("/"+fill(127, "a"), MaxMatchPathLen/128) // 128 segments
	segs85 := strings.Repeat("/"+fill(191, "a"), 85)                   // 16 KB in 85 segments
	escaped16k := "/" + strings.Repeat("a%61", (MaxMatchPathLen-1)/4)
	shapes := []struct {
		name    string
		pattern func(i int) string
		path    string
		legacy  bool // no longer accepted, may still be stored
	}{
		{"suffix", func(int) string { return pad("/*", "b") }, path16k, false}, // the issue's shape
		{"prefix", func(int) string { return pad("/", "b*") }, path16k, false},
		{"segments", func(int) string { return "/" + fill(PathPatternMax-2, "*/") + "b" }, segs16k, false},
		{"segment-ends", func(int) string { return "/" + strings.Repeat("a*/", 84) + "b" }, segs85, false},
		{"escaped-path", func(int) string { return pad("/*", "b") }, escaped16k, false},
		{"legacy-middle-253", func(int) string { return pad("/*", "b*") }, path16k, true},
		{"legacy-middle-16", func(int) string { return "/*" + fill(15, "a") + "b*" }, path16k, true},
	}
	for _, sh := range shapes {
		g := worstGroup(sh.pattern)
		if err := checkPathPattern(sh.pattern(0)); (err == "") == sh.legacy {
			b.Fatalf("%s: pattern allowed: %q", sh.name, err)
		}
		if g.Allows("GET", sh.path) {
			b.Fatalf("%s: allowed", sh.name)
		}
		b.Run(sh.name, func(b *testing.B) {
			for b.Loop() {
				g.Allows("GET", sh.path)
			}
		})
	}
}

// BenchmarkIssueCase: issue #9's group (100 patterns "/*" + "a"×1000 + "b")
// against a 16 KB path, with the old path.Match and with this matcher.
func BenchmarkIssueCase(b *testing.B) {
	pattern := "/*" + strings.Repeat("a", 1000) + "b"
	long := "/" + strings.Repeat("a", 16<<10-1)
	b.Run("path.Match", func(b *testing.B) {
		for b.Loop() {
			for range 100 {
				if ok, _ := path.Match(pattern, long); ok {
					b.Fatal("matched")
				}
			}
		}
	})
	g := &Group{Name: "issue", Rules: []Rule{{}}}
	for range 100 {
		g.Rules[0].Paths = append(g.Rules[0].Paths, pattern)
	}
	gv := compileGroup(g)
	b.Run("new", func(b *testing.B) {
		for b.Loop() {
			if gv.Allows("GET", long) {
				b.Fatal("matched")
			}
		}
	})
}

// FuzzReadPaths: readPaths never panics, and what it accepts has no
// segment an upstream could read as "..".
func FuzzReadPaths(f *testing.F) {
	for _, s := range []string{"/orders/1", "/orders/..;/admin", "/a%2Fb/%2e", `/a\b;c/`, "//x/./y", "/%252e", "/%zz", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, escaped string) {
		lit, norm, ok := readPaths(escaped)
		if !ok {
			return
		}
		for _, v := range []string{lit, norm} {
			if !strings.HasPrefix(v, "/") {
				t.Fatalf("%q: reading %q", escaped, v)
			}
		}
		if strings.ContainsAny(norm, `\;`) || strings.Contains(norm, "//") {
			t.Fatalf("%q: normal reading %q", escaped, norm)
		}
		for seg := range strings.SplitSeq(strings.NewReplacer(`\`, "/", "%2F", "/").Replace(lit), "/") {
			seg, _, _ = strings.Cut(seg, ";")
			if seg == ".." || strings.EqualFold(seg, "%2e%2e") {
				t.Fatalf("%q: accepted with a dot-dot segment in %q", escaped, lit)
			}
		}
		if c := path.Clean(norm); c != strings.TrimSuffix(norm, "/") && c != norm {
			t.Fatalf("%q: normal reading %q is not clean (%q)", escaped, norm, c)
		}
	})
}
