package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keygate/keygate/store"
)

// Keeping secrets out of Caddy's logs (SPEC 3, PITFALLS 4).
//
// caddyhttp.Server clones every request before any handler runs and hands
// the clone, as the "request" field, to its access logger and to its error
// logger (a 502 from a dead upstream is logged at ERROR with the request
// headers, whether or not the site has a `log` directive). Caddy redacts
// Authorization, Cookie and Proxy-Authorization there (none of them with
// log_credentials on), not X-API-Key. No handler can reach that clone, and
// the log encoders are fixed before any app or handler is provisioned, so
// no config setting of ours could fix every log: a filter on one log is
// missed on the next one a user adds.
//
// So each api_key handler, while its server is provisioned (before it
// serves), wraps that server's access and error loggers in redactingCore,
// which rewrites the "request" field below every encoder (json, console,
// filter, any level, any output): the credential headers of every api_key
// on the server become REDACTED, and so does anything shaped like a keygate
// secret in any header or the URI, admitted or rejected. Caddy offers no
// exported hook for this, so the two unexported logger fields are set by
// reflection; if a Caddy upgrade renames them, Provision fails ("refuses
// the config") instead of logging secrets, and TestSecretNeverLogged fails.

// logRedactor is what one server's logs hide. It is filled while the
// server's handlers are provisioned, before the server serves, and only
// read afterwards.
type logRedactor struct {
	headers []string // canonical names of the credential headers
	bearer  bool     // some api_key on the server reads Authorization: Bearer
	params  []string // query parameters that carry keys (option query)
}

var redactedValue = []string{"REDACTED"}

// protectServerLogs makes srv's access and error logs redact header (none
// when "") and, with bearer, Authorization: Bearer values, and the value of
// the query parameter param (none when "") in the logged URI, in every
// request they record.
func protectServerLogs(srv *caddyhttp.Server, header string, bearer bool, param string) error {
	var fields [2]**zap.Logger
	for i, name := range []string{"errorLogger", "accessLogger"} {
		f := reflect.ValueOf(srv).Elem().FieldByName(name)
		if !f.IsValid() || f.Type() != reflect.TypeFor[*zap.Logger]() {
			return fmt.Errorf("this Caddy build has no caddyhttp.Server.%s, so keygate cannot keep API keys out of "+
				"its access and error logs and refuses the config: build keygate with the Caddy version in its go.mod", name)
		}
		fields[i] = (**zap.Logger)(unsafe.Pointer(f.UnsafeAddr()))
	}
	errLog := *fields[0]
	if errLog == nil {
		return fmt.Errorf("caddyhttp.Server has no error logger yet; keygate cannot protect its logs")
	}
	red := redactorOf(errLog)
	if red == nil {
		red = new(logRedactor)
		for _, p := range fields {
			if *p != nil { // the access logger is nil when the server has no access log
				*p = (*p).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
					return &redactingCore{Core: c, red: red}
				}))
			}
		}
	}
	if header != "" && !slices.Contains(red.headers, header) {
		red.headers = append(red.headers, header)
	}
	if param != "" && !slices.Contains(red.params, param) {
		red.params = append(red.params, param)
	}
	red.bearer = red.bearer || bearer
	return nil
}

func redactorOf(l *zap.Logger) *logRedactor {
	if c, ok := l.Core().(*redactingCore); ok {
		return c.red
	}
	return nil
}

// redactingCore rewrites request fields on their way to the wrapped core,
// whether they come through With (the server attaches the request with
// WithLazy) or with an entry.
type redactingCore struct {
	zapcore.Core
	red *logRedactor
}

func (c *redactingCore) With(fields []zapcore.Field) zapcore.Core {
	return &redactingCore{Core: c.Core.With(c.red.fields(fields)), red: c.red}
}

// Check defers the wrapped core's own decision (its cores filter by logger
// name) to Write, so that every entry goes through the rewrite.
func (c *redactingCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *redactingCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if inner := c.Core.Check(e, nil); inner != nil {
		inner.Write(c.red.fields(fields)...)
	}
	return nil
}

// fields returns fields with every logged request or header set redacted,
// copying the slice only when something changes.
func (r *logRedactor) fields(fields []zapcore.Field) []zapcore.Field {
	out := fields
	for i, f := range fields {
		if f.Type != zapcore.ObjectMarshalerType {
			continue
		}
		var v zapcore.ObjectMarshaler
		switch m := f.Interface.(type) {
		case caddyhttp.LoggableHTTPRequest:
			if m.Request == nil {
				continue
			}
			hdr, hc := r.header(m.Header, m.ShouldLogCredentials)
			uri, uc := scrubSecrets(m.RequestURI)
			uri, qc := scrubQueryParams(uri, r.params)
			if !hc && !uc && !qc {
				continue
			}
			req := m.WithContext(m.Context()) // shallow copy; the logged clone stays as it is
			req.Header, req.RequestURI = hdr, uri
			m.Request = req
			v = m
		case caddyhttp.LoggableHTTPHeader:
			hdr, changed := r.header(m.Header, m.ShouldLogCredentials)
			if !changed {
				continue
			}
			m.Header = hdr
			v = m
		default:
			continue
		}
		if &out[0] == &fields[0] {
			out = slices.Clone(fields)
		}
		out[i].Interface = v
	}
	return out
}

