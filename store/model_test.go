package store

import (
	"encoding/json"
	"testing"
	"time"
)

func TestDurationJSON(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{720 * time.Hour, `"720h"`},
		{90*time.Minute + 0, `"1h30m"`},
		{5 * time.Minute, `"5m"`},
		{90 * time.Second, `"1m30s"`},
		{0, `"0s"`},
		{time.Hour + time.Second, `"1h0m1s"`},
	} {
		b, err := json.Marshal(Duration(c.d))
		if err != nil || string(b) != c.want {
			t.Errorf("%v: got %s %v, want %s", c.d, b, err, c.want)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || time.Duration(back) != c.d {
			t.Errorf("%s: round trip gave %v %v", b, back, err)
		}
	}
	var d Duration
	for _, bad := range []string{`"7d"`, `720`, `"abc"`, `null`} {
		if err := json.Unmarshal([]byte(bad), &d); err == nil && bad != `null` {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestUsageCodec(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 123, time.UTC)
	in := usageRecord{LastUsedAt: &at, LastUsedIP: "2001:db8::1", Totals: [numOutcomes]uint64{5, 1, 0, 0, 0, 0, 300}}
	in.Minutes = []minuteCount{{Minute: 29_000_000, Counts: [numOutcomes]uint64{3, 1}}, {Minute: 29_000_002, Counts: [numOutcomes]uint64{2, 0, 0, 0, 0, 0, 300}}}
	var out usageRecord
	if err := decodeUsage(encodeUsage(&in), &out); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(in)
	b, _ := json.Marshal(out)
	if string(a) != string(b) {
		t.Fatalf("round trip:\n%s\n%s", a, b)
	}
	// Records written as JSON (earlier layout) still read.
	var old usageRecord
	if err := decodeUsage(a, &old); err != nil || old.Totals != in.Totals {
		t.Fatalf("json record: %v %+v", err, old)
	}
	for _, bad := range [][]byte{nil, {0x02}, {usageCodecV1}, encodeUsage(&in)[:10]} {
		if err := decodeUsage(bad, &usageRecord{}); err == nil {
			t.Errorf("%x decoded", bad)
		}
	}
}

func TestMergeMinutes(t *testing.T) {
	now := time.Unix(100*60*60, 0)
	m := func(minute int64, ok uint64) minuteCount {
		return minuteCount{Minute: minute, Counts: [numOutcomes]uint64{ok}}
	}
	cur := now.Unix() / 60
	got := mergeMinutes([]minuteCount{m(cur-2000, 9), m(cur-2, 1), m(cur, 1)}, []minuteCount{m(cur, 2), m(cur-1, 4), m(cur-2, 1)}, now)
	want := []minuteCount{m(cur-2, 2), m(cur-1, 4), m(cur, 3)}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
