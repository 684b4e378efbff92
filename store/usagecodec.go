package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sort"
	"time"
)

// Usage records are rewritten for every key used in a flush interval, so
// they use a compact binary form rather than JSON (the flusher's cost was
// mostly JSON). Records written as JSON by earlier versions still read.
//
//	0x01 | last-used unix nanos (varint, 0: never) | ip length | ip |
//	totals (numOutcomes uvarints) | minute count | (minute varint, counts)…
const usageCodecV1 = 0x01

func encodeUsage(u *usageRecord) []byte {
	b := make([]byte, 0, 16+len(u.LastUsedIP)+(1+len(u.Minutes))*(int(numOutcomes)+2)*2)
	b = append(b, usageCodecV1)
	var at int64
	if u.LastUsedAt != nil {
		at = u.LastUsedAt.UnixNano()
	}
	b = binary.AppendVarint(b, at)
	b = binary.AppendUvarint(b, uint64(len(u.LastUsedIP)))
	b = append(b, u.LastUsedIP...)
	for _, n := range u.Totals {
		b = binary.AppendUvarint(b, n)
	}
	b = binary.AppendUvarint(b, uint64(len(u.Minutes)))
	for i := range u.Minutes {
		b = appendMinute(b, &u.Minutes[i])
	}
	return b
}

var errBadUsage = errors.New("corrupt usage record")

func decodeUsage(b []byte, u *usageRecord) error {
	if len(b) > 0 && b[0] == '{' {
		return json.Unmarshal(b, u)
	}
	var p usageParts
	if len(b) == 0 || !parseUsage(b, &p) {
		return errBadUsage
	}
	if p.at != 0 {
		t := time.Unix(0, p.at).UTC()
		u.LastUsedAt = &t
	}
	u.LastUsedIP = string(p.ip)
	u.Totals = p.totals
	u.Minutes = make([]minuteCount, p.n)
	mr := minuteReader{b: p.minutes, left: p.n}
	var m encodedMinute
	for i := range u.Minutes {
		if !mr.next(&m) {
			return errBadUsage
		}
		u.Minutes[i] = minuteCount{Minute: m.minute, Counts: m.counts()}
	}
	return nil
}

