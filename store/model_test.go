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
