package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// SideStats are the medians over rounds of one side of a scenario.
type SideStats struct {
	MedianRPS   float64 `json:"median_rps"`
	MedianP50us float64 `json:"median_p50_us"`
	MedianP99us float64 `json:"median_p99_us"`
	MedianCPUus float64 `json:"median_server_cpu_us_per_req"`
	Requests    int64   `json:"requests"`
	Status2xx   int64   `json:"status_2xx"`
	Status401   int64   `json:"status_401"`
	StatusOther int64   `json:"status_other"`
	Errors      int64   `json:"errors"`
}

// Summary compares B (api_key) with A (reverse_proxy alone).
type Summary struct {
	A SideStats `json:"a"`
	B SideStats `json:"b"`
	// Ratios of the medians, B/A.
	RatioRPS float64 `json:"ratio_rps"`
	RatioP50 float64 `json:"ratio_p50"`
	RatioP99 float64 `json:"ratio_p99"`
	// Per round B/A throughput (round i's B over round i's A).
	RoundRatiosRPS []float64 `json:"round_ratios_rps"`
}

// Target is one goal and whether this session met it.
type Target struct {
	Instance string  `json:"instance"`
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Want     string  `json:"want"`
	Got      float64 `json:"got"`
	Met      bool    `json:"met"`
	Verdict  string  `json:"verdict"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ratio(b, a float64) float64 {
	if a == 0 {
		return 0
	}
	return b / a
}

func summarize(runs []RunResult) Summary {
	side := func(name string) SideStats {
		var rps, p50, p99, cpu []float64
		var st SideStats
		for _, r := range runs {
			if r.Side != name {
				continue
			}
			rps, p50, p99, cpu = append(rps, r.RPS), append(p50, r.P50us), append(p99, r.P99us), append(cpu, r.ServerCPUus)
			st.Requests += r.Requests
			st.Status2xx += r.Status2xx
			st.Status401 += r.Status401
			st.StatusOther += r.StatusOther
			st.Errors += r.Errors
		}
		st.MedianRPS, st.MedianP50us, st.MedianP99us, st.MedianCPUus = median(rps), median(p50), median(p99), median(cpu)
		return st
	}
	s := Summary{A: side("A"), B: side("B")}
	s.RatioRPS = ratio(s.B.MedianRPS, s.A.MedianRPS)
	s.RatioP50 = ratio(s.B.MedianP50us, s.A.MedianP50us)
	s.RatioP99 = ratio(s.B.MedianP99us, s.A.MedianP99us)
	byRound := map[int]map[string]float64{}
	for _, r := range runs {
		if byRound[r.Round] == nil {
			byRound[r.Round] = map[string]float64{}
		}
		byRound[r.Round][r.Side] = r.RPS
	}
	for i := 1; i <= len(byRound); i++ {
		s.RoundRatiosRPS = append(s.RoundRatiosRPS, ratio(byRound[i]["B"], byRound[i]["A"]))
	}
	return s
}

// noise is the run-to-run spread on this machine (PITFALLS 18).
const noise = 0.05

func atLeast(inst, sc, metric string, got, want float64) Target {
	t := Target{Instance: inst, Scenario: sc, Metric: metric, Want: fmt.Sprintf("≥ %.2f", want), Got: got, Met: got >= want}
	switch {
	case t.Met:
		t.Verdict = "met"
	case got >= want-noise:
		t.Verdict = "missed, within ±5 % noise"
	default:
		t.Verdict = "MISSED"
	}
	return t
}

func atMost(inst, sc, metric string, got, want float64) Target {
	t := Target{Instance: inst, Scenario: sc, Metric: metric, Want: fmt.Sprintf("≤ %.2f", want), Got: got, Met: got <= want}
	switch {
	case t.Met:
		t.Verdict = "met"
	case got <= want+noise:
		t.Verdict = "missed, within ±5 % noise"
	default:
		t.Verdict = "MISSED"
	}
	return t
}

func check(inst, sc, metric string, ok bool, got float64) Target {
	t := Target{Instance: inst, Scenario: sc, Metric: metric, Want: "all", Got: got, Met: ok, Verdict: "ok"}
	if !ok {
		t.Verdict = "FAILED"
	}
	return t
}

// evaluate lists the targets of the issue and the sanity checks.
func evaluate(rep *Report) []Target {
	var out []Target
	for _, inst := range rep.Instances {
		for _, sc := range inst.Scenarios {
			s := sc.Summary
			a, b := s.A, s.B
			frac := func(n, of int64) float64 { return ratio(float64(n), float64(of)) }
			if sc.Name == ScUnknown || sc.Name == ScUnknownAs {
				out = append(out, check(inst.Name, sc.Name, "A answered 401, no errors", a.Status401 == a.Requests && a.Errors == 0 && a.Requests > 0, frac(a.Status401, a.Requests)))
			} else {
				out = append(out, check(inst.Name, sc.Name, "A answered 2xx, no errors", a.Status2xx == a.Requests && a.Errors == 0 && a.Requests > 0, frac(a.Status2xx, a.Requests)))
			}
			switch sc.Name {
			case ScUniform, ScZipf, ScMiss:
				out = append(out, check(inst.Name, sc.Name, "B admitted (2xx), no errors", b.Status2xx == b.Requests && b.Errors == 0 && b.Requests > 0, frac(b.Status2xx, b.Requests)))
			default:
				out = append(out, check(inst.Name, sc.Name, "B answered 401, no errors", b.Status401 == b.Requests && b.Errors == 0 && b.Requests > 0, frac(b.Status401, b.Requests)))
			}
			// Issue 13's targets: keygate's CPU per request within 2 µs of
			// plain Caddy for the 10k-key hit path and the 401 path.
			extraCPU := s.B.MedianCPUus - s.A.MedianCPUus
			switch sc.Name {
			case ScUniform:
				out = append(out, atLeast(inst.Name, sc.Name, "B/A throughput", s.RatioRPS, 0.98))
				out = append(out, atMost(inst.Name, sc.Name, "keygate cpu/req, B − A (µs)", extraCPU, 2))
				out = append(out, atMost(inst.Name, sc.Name, "B/A p99 latency", s.RatioP99, 1.10))
			case ScZipf:
				out = append(out, atLeast(inst.Name, sc.Name, "B/A throughput", s.RatioRPS, 0.95))
				out = append(out, atMost(inst.Name, sc.Name, "B/A p99 latency", s.RatioP99, 1.10))
			case ScMiss:
				out = append(out, atLeast(inst.Name, sc.Name, "B/A throughput", s.RatioRPS, 0.90))
			case ScGarbage, ScMalformed:
				out = append(out, atLeast(inst.Name, sc.Name, "B/A throughput", s.RatioRPS, 1.00))
			case ScUnknown:
				out = append(out, atMost(inst.Name, sc.Name, "keygate cpu/req, B − A (µs), A = respond 401", extraCPU, 2))
			}
		}
		if inst.Name == "big" && inst.Keys >= 1_000_000 { // the target is for 1M keys (not --quick's 100k)
			out = append(out, atMost(inst.Name, ScMiss, "RSS after runs (MiB)", float64(inst.RSSKB)/1024, 300))
		}
	}
	return out
}

func us(v float64) string {
	if v >= 10_000 {
		return fmt.Sprintf("%.1f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// SummaryTable is the per-scenario comparison (also printed to stdout).
func SummaryTable(rep *Report) string {
	var b strings.Builder
	b.WriteString("| instance | keys | cache | scenario | A req/s | B req/s | **B/A req/s** | B/A per round | A p50 | B p50 | A p99 | B p99 | **B/A p99** | A cpu/req | B cpu/req | B − A cpu/req |\n")
	b.WriteString("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, inst := range rep.Instances {
		for _, sc := range inst.Scenarios {
			s := sc.Summary
			var rr []string
			for _, r := range s.RoundRatiosRPS {
				rr = append(rr, fmt.Sprintf("%.2f", r))
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %s | %.0f | %.0f | **%.3f** | %s | %s | %s | %s | %s | **%.3f** | %.1f µs | %.1f µs | %+.1f µs |\n",
				inst.Name, inst.Keys, inst.Cache, sc.Name, s.A.MedianRPS, s.B.MedianRPS, s.RatioRPS, strings.Join(rr, " "),
				us(s.A.MedianP50us), us(s.B.MedianP50us), us(s.A.MedianP99us), us(s.B.MedianP99us), s.RatioP99,
				s.A.MedianCPUus, s.B.MedianCPUus, s.B.MedianCPUus-s.A.MedianCPUus)
		}
	}
	return b.String()
}

// TargetTable lists the targets and checks.
func TargetTable(rep *Report) string {
	var b strings.Builder
	b.WriteString("| instance | scenario | metric | target | got | verdict |\n|---|---|---|---|---:|---|\n")
	for _, t := range rep.Targets {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.3f | %s |\n", t.Instance, t.Scenario, t.Metric, t.Want, t.Got, t.Verdict)
	}
	return b.String()
}

// InstanceTable has the import speed and memory of each keygate instance.
func InstanceTable(rep *Report) string {
	var b strings.Builder
	b.WriteString("| instance | keys | cache | import (endpoint) | import keys/s | keygate cpu in import | store on disk | keygate start | idle wait | RSS after runs | of which anonymous / files | peak RSS |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, i := range rep.Instances {
		fmt.Fprintf(&b, "| %s | %d | %d | %.2f s | %.0f | %.1f s | %.1f MiB | %.2f s | %.1f s | %s | %s / %s | %s |\n", i.Name, i.Keys, i.Cache,
			i.ImportSeconds, i.ImportKeysPerSec, i.ImportCPUSeconds, float64(i.StoreBytes)/(1<<20), i.StartSeconds, i.IdleWaitSeconds,
			mib(i.RSSKB), mib(i.RSSAnonKB), mib(i.RSSFileKB), mib(i.HWMKB))
	}
	return b.String()
}

// RunsTable lists every timed run.
func RunsTable(rep *Report) string {
	var b strings.Builder
	b.WriteString("| instance | scenario | round | side | req/s | p50 | p90 | p99 | max | keygate cpu/req | 2xx | 401 | other | errors |\n")
	b.WriteString("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, inst := range rep.Instances {
		for _, sc := range inst.Scenarios {
			for _, r := range sc.Runs {
				fmt.Fprintf(&b, "| %s | %s | %d | %s | %.0f | %s | %s | %s | %s | %.1f µs | %d | %d | %d | %d |\n", inst.Name, sc.Name, r.Round, r.Side,
					r.RPS, us(r.P50us), us(r.P90us), us(r.P99us), us(r.MaxUs), r.ServerCPUus, r.Status2xx, r.Status401, r.StatusOther, r.Errors)
			}
		}
	}
	return b.String()
}

// Markdown is the results file.
func Markdown(rep *Report) string {
	var b strings.Builder
	c := rep.Config
	b.WriteString("# keygate load benchmark\n\n")
	b.WriteString("A = `reverse_proxy` alone, B = `api_key` + the identical `reverse_proxy` block, both sites in the same keygate process, measured alternately in A B B A order (round 1 A then B, round 2 B then A, …) in one session (PITFALLS 18). Ratios are B/A of the medians over rounds; ±5 % is noise on this machine.\n\n")
	fmt.Fprintf(&b, "- started %s, took %.0f s; %d CPUs, load average at start %s; %s\n", rep.Started.Format("2006-01-02 15:04:05Z"), rep.Seconds, rep.Host.CPUs, rep.Host.Load1, rep.Host.GoVersion)
	fmt.Fprintf(&b, "- binary %s; upstream %s answering 200 with a %d-byte body\n", rep.Host.Binary, rep.Host.Upstream, rep.Host.BodyBytes)
	fmt.Fprintf(&b, "- load: Go net/http client, HTTP/1.1 keep-alive, %d connections (one worker each, back to back), %d rounds × %s per side, %s warm-up per side and scenario; Zipf s=%.2f\n",
		c.Conns, c.Rounds, c.Duration, c.Warmup, c.ZipfS)
	idle := "Caddy's default"
	if c.IdleConns > 0 {
		idle = fmt.Sprint(c.IdleConns)
	}
	blockCache := "the module's default"
	if c.BlockCache > 0 {
		blockCache = fmt.Sprintf("%d MiB", c.BlockCache)
	}
	fmt.Fprintf(&b, "- upstream keep-alive idle pool per host: %s (same on both sites); api_keys flush_interval %s, block_cache %s; profiling: %v\n", idle, c.Flush, blockCache, c.Profiling)
	b.WriteString("- after each B run (and each warm-up) the bench waits one flush interval and until keygate is idle, so that the usage flush of the keys B used runs before the next A run instead of inside it; keygate's CPU per request is measured over run + that wait\n")
	b.WriteString("- every run draws fresh random keys (no run replays an earlier run's sequence)\n")
	fmt.Fprintf(&b, "- keys imported through keygate's `POST /v1/tenants/default/keys/import` endpoint (admin API on loopback, then keygate restarted on the store), %d keys per call, one owner per 1000 keys (max_keys_per_user is at most 1000); the import time is the wall time of the calls\n\n", c.ImportSize)
	b.WriteString("## Summary (medians over rounds)\n\n")
	b.WriteString(SummaryTable(rep))
	b.WriteString("\n`cpu/req` is keygate's own CPU time (user+system, /proc/<pid>/stat of the keygate process only: the load generator runs in the bench process and is not counted) per request, over the run and the wait after it: B − A is the gateway's cost per request, background flush included. It is less sensitive to the other load on the machine than req/s.\n\n")
	b.WriteString("## Targets and checks\n\n")
	b.WriteString(TargetTable(rep))
	b.WriteString("\n## Import and memory\n\n")
	b.WriteString(InstanceTable(rep))
	b.WriteString("\n## Scenarios\n\n")
	for _, inst := range rep.Instances {
		for _, sc := range inst.Scenarios {
			fmt.Fprintf(&b, "- %s/%s: %s\n", inst.Name, sc.Name, sc.Description)
			for _, p := range sc.Profiles {
				fmt.Fprintf(&b, "  - profile: %s\n", p)
			}
		}
	}
	b.WriteString("\n## All runs\n\n")
	b.WriteString(RunsTable(rep))
	for _, inst := range rep.Instances {
		fmt.Fprintf(&b, "\n## Caddyfile of instance %s\n\n```\n%s```\n", inst.Name, inst.Caddyfile)
	}
	return b.String()
}

// WriteResults writes the markdown file and, next to it, the JSON.
func WriteResults(rep *Report, mdPath, jsonPath string) error {
	if err := os.WriteFile(mdPath, []byte(Markdown(rep)), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(jsonPath, append(js, '\n'), 0o644)
}
