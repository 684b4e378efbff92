package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/keygate/keygate/admin"
	"github.com/keygate/keygate/admin/console"
)

func init() {
	caddy.RegisterModule(AdminHandler{})
}

// AdminHandler serves keygate's admin REST API (/v1/…) on whatever site
// and path the operator mounts it, so it gets Caddy's TLS, and the
// management console at /console/ beside it. Requests it does not route
// answer 404 from the API itself.
type AdminHandler struct {
	// OperatorTokens are bearer tokens with every right. Placeholders such
	// as {env.KEYGATE_OPERATOR_TOKEN} are expanded; a token that expands to
	// the empty string is ignored (never "no token").
	OperatorTokens []string `json:"operator_tokens,omitempty"`
	// AuthFailureBurst is how many bad bearer tokens a client address
	// (Caddy's client_ip) may present before it is slowed down; one more
	// is allowed every AuthFailureInterval, and its requests in between
	// answer 429 with Retry-After. Defaults: 10 and 1s.
	AuthFailureBurst    int            `json:"auth_failure_burst,omitempty"`
	AuthFailureInterval caddy.Duration `json:"auth_failure_interval,omitempty"`
	// DisableConsole turns off the management console (SPEC section 8),
	// which is otherwise served at /console/ on this site: static pages
	// built into the binary that sign in with an admin token and call
	// this API. With it off, /console/ is an unknown path of the API (404).
	DisableConsole bool `json:"disable_console,omitempty"`

	shared  *shared
	tokens  []string
	logger  *zap.Logger
	api     *lazyAPI
	console *console.Handler
}

// lazyAPI builds the REST handler on first use: the store opens when the
// app starts, after handlers are provisioned.
type lazyAPI struct {
	once sync.Once
	h    http.Handler
	err  error
}

// CaddyModule returns the Caddy module information.
func (AdminHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_key_admin",
		New: func() caddy.Module { return new(AdminHandler) },
	}
}

// Provision expands the operator tokens and joins the api_keys app.
func (a *AdminHandler) Provision(ctx caddy.Context) error {
	appVal, err := ctx.App("api_keys")
	if err != nil {
		return fmt.Errorf("api_key_admin: %w", err)
	}
	if a.AuthFailureBurst < 0 || a.AuthFailureBurst > 1_000_000 {
		return fmt.Errorf("api_key_admin: auth_failure_burst %d: give 1–1000000", a.AuthFailureBurst)
	}
	if d := time.Duration(a.AuthFailureInterval); d < 0 || d > time.Hour {
		return fmt.Errorf("api_key_admin: auth_failure_interval %s: give a duration up to 1h", d)
	}
	a.shared = appVal.(*App).shared
	a.logger = ctx.Logger()
	a.api = new(lazyAPI)
	if !a.DisableConsole {
		a.console = console.New(consolePrefix)
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		// Operator and user tokens arrive as Bearer: hidden from this
		// server's logs even with log_credentials on.
		if err := protectServerLogs(srv, "", true, ""); err != nil {
			return fmt.Errorf("api_key_admin: %w", err)
		}
	}
	repl := caddy.NewReplacer()
	for i, t := range a.OperatorTokens {
		v := repl.ReplaceAll(t, "")
		if v == "" {
			a.logger.Warn("operator token is empty after expanding placeholders; ignored", zap.Int("index", i))
			continue
		}
		if len(v) < 16 {
			return fmt.Errorf("api_key_admin: operator_token %d is shorter than 16 characters", i)
		}
		a.tokens = append(a.tokens, v)
	}
	return nil
}

// consolePrefix is where the console is served on the admin site.
const consolePrefix = "/console/"

func (a *AdminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if a.console != nil && a.console.Matches(r.URL.Path) {
		a.console.ServeHTTP(w, r)
		return nil
	}
	api := a.api
	api.once.Do(func() {
		st, err := a.shared.store()
		if err != nil {
			api.err = err
			return
		}
		api.h = admin.New(st, admin.Config{
			OperatorTokens: a.tokens,
			Logger:         adminLogger{a.logger.Sugar()},
			ClientIP:       adminClientIP,
			OnAuthFailure:  a.shared.adminAuth.inc,

			AuthFailureBurst:    a.AuthFailureBurst,
			AuthFailureInterval: time.Duration(a.AuthFailureInterval),
		})
	})
	if api.h == nil {
		a.logger.Error("api key store unavailable", zap.Error(api.err))
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("api key store unavailable"))
	}
	api.h.ServeHTTP(w, r)
	return nil
}

// adminClientIP is Caddy's client_ip (which honours trusted_proxies): the
// address the admin API throttles failed authentications by. A request
// that did not come through Caddy's server has none; its peer is used.
func adminClientIP(r *http.Request) string {
	if s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); s != "" {
		return s
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// adminLogger sends the admin API's log lines (storage errors, failed
// authentications as warnings) to the handler's logger. The admin API is
// rebuilt with each config, so holding this config's logger is right.
type adminLogger struct{ l *zap.SugaredLogger }

func (a adminLogger) Infof(format string, args ...any)  { a.l.Infof(format, args...) }
func (a adminLogger) Warnf(format string, args ...any)  { a.l.Warnf(format, args...) }
func (a adminLogger) Errorf(format string, args ...any) { a.l.Errorf(format, args...) }

// Interface guards
var (
	_ caddy.Provisioner           = (*AdminHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*AdminHandler)(nil)
)
