package store

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
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

// TestOptJSON: a PATCH field tells absent, null and a value apart, and its
// value is decoded with the caller's strict options (exact, known names), by
// encoding/json as well as by the admin API's decoder.
func TestOptJSON(t *testing.T) {
	type patch struct {
		Window Opt[Duration] `json:"window"`
		Rule   Opt[Rule]     `json:"rule"`
	}
	strict := jsonv2.RejectUnknownMembers(true)
	for _, c := range []struct {
		body    string
		want    patch
		wantErr bool
	}{
		{body: `{}`},
		{body: `{"window":null}`, want: patch{Window: Opt[Duration]{Set: true, Null: true}}},
		{body: `{"window":"1h"}`, want: patch{Window: Some(Duration(time.Hour))}},
		{body: `{"window":"1 hour"}`, wantErr: true},
		{body: `{"rule":{"paths":["/a"]}}`, want: patch{Rule: Some(Rule{Paths: []string{"/a"}})}},
		{body: `{"rule":{"Paths":["/a"]}}`, wantErr: true},
		{body: `{"rule":{"paths":["/a"],"colour":1}}`, wantErr: true},
	} {
		var v2, v1 patch
		err2 := jsonv2.Unmarshal([]byte(c.body), &v2, strict)
		err1 := json.Unmarshal([]byte(c.body), &v1)
		for _, r := range []struct {
			err error
			got patch
		}{{err2, v2}, {err1, v1}} {
			if (r.err != nil) != c.wantErr {
				t.Errorf("%s: error %v, want error %v", c.body, r.err, c.wantErr)
				continue
			}
			if !c.wantErr && fmt.Sprint(r.got) != fmt.Sprint(c.want) {
				t.Errorf("%s: got %+v, want %+v", c.body, r.got, c.want)
			}
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
