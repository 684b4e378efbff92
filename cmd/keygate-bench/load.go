package main

import (
	"context"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// picker returns the X-API-Key value of the next request of one worker.
// Each worker has its own picker (and random source): pickers need not be
// safe for concurrent use.
type picker func() string

// pickerFactory makes the picker of worker w.
type pickerFactory func(w int) picker

// streams numbers the random streams: every picker made, in any run, draws
// a sequence of its own, so no run replays the keys of an earlier one (which
// would turn the miss path into cache hits).
var streams atomic.Uint64

func newRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, streams.Add(1)))
}

func uniformKeys(secrets []string, seed uint64) pickerFactory {
	return func(int) picker {
		r := newRand(seed)
		return func() string { return secrets[r.IntN(len(secrets))] }
	}
}

func zipfKeys(secrets []string, s float64, seed uint64) pickerFactory {
	return func(int) picker {
		r := newRand(seed)
		z := rand.NewZipf(r, s, 1, uint64(len(secrets)-1))
		return func() string { return secrets[z.Uint64()] }
	}
}

// fixedKeys draws n keys from gen once and then picks uniformly among
// them: a bounded set of distinct keys, shared by every worker.
func fixedKeys(gen pickerFactory, n int, seed uint64) pickerFactory {
	g := gen(0)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = g()
	}
	return uniformKeys(keys, seed)
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// garbageKeys makes a fresh, well-formed (correct layout and checksum) but
// unknown key for every request: each one misses both caches and costs the
// gateway a store read.
func garbageKeys(seed uint64) pickerFactory {
	return func(w int) picker {
		r := newRand(seed ^ 0x9e3779b97f4a7c15)
		buf := make([]byte, 0, 3+22+1+6)
		return func() string {
			b := append(buf[:0], "kg_"...)
			for range 22 {
				b = append(b, base62[r.IntN(62)])
			}
			sum := crc32.ChecksumIEEE(b)
			b = append(b, '_')
			var tmp [6]byte
			for i := 5; i >= 0; i-- {
				tmp[i] = base62[sum%62]
				sum /= 62
			}
			return string(append(b, tmp[:]...))
		}
	}
}

// malformedKeys cycles through keys the gateway rejects without any lookup:
// a bad checksum, a wrong length, a wrong prefix, a character outside base62.
func malformedKeys(seed uint64) pickerFactory {
	return func(w int) picker {
		good := garbageKeys(seed + 1)(w)
		r := newRand(seed)
		return func() string {
			k := []byte(good())
			switch r.IntN(4) {
			case 0: // checksum off by one character
				i := len(k) - 1 - r.IntN(6)
				k[i] = base62[(indexBase62(k[i])+1+r.IntN(61))%62]
			case 1:
				k = k[:len(k)-1-r.IntN(5)]
			case 2:
				k[0] = 'x'
			default:
				k[3+r.IntN(22)] = '-'
			}
			return string(k)
		}
	}
}

func indexBase62(c byte) int {
	for i := 0; i < len(base62); i++ {
		if base62[i] == c {
			return i
		}
	}
	return 0
}

// RunResult is one timed run against one site.
type RunResult struct {
	Round       int     `json:"round"`
	Side        string  `json:"side"` // "A" (reverse_proxy) or "B" (api_key + reverse_proxy)
	Requests    int64   `json:"requests"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`
	P50us       float64 `json:"p50_us"`
	P90us       float64 `json:"p90_us"`
	P99us       float64 `json:"p99_us"`
	MaxUs       float64 `json:"max_us"`
	Status2xx   int64   `json:"status_2xx"`
	Status401   int64   `json:"status_401"`
	StatusOther int64   `json:"status_other"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	// ServerCPUus is keygate's CPU time (user+system) per request, over the
	// run and its settle phase (so B's usage flush is charged to B), in
	// microseconds; B minus A is the gateway's own cost.
	ServerCPUus float64 `json:"server_cpu_us_per_req"`
	// ServerCPURunUs is the same over the timed run alone.
	ServerCPURunUs float64 `json:"server_cpu_us_per_req_in_run"`
	// SettleSeconds is the untimed wait after the run (see settle).
	SettleSeconds float64 `json:"settle_seconds"`
}

// newClient is the load generator's HTTP/1.1 client: keep-alive, exactly
// conns connections per site.
func newClient(conns int) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4 * conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     2 * time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// load runs conns workers against url for d, each sending GET requests back
// to back (a request is started only before the deadline), and measures
// them. It stops by itself at the deadline or when ctx is cancelled.
func load(ctx context.Context, client *http.Client, url string, conns int, d time.Duration, pick pickerFactory) RunResult {
	type worker struct {
		lat                     []time.Duration
		ok, unauth, other, errs int64
		firstErr                string
		_                       [64]byte
	}
	ws := make([]worker, conns)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range ws {
		wg.Add(1)
		go func(w *worker, p picker) {
			defer wg.Done()
			w.lat = make([]time.Duration, 0, 1<<14)
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				w.errs++
				w.firstErr = err.Error()
				return
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				if p != nil {
					req.Header["X-Api-Key"] = []string{p()}
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					w.errs++
					if w.firstErr == "" {
						w.firstErr = err.Error()
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				w.lat = append(w.lat, time.Since(t0))
				switch {
				case resp.StatusCode >= 200 && resp.StatusCode < 300:
					w.ok++
				case resp.StatusCode == http.StatusUnauthorized:
					w.unauth++
				default:
					w.other++
				}
			}
		}(&ws[i], pickOf(pick, i))
	}
	wg.Wait()
	elapsed := time.Since(start)
	var res RunResult
	var all []time.Duration
	for i := range ws {
		w := &ws[i]
		all = append(all, w.lat...)
		res.Status2xx += w.ok
		res.Status401 += w.unauth
		res.StatusOther += w.other
		res.Errors += w.errs
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
	}
	slices.Sort(all)
	res.Requests = int64(len(all))
	res.Seconds = elapsed.Seconds()
	if res.Seconds > 0 {
		res.RPS = float64(res.Requests) / res.Seconds
	}
	res.P50us = micros(percentile(all, 0.50))
	res.P90us = micros(percentile(all, 0.90))
	res.P99us = micros(percentile(all, 0.99))
	if len(all) > 0 {
		res.MaxUs = micros(all[len(all)-1])
	}
	return res
}

func pickOf(f pickerFactory, w int) picker {
	if f == nil {
		return nil
	}
	return f(w)
}

// percentile of sorted samples (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
