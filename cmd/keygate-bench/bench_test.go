package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
)

func TestKeyGenerators(t *testing.T) {
	g := garbageKeys(7)(0)
	m := malformedKeys(7)(0)
	seen := map[string]bool{}
	for range 1000 {
		k := g()
		if !store.WellFormed(store.KeyPrefix, k) {
			t.Fatalf("garbage key %q is not well formed", k)
		}
		if seen[k] {
			t.Fatalf("garbage key %q repeated", k)
		}
		seen[k] = true
		if k := m(); store.WellFormed(store.KeyPrefix, k) {
			t.Fatalf("malformed key %q is well formed", k)
		}
	}
	f := fixedKeys(garbageKeys(7), 5, 1)
	distinct := map[string]bool{}
	for w := range 3 {
		p := f(w)
		for range 200 {
			distinct[p()] = true
		}
	}
	if len(distinct) != 5 {
		t.Fatalf("fixedKeys(…, 5): %d distinct keys across workers, want 5", len(distinct))
	}
	secrets := []string{"a", "b", "c"}
	z := zipfKeys(secrets, 1.1, 1)(3)
	u := uniformKeys(secrets, 1)(3)
	for range 100 {
		if k := z(); k == "" {
			t.Fatal("zipf picked nothing")
		}
		if k := u(); k == "" {
			t.Fatal("uniform picked nothing")
		}
	}
}

func TestRoundOrderABBA(t *testing.T) {
	var order string
	for round := 1; round <= 4; round++ {
		order += strings.Join(roundSides(round), "")
	}
	if order != "ABBAABBA" {
		t.Fatalf("rounds 1–4 run %s, want ABBAABBA", order)
	}
}

func TestSummary(t *testing.T) {
	runs := []RunResult{
		{Round: 1, Side: "A", RPS: 100, P99us: 10},
		{Round: 1, Side: "B", RPS: 90, P99us: 12},
		{Round: 2, Side: "A", RPS: 120, P99us: 30},
		{Round: 2, Side: "B", RPS: 120, P99us: 11},
		{Round: 3, Side: "A", RPS: 110, P99us: 20},
		{Round: 3, Side: "B", RPS: 100, P99us: 13},
	}
	s := summarize(runs)
	if s.A.MedianRPS != 110 || s.B.MedianRPS != 100 || s.A.MedianP99us != 20 || s.B.MedianP99us != 12 {
		t.Fatalf("medians: %+v", s)
	}
	if s.RatioRPS != 100.0/110 || s.RatioP99 != 12.0/20 {
		t.Fatalf("ratios: %+v", s)
	}
	if len(s.RoundRatiosRPS) != 3 || s.RoundRatiosRPS[0] != 0.9 || s.RoundRatiosRPS[1] != 1 {
		t.Fatalf("round ratios: %v", s.RoundRatiosRPS)
	}
	if median([]float64{4, 1, 3, 2}) != 2.5 {
		t.Fatal("even median")
	}
}

// TestRunAgainstBinary runs the tool's core end to end against the real
// binary, briefly: a few hundred keys, one round of 300 ms per side, and a
// small miss-path instance.
func TestRunAgainstBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the keygate binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "keygate")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/keygate/keygate/cmd/keygate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keygate: %v\n%s", err, out)
	}
	rep, err := Run(ctx, Config{
		Binary: bin, Keys: 200, Cache: 1000, Big: true, BigKeys: 1500, BigCache: 100,
		Conns: 8, Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Rounds: 1, Flush: 100 * time.Millisecond,
		WorkDir: dir, Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Instances) != 2 {
		t.Fatalf("%d instances", len(rep.Instances))
	}
	got := map[string]*Scene{}
	for _, inst := range rep.Instances {
		if inst.RSSKB <= 0 || inst.ImportKeysPerSec <= 0 || inst.RSSAnonKB <= 0 || inst.RSSFileKB <= 0 || inst.RSSAnonKB+inst.RSSFileKB > inst.RSSKB {
			t.Errorf("instance %s: rss %d KiB (anonymous %d, files %d), import %.0f keys/s", inst.Name, inst.RSSKB,
				inst.RSSAnonKB, inst.RSSFileKB, inst.ImportKeysPerSec)
		}
		for _, sc := range inst.Scenarios {
			got[sc.Name] = sc
			if len(sc.Runs) != 2 {
				t.Fatalf("%s: %d runs", sc.Name, len(sc.Runs))
			}
		}
	}
	for _, name := range []string{ScUniform, ScZipf, ScGarbage, ScMalformed, ScUnknown, ScUnknownAs, ScMiss} {
		sc := got[name]
		if sc == nil {
			t.Fatalf("no scenario %s", name)
		}
		a, b := sc.Summary.A, sc.Summary.B
		if name == ScUnknown || name == ScUnknownAs { // A is Caddy's `respond … 401`
			if a.Status401 == 0 || a.Status401 != a.Requests || a.Errors != 0 {
				t.Errorf("%s A: want only 401s: %+v", name, a)
			}
		} else if a.Status2xx == 0 || a.Status2xx != a.Requests || a.Errors != 0 {
			t.Errorf("%s A: %+v", name, a)
		}
		switch name {
		case ScGarbage, ScMalformed, ScUnknown, ScUnknownAs:
			if b.Status401 == 0 || b.Status401 != b.Requests || b.Errors != 0 {
				t.Errorf("%s B: want only 401s: %+v", name, b)
			}
		default:
			if b.Status2xx == 0 || b.Status2xx != b.Requests || b.Errors != 0 {
				t.Errorf("%s B: want only 2xx: %+v", name, b)
			}
		}
	}
	for _, tg := range rep.Targets {
		if strings.HasPrefix(tg.Metric, "A ") || strings.HasPrefix(tg.Metric, "B ") {
			if !tg.Met {
				t.Errorf("check failed: %+v", tg)
			}
		}
	}
	md, js := filepath.Join(dir, "r.md"), filepath.Join(dir, "r.json")
	if err := WriteResults(rep, md, js); err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(md)
	for _, want := range []string{"B/A req/s", "| main | 200 | 1000 | uniform |", "| big | 1500 | 100 | miss |", "api_key\n\treverse_proxy"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("results file lacks %q", want)
		}
	}
}
