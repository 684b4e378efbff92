// Command keygate-bench is the load benchmark of the gateway against plain
// Caddy: one keygate process serves site A (reverse_proxy alone) and site B
// (api_key in front of the identical reverse_proxy block), both to a tiny
// in-process upstream on loopback; it imports N keys into a fresh store
// through keygate's own import endpoint (POST /v1/tenants/default/keys/import),
// restarts keygate on it, runs rounds in A B B A order with a fixed number of
// keep-alive connections for a fixed time per run, and reports throughput,
// p50/p99 latency, the B/A ratios, keygate's own CPU time per request on
// each side (from /proc; the load generator's is not counted), import speed
// and keygate's RSS.
//
//	go run ./cmd/keygate-bench                 # 10k keys: uniform, zipf, garbage, malformed, unknown401, unknown401same
//	go run ./cmd/keygate-bench --big           # plus 1M keys with a 100k cache (miss path)
//	go run ./cmd/keygate-bench --quick         # about a minute, sanity only
//	go run ./cmd/keygate-bench --profile prof  # plus one CPU-profiled A,B pair per scenario
//
// Everything listens on 127.0.0.1 only and stops by itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	var cfg Config
	var scenarios, out, jsonOut string
	var quick bool
	var maxTime time.Duration
	flag.StringVar(&cfg.Binary, "bin", "bin/keygate", "keygate binary (built with `go build -o <bin> ./cmd/keygate` if missing)")
	flag.IntVar(&cfg.Keys, "keys", 10_000, "keys in the store of the main instance")
	flag.Int64Var(&cfg.Cache, "cache", 100_000, "api_keys cache entries of the main instance")
	flag.StringVar(&scenarios, "scenarios", "uniform,zipf,garbage,malformed,unknown401,unknown401same", "scenarios of the main instance, in order (none: only --big)")
	flag.BoolVar(&cfg.Big, "big", false, "also run the miss-path scenario: --big-keys keys with a --big-cache cache, uniform")
	flag.IntVar(&cfg.BigKeys, "big-keys", 1_000_000, "keys of the big instance")
	flag.Int64Var(&cfg.BigCache, "big-cache", 100_000, "api_keys cache entries of the big instance")
	flag.Int64Var(&cfg.BlockCache, "block-cache", 0, "api_keys block_cache in MiB of both instances (0: the module's default)")
	flag.IntVar(&cfg.Conns, "conns", 50, "concurrent keep-alive connections")
	flag.DurationVar(&cfg.Duration, "duration", 5*time.Second, "duration of each timed run")
	flag.DurationVar(&cfg.Warmup, "warmup", time.Second, "untimed warm-up per side before each scenario")
	flag.IntVar(&cfg.Rounds, "rounds", 3, "A,B rounds per scenario (A B, then B A, …)")
	flag.Float64Var(&cfg.ZipfS, "zipf-s", 1.1, "Zipf exponent s (> 1)")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the key pickers")
	flag.IntVar(&cfg.IdleConns, "upstream-idle-conns", 0, "keepalive_idle_conns_per_host of both reverse_proxy blocks (0: Caddy's default)")
	flag.DurationVar(&cfg.Flush, "flush-interval", 5*time.Second, "api_keys flush_interval; after each B run the bench waits this long (plus until keygate is idle) so the usage flush B caused is charged to B")
	flag.StringVar(&cfg.KeygateLog, "keygate-log", "", "save keygate's output (e.g. GODEBUG=gctrace=1 lines) as <name>-<instance>.log")
	flag.StringVar(&cfg.ProfileDir, "profile", "", "directory: run keygate with admin on loopback and save a CPU profile of one extra A and B run per scenario")
	flag.StringVar(&cfg.ImportProf, "import-cpuprofile", "", "write a CPU profile of keygate during the first key import to this file")
	flag.IntVar(&cfg.ImportChunk, "import-chunk", 10_000, "keys per call of the import endpoint (1–10000)")
	flag.StringVar(&cfg.WorkDir, "workdir", "", "parent of the temporary directory (default: the system's)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory (stores, Caddyfiles)")
	flag.StringVar(&out, "out", "bench-results.md", "markdown results file")
	flag.StringVar(&jsonOut, "json", "", "JSON results file (default: --out with .json)")
	flag.BoolVar(&quick, "quick", false, "sanity run of about a minute: 2 rounds of 1 s runs, 300 ms warm-up, 1 s flush interval, big instance 100k keys / 10k cache")
	flag.DurationVar(&maxTime, "max-time", 20*time.Minute, "hard limit of the whole session")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "keygate-bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["duration"] {
			cfg.Duration = time.Second
		}
		if !set["warmup"] {
			cfg.Warmup = 300 * time.Millisecond
		}
		if !set["rounds"] {
			cfg.Rounds = 2
		}
		if !set["flush-interval"] {
			cfg.Flush = time.Second
		}
		if !set["big-keys"] {
			cfg.BigKeys = 100_000
		}
		if !set["big-cache"] {
			cfg.BigCache = 10_000
		}
	}
	cfg.Scenarios = splitList(scenarios)
	if scenarios == "none" {
		cfg.Scenarios = []string{} // only the big instance
	}
	if jsonOut == "" {
		jsonOut = strings.TrimSuffix(out, filepath.Ext(out)) + ".json"
	}
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}

	ctx, cancel := context.WithTimeout(context.Background(), maxTime)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep, err := Run(ctx, cfg)
	if rep != nil && len(rep.Instances) > 0 {
		if rep.Targets == nil {
			rep.Targets = evaluate(rep)
		}
		fmt.Println()
		fmt.Print(SummaryTable(rep))
		fmt.Println()
		fmt.Print(TargetTable(rep))
		fmt.Println()
		fmt.Print(InstanceTable(rep))
		if werr := WriteResults(rep, out, jsonOut); werr != nil {
			fmt.Fprintf(os.Stderr, "keygate-bench: write results: %v\n", werr)
			os.Exit(1)
		}
		fmt.Printf("\nresults: %s, %s\n", out, jsonOut)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "keygate-bench: %v\n", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
