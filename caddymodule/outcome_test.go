package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"

	"github.com/keygate/keygate/store"
)

// TestOutcomeTable checks the table against SPEC section 3: every code of
// the spec's table has a row, statuses map to the spec's gRPC statuses, the
// 401s that answer a presented credential say invalid_token, and a usage
// outcome is the store's outcome of the same code.
func TestOutcomeTable(t *testing.T) {
	spec := map[string]int{
		"missing_key": 401, "invalid_key": 401, "key_revoked": 401, "key_expired": 401,
		"api_keys_disabled": 403, "ip_not_allowed": 403, "forbidden": 403, "rate_limited": 429, "unavailable": 503,
	}
	grpcOf := map[int]codes.Code{401: codes.Unauthenticated, 403: codes.PermissionDenied, 429: codes.ResourceExhausted,
		503: codes.Unavailable, 425: codes.Unavailable, 200: codes.OK, 204: codes.OK}
	seen := map[string]bool{}
	for o := range numOutcomes {
		row := outcomeTable[o]
		if row.code == "" || row.status == 0 {
			t.Fatalf("outcome %d has no row", o)
		}
		seen[row.code] = true
		if want, ok := spec[row.code]; ok && row.status != want {
			t.Errorf("%s: status %d, spec says %d", row.code, row.status, want)
		}
		if g, ok := grpcOf[row.status]; !ok || g != row.grpc {
			t.Errorf("%s: grpc %v for HTTP %d", row.code, row.grpc, row.status)
		}
		if row.invalidToken != (row.status == http.StatusUnauthorized && o != outcomeMissingKey) {
			t.Errorf("%s: invalidToken %v", row.code, row.invalidToken)
		}
		if row.status >= 400 && row.message == "" {
			t.Errorf("%s: no message", row.code)
		}
		if row.usage != noUsage && row.usage.String() != row.code {
			t.Errorf("%s: usage outcome %s", row.code, row.usage)
		}
	}
	for code := range spec {
		if !seen[code] {
			t.Errorf("spec code %s has no row", code)
		}
	}
	if outcomeTable[outcomeOK].usage != store.OutcomeOK {
		t.Error("ok does not record usage")
	}
}

// TestRequestsMetricOneSeriesPerCode: rows sharing a code (invalid_key for a
// bad key and for a duplicated source) are one series, summed.
func TestRequestsMetricOneSeriesPerCode(t *testing.T) {
	sh := newShared(store.Options{})
	sh.outcomes.inc(outcomeInvalidKey)
	sh.outcomes.inc(outcomeDuplicateKey)
	sh.outcomes.inc(outcomeDuplicateKey)
	sh.outcomes.inc(outcomeOK)
	ch := make(chan prometheus.Metric, 64)
	go func() { collector{sh}.Collect(ch); close(ch) }()
	got := map[string]float64{}
	for m := range ch {
		if m.Desc() != descRequests {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		label := pb.GetLabel()[0].GetValue()
		if _, dup := got[label]; dup {
			t.Errorf("two series for outcome %q", label)
		}
		got[label] = pb.GetCounter().GetValue()
	}
	if got["invalid_key"] != 3 || got["ok"] != 1 || got["missing_key"] != 0 {
		t.Errorf("counts %v", got)
	}
	if _, ok := got["too_early"]; !ok {
		t.Error("no too_early series")
	}
}

// TestOutcomeOfCode: a request whose key stops admitting between its
// verification and its tracking is answered by the table row of the code
// the store gives (streams.go), never by the success rows.
func TestOutcomeOfCode(t *testing.T) {
	for code, status := range map[string]int{"invalid_key": 401, "key_revoked": 401, "key_expired": 401, "api_keys_disabled": 403, "unavailable": 503} {
		o := outcomeOfCode(code)
		if row := outcomeTable[o]; row.code != code || row.status != status {
			t.Errorf("outcomeOfCode(%q) = row %q %d", code, row.code, row.status)
		}
	}
	for _, code := range []string{"ok", "preflight", "no such code"} {
		if row := outcomeTable[outcomeOfCode(code)]; row.code != "invalid_key" {
			t.Errorf("outcomeOfCode(%q) = %q, want invalid_key", code, row.code)
		}
	}
}

// TestErrorBodies: every outcome's prebuilt answer is the spec's JSON with
// its own code and message, and Content-Length is its length; the header
// values of one answer are its own (a later middleware editing them in place
// cannot change the next answer), while the body is shared and unchanged.
func TestErrorBodies(t *testing.T) {
	for o := range outcomeTable {
		row, e := &outcomeTable[o], &errorBodies[o]
		var got struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if err := json.Unmarshal(e.body, &got); err != nil {
			t.Fatalf("outcome %d: %v: %s", o, err, e.body)
		}
		if got.Error.Code != row.code || got.Error.Message != row.message || e.length != strconv.Itoa(len(e.body)) {
			t.Errorf("outcome %d: %+v, length %s of %d bytes; want %q %q", o, got, e.length, len(e.body), row.code, row.message)
		}
	}
	w1, w2 := httptest.NewRecorder(), httptest.NewRecorder()
	writeJSONError(w1, 401, &errorBodies[outcomeInvalidKey])
	w1.Header()["Content-Type"][0] = "text/plain"
	w1.Header()["Cache-Control"] = append(w1.Header()["Cache-Control"], "private")
	writeJSONError(w2, 401, &errorBodies[outcomeInvalidKey])
	if ct, cc := w2.Header().Values("Content-Type"), w2.Header().Values("Cache-Control"); len(ct) != 1 || ct[0] != "application/json" || len(cc) != 1 || cc[0] != "no-store" {
		t.Fatalf("second answer's headers: Content-Type %q, Cache-Control %q", ct, cc)
	}
	if w2.Code != 401 || w2.Body.String() != `{"error":{"code":"invalid_key","message":"invalid API key"}}`+"\n" || w2.Header().Get("Content-Length") != strconv.Itoa(w2.Body.Len()) {
		t.Fatalf("second answer: %d %q, Content-Length %q", w2.Code, w2.Body.String(), w2.Header().Get("Content-Length"))
	}
}
