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
	for _, m := range u.Minutes {
		b = binary.AppendVarint(b, m.Minute)
		for _, n := range m.Counts {
			b = binary.AppendUvarint(b, n)
		}
	}
	return b
}

var errBadUsage = errors.New("corrupt usage record")

func decodeUsage(b []byte, u *usageRecord) error {
	if len(b) > 0 && b[0] == '{' {
		return json.Unmarshal(b, u)
	}
	if len(b) == 0 || b[0] != usageCodecV1 {
		return errBadUsage
	}
	r := reader{b: b[1:]}
	if at := r.varint(); at != 0 {
		t := time.Unix(0, at).UTC()
		u.LastUsedAt = &t
	}
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		return errBadUsage
	}
	u.LastUsedIP = string(r.b[:n])
	r.b = r.b[n:]
	for o := range u.Totals {
		u.Totals[o] = r.uvarint()
	}
	n = r.uvarint()
	if n > uint64(len(r.b)) {
		return errBadUsage
	}
	u.Minutes = make([]minuteCount, n)
	for i := range u.Minutes {
		u.Minutes[i].Minute = r.varint()
		for o := range u.Minutes[i].Counts {
			u.Minutes[i].Counts[o] = r.uvarint()
		}
	}
	if r.err {
		return errBadUsage
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
