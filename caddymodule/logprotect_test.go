package caddymodule

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keygate/keygate/store"
)

// TestSecretNeverLogged: sites with a plain `log` directive (no filter) and
// a DEBUG default logger; secrets in X-API-Key, Bearer, a custom header and
// an unrelated header, for admitted, rejected and upstream-error (502)
// requests; no line of any log contains any of them. Once with JSON logs,
// once with console logs, log_credentials on and handle_errors (rejections
// then go through the error log too).
func TestSecretNeverLogged(t *testing.T) {
	for _, v := range []struct {
		name, format, servers, errors string
	}{
		{name: "json"},
		{
			name:    "console, log_credentials, handle_errors",
			format:  "format console",
			servers: "servers {\n\t\tlog_credentials\n\t}",
			errors:  "handle_errors {\n\t\trespond \"{err.status_code} {http.auth.api_key.error}\"\n\t}",
		},
	} {
		t.Run(v.name, func(t *testing.T) { secretNeverLogged(t, v.format, v.servers, v.errors) })
	}
}

func secretNeverLogged(t *testing.T, format, servers, handleErrors string) {
	up := echoUpstream(t)
	dir := t.TempDir()
	defaultLog := filepath.Join(dir, "default.log")
	accessDead := filepath.Join(dir, "access-dead.log")
	accessLive := filepath.Join(dir, "access-live.log")
	portDead, portLive, deadUpstream := freePort(t), freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %[1]s/caddy
	api_keys {
		storage %[1]s/keys
	}
	log default {
		output file %[2]s
		level DEBUG
		%[8]s
	}
	%[9]s
}
http://127.0.0.1:%[4]d {
	bind 127.0.0.1
	log {
		output file %[3]s
		%[8]s
	}
	api_key
	reverse_proxy 127.0.0.1:%[6]d
	%[10]s
}
http://127.0.0.1:%[5]d {
	bind 127.0.0.1
	log {
		output file %[11]s
		%[8]s
	}
	api_key {
		header X-Custom-Key
	}
	reverse_proxy %[7]s
	%[10]s
}`, dir, defaultLog, accessDead, portDead, portLive, deadUpstream, up.Listener.Addr(), format, servers, handleErrors, accessLive))
	st := sharedStore(t, filepath.Join(dir, "keys"))
	enable(t, st, store.DefaultTenant)
	_, valid := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	_, revoked := newKey(t, st, store.DefaultTenant, store.KeyInput{})
	if _, err := st.RevokeKey("test", store.DefaultTenant, mustID(t, st, revoked)); err != nil {
		t.Fatal(err)
	}
	unknown := store.NewSecret(store.KeyPrefix)
	token := store.NewSecret(store.TokenPrefix)
	secrets := []string{valid, revoked, unknown, token, valid[:len(valid)-3] + "zzz"}

	dead := fmt.Sprintf("http://127.0.0.1:%d/", portDead)
	live := fmt.Sprintf("http://127.0.0.1:%d/", portLive)
	statuses := map[int]int{}
	for _, s := range secrets {
		for _, req := range []struct {
			url string
			hdr http.Header
		}{
			{dead, http.Header{"X-Api-Key": {s}}},
			{dead, http.Header{"Authorization": {"Bearer " + s}}},
			{dead, http.Header{"X-Api-Key": {s, s}}},
			{dead, http.Header{"X-Unrelated": {"token=" + s}}},
			{live, http.Header{"X-Custom-Key": {s}}},
			{live, http.Header{"Authorization": {"bearer " + s}}},
			{live, http.Header{"X-Api-Key": {s}}}, // not this site's header: rejected, still hidden
		} {
			r := doHeader(t, req.url+"path?q="+s[:4], req.hdr)
			statuses[r.status]++
		}
	}
	if statuses[200] == 0 || statuses[401] == 0 || statuses[502] == 0 {
		t.Fatalf("statuses %v: want admitted, rejected and upstream errors", statuses)
	}
	if err := caddy.Stop(); err != nil { // flush the log files
		t.Fatal(err)
	}

	lines := map[string]int{}
	redacted := false
	for _, f := range []string{defaultLog, accessDead, accessLive} {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			lines[f]++
			redacted = redacted || strings.Contains(line, "REDACTED")
			for _, s := range secrets {
				// The 22 random characters identify the secret; the test's
				// truncated copy shares them with the valid key.
				if random := s[strings.IndexByte(s, '_')+1:][:22]; strings.Contains(line, random) {
					t.Errorf("%s logs a secret: %s", filepath.Base(f), line)
				}
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{defaultLog, accessDead, accessLive} {
		if lines[f] == 0 {
			t.Errorf("%s is empty: the test would prove nothing", filepath.Base(f))
		}
	}
	if !redacted {
		t.Error("no log line shows a redacted header: the headers were not logged at all")
	}
	b, _ := os.ReadFile(defaultLog)
	if !strings.Contains(string(b), "502") {
		t.Errorf("the default log has no 502 line")
	}
	if !strings.Contains(string(b), "http.log.error") {
		t.Errorf("the default log has no error log line")
	}
}

// nameFilter passes only entries of one logger name, as Caddy's cores with
// include/exclude do in Check.
type nameFilter struct {
	zapcore.Core
	name string
}

func (f nameFilter) With(fields []zapcore.Field) zapcore.Core {
	return nameFilter{f.Core.With(fields), f.name}
}

func (f nameFilter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.LoggerName != f.name {
		return ce
	}
	return f.Core.Check(e, ce)
}

// TestRedactingCore: the request is redacted whether it comes with the
// entry or through With (as Caddy's server attaches it), the wrapped
// core's own filtering still decides, and the logged request is not
// modified.
func TestRedactingCore(t *testing.T) {
	secret := store.NewSecret(store.KeyPrefix)
	var buf strings.Builder
	inner := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&buf), zapcore.DebugLevel)
	red := &logRedactor{headers: []string{"X-Custom-Key"}, bearer: true}
	log := zap.New(&redactingCore{Core: nameFilter{inner, "keep"}, red: red})

	req := httptest.NewRequest("GET", "http://gw/x?token="+secret+"&kg_=1", nil)
	req.Header.Set("X-Custom-Key", "not-shaped-like-a-key")
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("X-Other", "a "+secret[:20]+" b")
	req.Header.Set("Proxy-Authorization", "Basic dXNlcjpwYXNz")
	field := zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: req, ShouldLogCredentials: true})

	log.Named("keep").Info("with the entry", field)
	log.Named("keep").WithLazy(field).Info("through With")
	log.Named("drop").Info("filtered out", field)
	log.Named("keep").Info("headers", zap.Object("h", caddyhttp.LoggableHTTPHeader{Header: req.Header, ShouldLogCredentials: true}))

	out := buf.String()
	if n := strings.Count(out, "\n"); n != 3 {
		t.Fatalf("%d lines, want 3 (the name filter must still apply):\n%s", n, out)
	}
	if strings.Contains(out, secret[3:20]) || strings.Contains(out, "not-shaped-like-a-key") {
		t.Fatalf("secret logged:\n%s", out)
	}
	for _, want := range []string{`"X-Custom-Key":["REDACTED"]`, `"Authorization":["REDACTED"]`, `"X-Other":["a REDACTED b"]`,
		`"Proxy-Authorization":["Basic dXNlcjpwYXNz"]`, `token=REDACTED&kg_=1`} {
		if strings.Count(out, want) < 2 {
			t.Errorf("want %s in both request lines:\n%s", want, out)
		}
	}
	if req.Header.Get("X-Custom-Key") != "not-shaped-like-a-key" || !strings.Contains(req.RequestURI, secret) {
		t.Error("the logged request itself was modified")
	}
}

func TestScrubSecrets(t *testing.T) {
	key, tok := store.NewSecret(store.KeyPrefix), store.NewSecret(store.TokenPrefix)
	for in, want := range map[string]string{
		"plain":                       "plain",
		"a kg_short b":                "a kg_short b",
		"Bearer " + key:               "Bearer REDACTED",
		key + "," + tok:               "REDACTED,REDACTED",
		"/p?k=" + key[:15] + "&x=1":   "/p?k=REDACTED&x=1",
		"pkg_name_is_not_a_secret_no": "pkg_name_is_not_a_secret_no",
	} {
		if got, _ := scrubSecrets(in); got != want {
			t.Errorf("scrubSecrets(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAdminTokenNeverLogged: the api_key_admin site's logs hide operator
// and user tokens even with log_credentials on and a plain log directive.
func TestAdminTokenNeverLogged(t *testing.T) {
	dir := t.TempDir()
	access, defaultLog := filepath.Join(dir, "access.log"), filepath.Join(dir, "default.log")
	port := freePort(t)
	const op = "admin-log-operator-token-42"
	wrong := "wrong-operator-token-4242"
	t.Setenv("KEYGATE_TEST_OP", op)
	startCaddy(t, fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %[1]s/caddy
	api_keys {
		storage %[1]s/keys
	}
	log default {
		output file %[2]s
		level DEBUG
	}
	servers {
		log_credentials
	}
}
http://127.0.0.1:%[4]d {
	bind 127.0.0.1
	log {
		output file %[3]s
	}
	api_key_admin {
		operator_token {env.KEYGATE_TEST_OP}
	}
}`, dir, defaultLog, access, port))
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/me", port)
	if r := get(t, url, map[string]string{"Authorization": "Bearer " + op}); r.status != 200 {
		t.Fatalf("operator: %d %s", r.status, r.body)
	}
	if r := get(t, url, map[string]string{"Authorization": "Bearer " + wrong}); r.status != 401 {
		t.Fatalf("wrong token: %d %s", r.status, r.body)
	}
	if r := get(t, url, map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}); r.status != 401 {
		t.Fatalf("basic: %d %s", r.status, r.body)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(access)
	if err != nil || len(b) == 0 {
		t.Fatalf("access log: %v (%d bytes)", err, len(b))
	}
	d, _ := os.ReadFile(defaultLog)
	for _, s := range []string{op, wrong} {
		if strings.Contains(string(b), s) || strings.Contains(string(d), s) {
			t.Errorf("a token reached the logs")
		}
	}
	if !strings.Contains(string(b), "dXNlcjpwYXNz") {
		t.Error("log_credentials on: Basic credentials should be logged as the operator asked (the headers were not logged?)")
	}
}
