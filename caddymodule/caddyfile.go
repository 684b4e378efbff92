package caddymodule

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/keygate/keygate/store"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("api_keys", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("api_key", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("api_key", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("api_key_admin", parseAdmin)
	httpcaddyfile.RegisterDirectiveOrder("api_key_admin", httpcaddyfile.Before, "reverse_proxy")
}

// parseGlobalOption sets up the api_keys app:
//
//	api_keys {
//	    storage        <dir>
//	    cache          <entries>
//	    block_cache    <MiB>
//	    negative_cache <entries>
//	    negative_ttl   <duration>
//	    flush_interval <duration>
//	    event_retention <duration>|off
//	    pepper         <secret>
//	    disk_reserve   <size>|off   # e.g. 256MiB, 1GB; default 256MiB
//	    etcd {                      # several nodes: see EtcdConfig
//	        endpoints <host:port...>
//	        …
//	    }
//	    node_id        <name>       # with etcd; default: the host name
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "api_keys", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile reads the api_keys global option block.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if opt == "etcd" {
			e, err := unmarshalEtcd(d)
			if err != nil {
				return err
			}
			a.Etcd = e
			continue
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		switch opt {
		case "node_id":
			if err := store.CheckNodeID(val); err != nil || val == "" {
				return d.Errf("node_id: %v", err)
			}
			a.NodeID = val
		case "storage":
			a.Storage = val
		case "pepper":
			a.Pepper = val
		case "block_cache":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 1 || n > 1<<20 {
				return d.Errf("block_cache: want a size in MiB, got %q", val)
			}
			a.BlockCacheMB = n
		case "cache", "negative_cache":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 1 {
				return d.Errf("%s: want a positive number of entries, got %q", opt, val)
			}
			if opt == "cache" {
				a.CacheEntries = n
			} else {
				a.NegativeCacheEntries = n
			}
		case "disk_reserve":
			if val == "off" {
				a.DiskReserve = -1
				break
			}
			n, err := humanize.ParseBytes(val)
			if err != nil || n == 0 || n > math.MaxInt64 {
				return d.Errf("disk_reserve: want a size such as 256MiB or 1GB, or off; got %q", val)
			}
			a.DiskReserve = int64(n)
		case "negative_ttl", "flush_interval":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("%s: want a positive duration, got %q", opt, val)
			}
			if opt == "negative_ttl" {
				a.NegativeTTL = caddy.Duration(dur)
			} else {
				a.FlushInterval = caddy.Duration(dur)
			}
		case "event_retention":
			if val == "off" {
				a.EventRetention = -1 // keep forever
				break
			}
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur < store.MinEventRetention {
				return d.Errf("event_retention: want a duration of at least %s (e.g. 90d) or off, got %q", store.Duration(store.MinEventRetention), val)
			}
			a.EventRetention = caddy.Duration(dur)
		default:
			return d.Errf("unknown api_keys option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile reads the api_key directive:
//
//	api_key [<matcher>] {
//	    tenant            <id>
//	    header            <name>
//	    bearer            on|off
//	    query             <param>
//	    strip_credentials on|off
//	    allow_groups      <group...>
//	    cors              <origin...>|*
//	    realm             <name>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "tenant", "header", "realm", "query":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch opt {
			case "tenant":
				h.Tenant = d.Val()
			case "header":
				h.Header = d.Val()
			case "query":
				if err := validQueryParam(d.Val()); err != nil {
					return d.Errf("query %q: %v", d.Val(), err)
				}
				h.Query = d.Val()
			default:
				if err := validRealm(d.Val()); err != nil {
					return d.Errf("realm %q: %v", d.Val(), err)
				}
				h.Realm = d.Val()
			}
		case "bearer", "strip_credentials":
			on, err := onOff(d)
			if err != nil {
				return err
			}
			if opt == "bearer" {
				h.Bearer = &on
			} else {
				h.StripCredentials = &on
			}
		case "cors":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, o := range args {
				if o == "*" {
					continue
				}
				if _, err := normalOrigin(o); err != nil {
					return d.Errf("cors origin %q: %v", o, err)
				}
			}
			h.CORS = append(h.CORS, args...)
			continue
		case "allow_groups":
			h.AllowGroups = append(h.AllowGroups, d.RemainingArgs()...)
			if len(h.AllowGroups) == 0 {
				return d.ArgErr()
			}
			continue
		default:
			return d.Errf("unknown api_key option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func onOff(d *caddyfile.Dispenser) (bool, error) {
	if !d.NextArg() {
		return false, d.ArgErr()
	}
	switch d.Val() {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("want on or off, got %q", d.Val())
}

func parseAdmin(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(AdminHandler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile reads the api_key_admin directive:
//
//	api_key_admin [<matcher>] {
//	    operator_token <token>   # repeatable; placeholders such as {env.X} work
//	    auth_failures <burst> <interval>   # default 10 1s: bad tokens per client address before 429
//	    console on|off           # the management console at /console/ (default on)
//	}
func (a *AdminHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "operator_token":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.OperatorTokens = append(a.OperatorTokens, d.Val())
			if d.NextArg() {
				return d.ArgErr()
			}
		case "auth_failures":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return d.Errf("auth_failures: burst %q is not a positive integer", args[0])
			}
			iv, err := caddy.ParseDuration(args[1])
			if err != nil || iv <= 0 {
				return d.Errf("auth_failures: interval %q is not a positive duration", args[1])
			}
			a.AuthFailureBurst, a.AuthFailureInterval = n, caddy.Duration(iv)
		case "console":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch d.Val() {
			case "on":
				a.DisableConsole = false
			case "off":
				a.DisableConsole = true
			default:
				return d.Errf("console: %q is neither on nor off", d.Val())
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown api_key_admin option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*AdminHandler)(nil)
)