type reader struct {
	b   []byte
	err bool
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

// mergeMinutes adds b's counts into a and drops minutes older than the
// usage window. a is ascending (as stored); b is sorted here if a clock
// went backwards while it was buffered.
func mergeMinutes(a, b []minuteCount, now time.Time) []minuteCount {
	if !sort.SliceIsSorted(b, func(i, j int) bool { return b[i].Minute < b[j].Minute }) {
		b = append([]minuteCount(nil), b...)
		sort.SliceStable(b, func(i, j int) bool { return b[i].Minute < b[j].Minute })
	}
	oldest := now.Add(-usageWindow).Unix() / 60
	out := make([]minuteCount, 0, len(a)+len(b))
	add := func(m minuteCount) {
		if m.Minute <= oldest {
			return
		}
		if n := len(out); n > 0 && out[n-1].Minute == m.Minute {
			for o := range m.Counts {
				out[n-1].Counts[o] += m.Counts[o]
			}
			return
		}
		out = append(out, m)
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j == len(b) || i < len(a) && a[i].Minute <= b[j].Minute {
			add(a[i])
			i++
		} else {
			add(b[j])
			j++
		}
	}
	return out
}

// usageParts is a binary usage record with its minutes still encoded.
type usageParts struct {
	at      int64 // last use, unix nanos (0: never)
	ip      []byte
	totals  [numOutcomes]uint64
	n       uint64 // number of minutes
	minutes []byte // the n encoded minutes (and whatever trails them)
}

// parseUsage reads a binary record's header (decodeUsage and the encoded
// merge share it); ok is false for a JSON or undecodable header. An empty
// b is the empty record.
func parseUsage(b []byte, p *usageParts) bool {
	*p = usageParts{}
	if len(b) == 0 {
		return true
	}
	if b[0] != usageCodecV1 {
		return false
	}
	r := reader{b: b[1:]}
	p.at = r.varint()
	n := r.uvarint()
	if r.err || n > uint64(len(r.b)) {
		return false
	}
	p.ip, r.b = r.b[:n], r.b[n:]
	for o := range p.totals {
		p.totals[o] = r.uvarint()
	}
	p.n = r.uvarint()
	if r.err || p.n > uint64(len(r.b)) {
		return false
	}
	p.minutes = r.b
	return true
}

// minuteReader walks encoded minutes without decoding them into a slice.
type minuteReader struct {
	b    []byte
	left uint64
}

// encodedMinute is one minute as it is stored: its number, and its whole
// encoding (minute and counts), which a merge copies as it is unless the
// minute is combined with another.
type encodedMinute struct {
	minute int64
	raw    []byte
}

func (m *minuteReader) next(out *encodedMinute) bool {
	if m.left == 0 {
		return false
	}
	m.left--
	v, n := binary.Varint(m.b)
	if n <= 0 {
		return false
	}
	end := n
	for range numOutcomes { // skip the counts: each ends at a byte below 0x80
		i := end
		for i < len(m.b) && i-end < binary.MaxVarintLen64 && m.b[i] >= 0x80 {
			i++
		}
		if i == len(m.b) || i-end == binary.MaxVarintLen64 || i-end == binary.MaxVarintLen64-1 && m.b[i] > 1 {
			return false // truncated, or more than 64 bits (binary.Uvarint's errors)
		}
		end = i + 1
	}
	out.minute, out.raw = v, m.b[:end]
	m.b = m.b[end:]
	return true
}

// counts decodes a minute's counts (next checked that they decode).
func (e *encodedMinute) counts() (c [numOutcomes]uint64) {
	_, n := binary.Varint(e.raw)
	b := e.raw[n:]
	for o := range c {
		v, n := binary.Uvarint(b)
		c[o], b = v, b[n:]
	}
	return c
}

// minuteScan is what scanMinutes learns of a record's minutes.
type minuteScan struct {
	last   int64 // the last minute
	end    int   // where the last minute's encoding ends in usageParts.minutes
	sorted bool  // no minute is before the previous one
	strict bool  // and none repeats it (as merges write them)
}

// scanMinutes checks that p's minutes all decode.
func scanMinutes(p *usageParts) (sc minuteScan, ok bool) {
	mr := minuteReader{b: p.minutes, left: p.n}
	var m encodedMinute
	sc.sorted, sc.strict = true, true
	for i := uint64(0); i < p.n; i++ {
		if !mr.next(&m) {
			return sc, false
		}
		if i > 0 && m.minute <= sc.last {
			sc.strict = false
			if m.minute < sc.last {
				sc.sorted = false
			}
		}
		sc.last = m.minute
	}
	sc.end = len(p.minutes) - len(mr.b)
	return sc, true
}

// mergeUsageEncoded is mergeUsage without decoding the records into
// usageRecord: it walks both minute lists and writes the result directly,
// with one allocation, copying every minute that is not combined with
// another as it is. Compactions run it for every usage record they merge,
// and a record holds up to a day of minutes.
// ok is false for what it does not handle (JSON, undecodable or unsorted
// newer input); mergeUsageDecoded then does the merge.
func mergeUsageEncoded(older, newer []byte) (_ []byte, ok bool) {
	var a, b usageParts
	if !parseUsage(older, &a) || len(newer) == 0 || !parseUsage(newer, &b) {
		return nil, false
	}
	scA, okA := scanMinutes(&a)
	scB, okB := scanMinutes(&b)
	if !okA || !okB || !scB.sorted {
		return nil, false
	}
	var newest int64
	if a.n > 0 && scA.last > newest {
		newest = scA.last
	}
	if b.n > 0 && scB.last > newest {
		newest = scB.last
	}
	oldest := time.Unix(newest*60, 0).Add(-usageWindow).Unix() / 60

	at, ip := a.at, a.ip
	if b.at != 0 && (a.at == 0 || b.at > a.at) {
		at, ip = b.at, b.ip
	}
	out := make([]byte, 0, len(older)+len(newer)+binary.MaxVarintLen64)
	out = append(out, usageCodecV1)
	out = binary.AppendVarint(out, at)
	out = binary.AppendUvarint(out, uint64(len(ip)))
	out = append(out, ip...)
	for o := range a.totals {
		out = binary.AppendUvarint(out, a.totals[o]+b.totals[o])
	}
	countAt := len(out)
	out = append(out, make([]byte, binary.MaxVarintLen64)...) // the count, written last
	var count uint64
	// pending is the last minute kept, not written yet: the next one may
	// be the same minute (mergeMinutes' add). It is raw until combined.
	var pending encodedMinute
	var sum [numOutcomes]uint64
	have, combined := false, false
	emit := func() {
		if combined {
			out = appendMinute(out, &minuteCount{Minute: pending.minute, Counts: sum})
		} else {
			out = append(out, pending.raw...)
		}
		count++
	}
	add := func(m *encodedMinute) {
		if m.minute <= oldest {
			return
		}
		if have && pending.minute == m.minute {
			if !combined {
				sum, combined = pending.counts(), true
			}
			c := m.counts()
			for o := range c {
				sum[o] += c[o]
			}
			return
		}
		if have {
			emit()
		}
		pending, have, combined = *m, true, false
	}
	ra := minuteReader{b: a.minutes, left: a.n}
	rb := minuteReader{b: b.minutes, left: b.n}
	var ma, mb encodedMinute
	hasA, hasB := ra.next(&ma), rb.next(&mb)
	for hasA || hasB {
		if hasA && scA.strict && ma.minute > oldest && (!hasB || scA.last < mb.minute) && !(have && pending.minute == ma.minute) {
			// The rest of a: ascending, in the window, before what is
			// left of b, so nothing in it is combined: copied at once
			// (a flush's operand merged into a day of minutes).
			if have {
				emit()
				have = false
			}
			from := len(a.minutes) - len(ra.b) - len(ma.raw)
			out = append(out, a.minutes[from:scA.end]...)
			count += ra.left + 1
			hasA = false
			continue
		}
		if !hasB || hasA && ma.minute <= mb.minute {
			add(&ma)
			hasA = ra.next(&ma)
		} else {
			add(&mb)
			hasB = rb.next(&mb)
		}
	}
	if have {
		emit()
	}
	var c [binary.MaxVarintLen64]byte
	k := binary.PutUvarint(c[:], count)
	copy(out[countAt+k:], out[countAt+binary.MaxVarintLen64:])
	out = out[:len(out)-(binary.MaxVarintLen64-k)]
	copy(out[countAt:], c[:k])
	return out, true
}

func appendMinute(b []byte, m *minuteCount) []byte {
	b = binary.AppendVarint(b, m.Minute)
	for _, n := range m.Counts {
		b = binary.AppendUvarint(b, n)
	}
	return b
}
