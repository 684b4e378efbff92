package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/keygate/keygate/store"
)

const testOperatorToken = "test-operator-token"

// who is a caller of the authorization matrix.
type who int

const (
	noToken          who = iota // no Authorization header
	badToken                    // a well-formed kga_ token nobody issued
	revokedToken                // the developer's revoked token
	gatewayKey                  // a kg_ gateway key used as an admin token
	developer                   // "dev", developer of acme, owns fx.devKey
	otherDeveloper              // "dev2", developer of acme
	tenantAdmin                 // "admin", tenant_admin of acme
	otherTenantAdmin            // "oadmin", tenant_admin of tenant "other"
	operator                    // the operator token
	numWho
)

var whoNames = [numWho]string{"no token", "bad token", "revoked token", "gateway key", "developer",
	"other developer", "tenant admin", "other tenant's admin", "operator"}

func (w who) String() string { return whoNames[w] }

// fixture is a fresh store with two tenants and the matrix's principals:
//
//	acme  (API keys enabled, 1000 keys per user): dev, dev2 (developer), admin (tenant_admin),
//	      group g1 (unused), key devKey owned by dev
//	other (API keys enabled): oadmin (tenant_admin)
type fixture struct {
	t          testing.TB
	st         *store.Store
	h          *Handler
	tokens     [numWho]string // the Authorization bearer of each caller ("" for none)
	devTokenID string         // id of dev's active token
	devKey     *store.Key
	devSecret  string
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(store.Options{Dir: "db", FS: vfs.NewMem(), FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	st := openStore(t)
	fx := &fixture{t: t, st: st, h: New(st, Config{OperatorTokens: []string{"", testOperatorToken}})}
	for _, tenant := range []string{"acme", "other"} {
		must[*store.Tenant](t)(st.CreateTenant("test", store.TenantInput{ID: tenant, Name: tenant}))
		must[*store.Settings](t)(st.UpdateSettings("test", tenant, store.SettingsPatch{
			APIKeysEnabled: store.Some(true), MaxKeysPerUser: store.Some(1000)}))
	}
	token := func(tenant, user string, roles ...store.Role) (*store.Token, string) {
		must[*store.User](t)(st.PutUser("test", tenant, user, roles))
		tok, secret, err := st.CreateToken("test", tenant, user, store.TokenInput{Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		return tok, secret
	}
	var devTok *store.Token
	devTok, fx.tokens[developer] = token("acme", "dev", store.RoleDeveloper)
	fx.devTokenID = devTok.ID
	_, fx.tokens[otherDeveloper] = token("acme", "dev2", store.RoleDeveloper)
	_, fx.tokens[tenantAdmin] = token("acme", "admin", store.RoleTenantAdmin)
	_, fx.tokens[otherTenantAdmin] = token("other", "oadmin", store.RoleTenantAdmin)
	revoked, revokedSecret, err := st.CreateToken("test", "acme", "dev", store.TokenInput{Name: "old"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeToken("test", "acme", "dev", revoked.ID); err != nil {
		t.Fatal(err)
	}
	fx.tokens[revokedToken] = revokedSecret
	fx.tokens[badToken] = store.NewSecret(store.TokenPrefix)
	fx.tokens[operator] = testOperatorToken
	must[*store.Group](t)(st.PutGroup("test", "acme", "g1", store.GroupInput{Description: "group one"}))
	fx.devKey, fx.devSecret, err = st.CreateKey("test", "acme", "dev", store.KeyInput{Name: "dev key"})
	if err != nil {
		t.Fatal(err)
	}
	fx.tokens[gatewayKey] = fx.devSecret
	return fx
}

// response is a recorded answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request as the caller; body is JSON-encoded unless it is a
// string (sent as is) or nil.
func (fx *fixture) do(as who, method, path string, body any) *response {
	fx.t.Helper()
	return fx.doToken(fx.tokens[as], method, path, body)
}

func (fx *fixture) doToken(token, method, path string, body any) *response {
	fx.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			fx.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	fx.h.ServeHTTP(rec, req)
	return &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// decode unmarshals the body into v.
func (r *response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// apiErr is the error answer's content.
func (r *response) apiErr(t testing.TB) errorDetail {
	t.Helper()
	var b errorBody
	r.decode(t, &b)
	return b.Error
}

// want fails unless the status is status.
func (r *response) want(t testing.TB, status int) *response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	return r
}

// recordedRequest is a request with a raw Authorization header and its
// recorder, for header-level tests.
type recordedRequest struct {
	req *http.Request
	rec *httptest.ResponseRecorder
}

func httptestRequest(method, path, authorization string) recordedRequest {
	req := httptest.NewRequest(method, path, nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return recordedRequest{req: req, rec: httptest.NewRecorder()}
}

// recordingLogger is a store.Logger that keeps what it is given.
type recordingLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *recordingLogger) Infof(format string, args ...any) { l.add(format, args...) }

func (l *recordingLogger) Errorf(format string, args ...any) { l.add(format, args...) }

func (l *recordingLogger) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}
