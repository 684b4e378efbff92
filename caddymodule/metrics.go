package caddymodule

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// outcomeCounters are striped: every request adds to one, and a single
// shared cache line written by every core on every request costs more than
// the rest of the bookkeeping.
type outcomeCounters [counterStripes]struct {
	n [numOutcomes]atomic.Uint64
	_ [(128 - (numOutcomes*8)%64) % 64]byte // stripes never share a cache line
}

const counterStripes = 8

func (c *outcomeCounters) inc(o outcome) { c[rand.Uint32()%counterStripes].n[o].Add(1) }

func (c *outcomeCounters) load(o outcome) uint64 {
	var sum uint64
	for i := range c {
		sum += c[i].n[o].Load()
	}
	return sum
}

// adminAuthCounters count the admin API's refused bearer tokens and the
// requests it throttled for them (admin.Config.OnAuthFailure).
type adminAuthCounters struct {
	failures, throttled atomic.Uint64
}

func (c *adminAuthCounters) inc(throttled bool) {
	if throttled {
		c.throttled.Add(1)
	} else {
		c.failures.Add(1)
	}
}

var (
	descAdminAuthFailures = prometheus.NewDesc("keygate_admin_auth_failures_total",
		"Admin API requests refused for a bad bearer token.", nil, nil)
	descAdminAuthThrottled = prometheus.NewDesc("keygate_admin_auth_throttled_total",
		"Admin API requests answered 429 because their client address had too many failed authentications.", nil, nil)
)

var (
	descRequests = prometheus.NewDesc("keygate_requests_total",
		"Gateway requests by outcome.", []string{"outcome"}, nil)
	descCacheHits = prometheus.NewDesc("keygate_cache_hits_total",
		"Verification cache hits.", nil, nil)
	descCacheMisses = prometheus.NewDesc("keygate_cache_misses_total",
		"Verification cache misses.", nil, nil)
	descFlushes = prometheus.NewDesc("keygate_usage_flushes_total",
		"Flushes of buffered last-used and usage data.", nil, nil)
	descFlushSeconds = prometheus.NewDesc("keygate_usage_flush_seconds_total",
		"Time spent writing usage flushes.", nil, nil)
	descFlushFailures = prometheus.NewDesc("keygate_usage_flush_failures_total",
		"Usage flushes that could not write (disk full, store failed); their data stayed in memory.", nil, nil)
	descUsagePending = prometheus.NewDesc("keygate_usage_pending_minutes",
		"Per-minute usage counts buffered in memory, not yet written.", nil, nil)
	descUsageDropped = prometheus.NewDesc("keygate_usage_dropped_total",
		"Requests whose per-minute usage count was dropped because the in-memory buffer was full; they still count in totals and last use.", nil, nil)
	descWritesRefused = prometheus.NewDesc("keygate_store_writes_refused_total",
		"Store writes refused because the free disk space was below the api_keys disk_reserve.", nil, nil)
	descStoreFailed = prometheus.NewDesc("keygate_store_failed",
		"1 once Pebble reported a fatal error: writes are refused until keygate is restarted.", nil, nil)
)

// collector reads the shared state's counters at scrape time, so metrics
// carry on across reloads while each config's registry gets its own view.
type collector struct{ s *shared }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRequests
	ch <- descCacheHits
	ch <- descCacheMisses
	ch <- descFlushes
	ch <- descFlushSeconds
	ch <- descAdminAuthFailures
	ch <- descAdminAuthThrottled
	ch <- descFlushFailures
	ch <- descUsagePending
	ch <- descUsageDropped
	ch <- descWritesRefused
	ch <- descStoreFailed
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	var counts [numOutcomes]uint64
	for o := range numOutcomes {
		counts[metricOf[o]] += c.s.outcomes.load(o)
	}
	for o := range numOutcomes {
		if metricOf[o] == o {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(counts[o]), outcomeTable[o].code)
		}
	}
	ch <- prometheus.MustNewConstMetric(descAdminAuthFailures, prometheus.CounterValue, float64(c.s.adminAuth.failures.Load()))
	ch <- prometheus.MustNewConstMetric(descAdminAuthThrottled, prometheus.CounterValue, float64(c.s.adminAuth.throttled.Load()))
	st, err := c.s.store()
	if err != nil {
		return
	}
	hits, misses := st.CacheMetrics()
	ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(hits))
	ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(misses))
	fs := st.FlushStats()
	ch <- prometheus.MustNewConstMetric(descFlushes, prometheus.CounterValue, float64(fs.Flushes))
	ch <- prometheus.MustNewConstMetric(descFlushSeconds, prometheus.CounterValue, fs.TotalSeconds)
	ch <- prometheus.MustNewConstMetric(descFlushFailures, prometheus.CounterValue, float64(fs.Failures))
	ch <- prometheus.MustNewConstMetric(descUsagePending, prometheus.GaugeValue, float64(fs.PendingMinutes))
	ch <- prometheus.MustNewConstMetric(descUsageDropped, prometheus.CounterValue, float64(fs.DroppedRequests))
	ss := st.StorageStats()
	ch <- prometheus.MustNewConstMetric(descWritesRefused, prometheus.CounterValue, float64(ss.WritesRefused))
	failed := 0.0
	if ss.Failed {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descStoreFailed, prometheus.GaugeValue, failed)
}

func registerMetrics(ctx caddy.Context, s *shared) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	var already prometheus.AlreadyRegisteredError
	if err := reg.Register(collector{s}); err != nil && !errors.As(err, &already) {
		ctx.Logger().Warn("registering api_keys metrics failed")
	}
}