// header returns h with keygate's credential headers replaced by REDACTED
// and secret-shaped tokens in other values scrubbed, or h itself when
// nothing needs hiding. With log_credentials on Caddy shows Authorization;
// a Bearer value is still hidden when an api_key reads Bearer (Basic and
// others stay, as the operator asked).
func (r *logRedactor) header(h http.Header, logCredentials bool) (http.Header, bool) {
	var out http.Header
	for k, vv := range h {
		var nv []string
		if r.isCredentialHeader(k, vv, logCredentials) {
			nv = redactedValue
		} else {
			for i, v := range vv {
				if s, ok := scrubSecrets(v); ok {
					if nv == nil {
						nv = slices.Clone(vv)
					}
					nv[i] = s
				}
			}
		}
		if nv == nil {
			continue
		}
		if out == nil {
			out = h.Clone()
		}
		out[k] = nv
	}
	if out == nil {
		return h, false
	}
	return out, true
}

func (r *logRedactor) isCredentialHeader(k string, vv []string, logCredentials bool) bool {
	for _, name := range r.headers {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	if r.bearer && logCredentials && strings.EqualFold(k, authorization) {
		for _, v := range vv {
			if _, ok := bearerToken(v); ok {
				return true
			}
		}
	}
	return false
}

// scrubSecrets replaces every token shaped like a keygate secret
// (kg_… or kga_…, well-formed or not) in s with REDACTED.
func scrubSecrets(s string) (string, bool) {
	i := strings.Index(s, store.KeyPrefix+"_")
	j := strings.Index(s, store.TokenPrefix+"_")
	if i < 0 && j < 0 {
		return s, false
	}
	var b strings.Builder
	changed := false
	for k := 0; k < len(s); {
		n := secretAt(s, k)
		if n == 0 {
			b.WriteByte(s[k])
			k++
			continue
		}
		b.WriteString("REDACTED")
		k += n
		changed = true
	}
	if !changed {
		return s, false
	}
	return b.String(), true
}

// secretAt returns the length of a secret-shaped token starting at s[k]
// (a prefix and "_" at a word start, then base62 and "_"), or 0.
func secretAt(s string, k int) int {
	if k > 0 && isSecretByte(s[k-1]) {
		return 0
	}
	rest := s[k:]
	var n int
	switch {
	case strings.HasPrefix(rest, store.TokenPrefix+"_"):
		n = len(store.TokenPrefix) + 1
	case strings.HasPrefix(rest, store.KeyPrefix+"_"):
		n = len(store.KeyPrefix) + 1
	default:
		return 0
	}
	start := n
	for n < len(rest) && isSecretByte(rest[n]) {
		n++
	}
	if n-start < 8 { // "kg_x" in prose is not a secret; a truncated key of 8+ characters may be
		return 0
	}
	return n
}

func isSecretByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// debugLogRefusal names what would write a key to a DEBUG log that
// keygate cannot wrap: handlers log with their own loggers. reverse_proxy
// and its fastcgi transport log the upstream-bound request (the key, with
// strip_credentials off);
// rewrite (also used by uri and try_files) logs the whole request when it
// changes it, before api_key has stripped anything. Such a config is
// refused while that module's logger is enabled at DEBUG. The rewrite rule
// is per server, not per route order: a rewrite after api_key (which sees
// the key stripped) is refused too, which errs on the safe side.
func debugLogRefusal(ctx caddy.Context, srv *caddyhttp.Server, strip bool) error {
	debug := func(module string) bool {
		return ctx.Logger(loggerOf(module)).Core().Enabled(zapcore.DebugLevel)
	}
	if !strip && (debug("http.handlers.reverse_proxy") || debug("http.reverse_proxy.transport.fastcgi")) {
		return errors.New("strip_credentials off sends the key upstream, and reverse_proxy (and its fastcgi " +
			"transport) logs the upstream request's headers at DEBUG: set the log level to INFO or above, or " +
			"strip_credentials on")
	}
	if serverHasHandler(srv, "rewrite") && debug("http.handlers.rewrite") {
		return errors.New("this server rewrites requests (rewrite, uri or try_files), and the rewrite handler logs " +
			"the whole request, key header included, at DEBUG: set the log level to INFO or above")
	}
	return nil
}

// handlerNameJSON matches a handler's name in raw route JSON.
var handlerNameJSON = regexp.MustCompile(`"handler"\s*:\s*"([a-z0-9_.]+)"`)

// serverHasHandler reports whether any route of srv (primary, error or
// named) has a handler module of that name, at any depth. While the
// server is being provisioned, routes already loaded have Handlers and
// the others (including the one being loaded) still have HandlersRaw.
func serverHasHandler(srv *caddyhttp.Server, name string) bool {
	lists := []caddyhttp.RouteList{srv.Routes}
	if srv.Errors != nil {
		lists = append(lists, srv.Errors.Routes)
	}
	for _, rt := range srv.NamedRoutes {
		lists = append(lists, caddyhttp.RouteList{*rt})
	}
	for _, l := range lists {
		if routesHaveHandler(l, name) {
			return true
		}
	}
	return false
}

func routesHaveHandler(routes caddyhttp.RouteList, name string) bool {
	for _, rt := range routes {
		for _, raw := range rt.HandlersRaw {
			for _, m := range handlerNameJSON.FindAllSubmatch(raw, -1) {
				if string(m[1]) == name {
					return true
				}
			}
		}
		for _, h := range rt.Handlers {
			if caddy.GetModuleName(h) == name {
				return true
			}
			if sr, ok := h.(*caddyhttp.Subroute); ok && routesHaveHandler(sr.Routes, name) {
				return true
			}
		}
	}
	return false
}

// loggerOf names a module for ctx.Logger: the logger a module of that ID
// gets, to ask it which levels it writes.
type loggerOf string

func (m loggerOf) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: caddy.ModuleID(m), New: func() caddy.Module { return m }}
}
