package store

import "time"

// deniedSummaryInterval is how often, at most, one key gets a
// "key.requests_denied" event. A key's first denials are reported with the
// next flush; later ones are added up and reported once an interval has
// passed (and on a graceful stop). A key that clients keep hammering after
// its revocation thus writes 1,440 events a day instead of one per flush
// (17,280 with the default 5 s flush interval); event retention bounds the
// rest.
const deniedSummaryInterval = time.Minute

// deniedSummaries remembers, per key id, denials already counted in the
// key's usage but not yet reported in an event, and when the last event was
// written. Only Flush uses it, under the store's flush lock; it changes only
// after the flush's batch is committed, so a failed flush (whose usage is
// restored and counted again) never reports a denial twice.
type deniedSummaries map[string]*deniedSummary

type deniedSummary struct {
	tenant   string
	counts   [numOutcomes]uint64 // counted, not reported yet
	reported time.Time           // the last event's time; zero: none yet
}

// deniedReport is one event a flush writes, or counts it carries over.
type deniedReport struct {
	id, tenant string
	counts     [numOutcomes]uint64
	due        bool // written now; otherwise carried to a later flush
}

// plan combines what a flush counted (fresh, per key id) with what earlier
// flushes carried, and says for each key whether its event is due at now
// (every pending one with final). It changes nothing.
func (d deniedSummaries) plan(fresh map[string]deniedReport, now time.Time, final bool) []deniedReport {
	var out []deniedReport
	due := func(e *deniedSummary) bool {
		return final || e == nil || e.reported.IsZero() || now.Sub(e.reported) >= deniedSummaryInterval
	}
	for id, r := range fresh {
		e := d[id]
		if e != nil {
			addCounts(&r.counts, &e.counts)
		}
		r.due = due(e)
		out = append(out, r)
	}
	for id, e := range d {
		if _, ok := fresh[id]; !ok && e.counts != ([numOutcomes]uint64{}) && due(e) {
			out = append(out, deniedReport{id: id, tenant: e.tenant, counts: e.counts, due: true})
		}
	}
	return out
}

// commit records a committed flush's plan, and forgets keys that have been
// quiet for a whole interval, so the map holds only recently denied keys.
func (d deniedSummaries) commit(plan []deniedReport, now time.Time) {
	for _, r := range plan {
		e := d[r.id]
		if e == nil {
			e = &deniedSummary{tenant: r.tenant}
			d[r.id] = e
		}
		if r.due {
			e.counts, e.reported = [numOutcomes]uint64{}, now
		} else {
			e.counts = r.counts
		}
	}
	for id, e := range d {
		if e.counts == ([numOutcomes]uint64{}) && now.Sub(e.reported) >= deniedSummaryInterval {
			delete(d, id)
		}
	}
}

func addCounts(dst, src *[numOutcomes]uint64) {
	for o, n := range src {
		dst[o] += n
	}
}
