package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"

	"github.com/keygate/keygate/store"
)

// FuzzCredential feeds the gateway's credential extraction (header, then
// "Authorization: Bearer") and store.WellFormed. Properties:
//   - nothing panics;
//   - the secret is never longer than the header value it came from, and is
//     that value with surrounding white space removed;
//   - the configured header wins whenever it holds more than white space;
//     Authorization is read only with bearer on, and only for the Bearer
//     scheme, whose name is case-insensitive ("bearer", "BEARER", "bEaReR");
//   - a well-formed secret is found the same way in either header, and is
//     short enough for the gateway to look at.
func FuzzCredential(f *testing.F) {
	good := store.NewSecret(store.KeyPrefix)
	seeds := []struct {
		apiKey, authz, header string
		bearerOff             bool
	}{
		{good, "", "", false},
		{"", "Bearer " + good, "", false},
		{"", "bearer " + good, "", false},
		{"", "BEARER   " + good + "  ", "", false},
		{"", "bEaReR\t" + good, "", false},
		{"", "Basic dXNlcjpwYXNz", "", false},
		{"", "Bearer", "", false},
		{"", "Bearer ", "", false},
		{"", "Bearer      ", "", false},
		{"", "Bearer " + good, "", true},
		{"  " + good + "\t", "Bearer other", "", false},
		{"   ", "Bearer " + good, "", false},
		{good, "", "x-custom-key", false},
		{good, "", "X-Api-Key", false},
		{"kg_short_000000", "", "", false},
		{strings.Repeat("k", 4096), "", "", false},
		{"", "Bearer kg_\xff\xfe", "", false},
		{"", "Beare\xc3\xa9 x", "", false},
		{"", "BEARER\u00a0" + good, "", false},
		{"\u3000" + good + "\u0085", "", "", false},
	}
	for _, s := range seeds {
		f.Add(s.apiKey, s.authz, s.header, s.bearerOff)
	}
	f.Fuzz(func(t *testing.T, apiKey, authz, header string, bearerOff bool) {
		if strings.EqualFold(strings.TrimSpace(header), "Authorization") {
			return // Validate refuses this configuration
		}
		h := newCredentialHandler(t, header, !bearerOff)
		secret, fromAuth := credentialOf(t, h, credentialRequest(h.header, apiKey, authz))

		switch {
		case strings.TrimSpace(apiKey) != "":
			if fromAuth || secret != strings.TrimSpace(apiKey) {
				t.Fatalf("%s %q: got %q (from Authorization %v), want the trimmed header", h.header, apiKey, secret, fromAuth)
			}
		case h.bearer && len(authz) > 7 && strings.EqualFold(authz[:7], "bearer "):
			if !fromAuth || secret != strings.TrimSpace(authz[7:]) {
				t.Fatalf("Authorization %q: got %q (from Authorization %v)", authz, secret, fromAuth)
			}
		default:
			if secret != "" {
				t.Fatalf("header %q, Authorization %q, bearer %v: got %q (from Authorization %v), want none",
					apiKey, authz, h.bearer, secret, fromAuth)
			}
		}
		if src := map[bool]string{false: apiKey, true: authz}[fromAuth]; len(secret) > len(src) {
			t.Fatalf("secret %q is longer than its header %q", secret, src)
		}
		if secret != "" && !strings.Contains(map[bool]string{false: apiKey, true: authz}[fromAuth], secret) {
			t.Fatalf("secret %q is not part of its header", secret)
		}

		// The scheme's case does not matter: authz as the credentials after
		// any spelling of the scheme gives the same secret.
		if h.bearer {
			want := strings.TrimSpace(authz)
			for _, scheme := range []string{"Bearer ", "bearer ", "BEARER ", "bEaReR ", "BeArEr  "} {
				got, fa := credentialOf(t, h, credentialRequest(h.header, "", scheme+authz))
				if got != want || want != "" && !fa {
					t.Fatalf("Authorization %q gives %q (from Authorization %v), want %q", scheme+authz, got, fa, want)
				}
			}
		}

		if !store.WellFormed(store.KeyPrefix, secret) {
			return
		}
		if len(secret) > store.MaxSecretLen || strings.IndexFunc(secret, unicode.IsSpace) >= 0 {
			t.Fatalf("well-formed secret %q is too long or has white space", secret)
		}
		// The same secret is found in the other header too.
		other := newCredentialHandler(t, header, true)
		if got, fa := credentialOf(t, other, credentialRequest(other.header, secret, "")); got != secret || fa {
			t.Fatalf("%q in %s gives %q", secret, other.header, got)
		}
		if got, fa := credentialOf(t, other, credentialRequest(other.header, "", "Bearer "+secret)); got != secret || !fa {
			t.Fatalf("%q as bearer gives %q", secret, got)
		}
	})
}

// newCredentialHandler is an api_key handler configured by hand (no Caddy,
// no store: credential needs neither).
func newCredentialHandler(t *testing.T, header string, bearer bool) *Handler {
	h := &Handler{Header: header, Bearer: &bearer}
	if err := h.provisionDefaults(); err != nil {
		t.Fatal(err)
	}
	return h
}

// credentialOf is h.credentials for a request with at most one value per
// source, as (secret, whether it came from Authorization).
func credentialOf(t *testing.T, h *Handler, r *http.Request) (string, bool) {
	t.Helper()
	p := h.credentials(r)
	if p.duplicate {
		t.Fatalf("one value per source reported as a duplicate: %v", r.Header)
	}
	if p.any != (p.secret != "") {
		t.Fatalf("credential presented %v but secret %q", p.any, p.secret)
	}
	return p.secret, p.bearer && strings.TrimSpace(r.Header.Get(h.header)) == ""
}

// credentialRequest carries the values as received (set in the header map
// directly, the way net/http's server stores them).
func credentialRequest(header, apiKey, authz string) *http.Request {
	r := httptest.NewRequest("GET", "http://gw/", nil)
	if apiKey != "" {
		r.Header[header] = []string{apiKey}
	}
	if authz != "" {
		r.Header["Authorization"] = []string{authz}
	}
	return r
}
