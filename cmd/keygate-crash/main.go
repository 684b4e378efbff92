// Command keygate-crash is keygate's crash-durability test: it runs the
// real binary on one key store, changes keys through the admin API from
// several concurrent workers, kills the process with SIGKILL at a random
// moment, restarts it on the same store and checks that every change the
// API acknowledged (2xx) survived — keys created, revoked (also at the
// gateway: 401 key_revoked), rotated (new secret admitted, old one 401) and
// edited — then does it again on the accumulated store.
//
//	go run ./cmd/keygate-crash --iterations 20 [--bin bin/keygate] [--seed N]
//
// With --etcd the store is etcd instead (SPEC section 7): the tool starts an
// etcd server on loopback (the etcd binary must be on PATH), keygate runs
// with an etcd block, and the etcd server outlives the kills, except every
// --kill-etcd-every-th iteration, which kills it too (first, with writes in
// flight) and restarts it on its data. --etcd-endpoint uses an existing etcd
// instead (a fresh prefix under /keygate-crash/; never killed).
//
// It exits non-zero, listing what was lost, on any violation. `make
// test-crash` runs it; TestCrashShort runs 3 iterations in `go test`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func main() {
	cfg := config{Logf: func(format string, args ...any) { fmt.Printf(format+"\n", args...) }}
	var seed int64
	var keep, withEtcd bool
	var etcdEndpoint string
	var killEtcdEvery int
	flag.StringVar(&cfg.Bin, "bin", "", "keygate binary to test (default: build ./cmd/keygate into a temporary directory)")
	flag.IntVar(&cfg.Iterations, "iterations", 20, "crashes (each followed by a restart and a full check)")
	flag.Int64Var(&seed, "seed", 0, "random seed for the changes and kill delays (0: from the clock)")
	flag.IntVar(&cfg.Workers, "workers", 4, "concurrent workers changing keys")
	flag.DurationVar(&cfg.MinDelay, "min-delay", 50*time.Millisecond, "shortest time before the kill")
	flag.DurationVar(&cfg.MaxDelay, "max-delay", 800*time.Millisecond, "longest time before the kill")
	flag.BoolVar(&keep, "keep", false, "keep the scratch directory (store, Caddyfile, logs) even on success")
	flag.BoolVar(&withEtcd, "etcd", false, "keep the keys in an etcd server started on loopback (etcd on PATH) instead of Pebble")
	flag.StringVar(&etcdEndpoint, "etcd-endpoint", "", "keep the keys in this existing etcd (host:port), under a fresh prefix")
	flag.IntVar(&killEtcdEvery, "kill-etcd-every", 0, "with --etcd: every Nth iteration kills the etcd server too (0: never)")
	flag.Parse()
	if flag.NArg() > 0 || cfg.Iterations < 1 || cfg.Workers < 1 || cfg.MinDelay < 0 || cfg.MaxDelay < cfg.MinDelay ||
		killEtcdEvery < 0 || (withEtcd && etcdEndpoint != "") || (killEtcdEvery > 0 && !withEtcd) {
		flag.Usage()
		os.Exit(2)
	}
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	cfg.Seed = uint64(seed)

	dir, err := os.MkdirTemp("", "keygate-crash-")
	if err != nil {
		fatal(err)
	}
	cfg.Dir = dir
	if cfg.Bin == "" {
		fmt.Println("crash test: building ./cmd/keygate …")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		cfg.Bin, err = buildKeygate(ctx, ".", dir)
		cancel()
		if err != nil {
			fatal(err)
		}
	} else if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		fatal(err)
	}
	stopEtcd := func() {}
	switch {
	case withEtcd:
		srv, err := startEtcd()
		if err != nil {
			fatal(err)
		}
		stopEtcd = srv.Stop
		cfg.Etcd = &etcdCluster{Endpoint: srv.Endpoint, Prefix: runPrefix(cfg.Seed), Server: srv, KillEvery: killEtcdEvery}
	case etcdEndpoint != "":
		cfg.Etcd = &etcdCluster{Endpoint: etcdEndpoint, Prefix: runPrefix(cfg.Seed)}
	}
	where := "Pebble"
	if e := cfg.Etcd; e != nil {
		where = "etcd " + e.Endpoint + " " + e.Prefix
	}
	fmt.Printf("crash test: %s on %s, %d iterations, %d workers, seed %d, scratch %s\n", cfg.Bin, where, cfg.Iterations, cfg.Workers, seed, dir)

	start := time.Now()
	res, err := run(cfg)
	stopEtcd()
	if err != nil {
		if res != nil {
			for i, v := range res.Violations {
				if i == 30 {
					fmt.Fprintf(os.Stderr, "… and %d more violations\n", len(res.Violations)-i)
					break
				}
				fmt.Fprintln(os.Stderr, "VIOLATION:", v)
			}
		}
		fmt.Fprintf(os.Stderr, "crash test FAILED (seed %d) after %d/%d iterations: %v\nstore, Caddyfile and logs kept in %s\n",
			seed, passed(res), cfg.Iterations, err, dir)
		os.Exit(1)
	}
	fmt.Printf("%s in %v\n", res.Summary(cfg.Iterations), time.Since(start).Round(time.Second/10))
	if keep {
		fmt.Println("scratch directory kept:", dir)
	} else {
		_ = os.RemoveAll(dir)
	}
}

func passed(r *result) int {
	if r == nil {
		return 0
	}
	return r.Passed
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "keygate-crash:", err)
	os.Exit(1)
}
