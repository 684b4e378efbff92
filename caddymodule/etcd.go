package caddymodule

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/keygate/keygate/store"
)

// EtcdConfig puts the key store in an etcd cluster that several keygate
// nodes share (SPEC section 7) instead of the embedded Pebble store.
//
//	etcd {
//	    endpoints     127.0.0.1:2379 …   # required
//	    prefix        /keygate/          # default
//	    max_staleness 2s                 # default
//	    username      <name>
//	    password      <password>         # e.g. {env.ETCD_PASSWORD}
//	    tls {
//	        ca   <file>
//	        cert <file>
//	        key  <file>
//	    }
//	}
type EtcdConfig struct {
	// Endpoints are the cluster's client addresses: host:port, or
	// https://host:port with TLS. Required.
	Endpoints []string `json:"endpoints,omitempty"`

	// Prefix namespaces every key keygate writes. Default "/keygate/";
	// it must start and end with "/".
	Prefix string `json:"prefix,omitempty"`

	// MaxStaleness is how long a node cut off from etcd may go on
	// admitting from what it knows. Default 2s. A node that has not heard
	// from etcd (lease renewed, watch caught up) for this long answers 503
	// unavailable until it has; a revoke, rotation without grace, delete
	// or tenant disable answers once every other live node has applied it,
	// waiting at most this long. Every etcd call has this deadline too.
	MaxStaleness caddy.Duration `json:"max_staleness,omitempty"`

	// Username and Password authenticate to an etcd with auth enabled
	// (placeholders such as {env.ETCD_PASSWORD} are expanded).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// TLS are the files of a TLS connection to etcd.
	TLS *EtcdTLS `json:"tls,omitempty"`
}

// EtcdTLS names PEM files, as etcdctl's --cacert, --cert and --key.
type EtcdTLS struct {
	// CA verifies etcd's certificate (default: the system's roots).
	CA string `json:"ca,omitempty"`
	// Cert and Key are this node's client certificate (mutual TLS).
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// DefaultMaxStaleness is max_staleness's default.
const DefaultMaxStaleness = 2 * time.Second

func (e *EtcdConfig) validate() error {
	if len(e.Endpoints) == 0 {
		return fmt.Errorf("api_keys: etcd: endpoints is required")
	}
	for _, ep := range e.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			return fmt.Errorf("api_keys: etcd: endpoints: %w", err)
		}
	}
	if e.Prefix != "" && (!strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || len(e.Prefix) < 2) {
		return fmt.Errorf("api_keys: etcd: prefix must start and end with / (e.g. /keygate/), got %q", e.Prefix)
	}
	if e.MaxStaleness < 0 || e.MaxStaleness > 0 && time.Duration(e.MaxStaleness) < 100*time.Millisecond {
		return fmt.Errorf("api_keys: etcd: max_staleness must be at least 100ms, got %s", time.Duration(e.MaxStaleness))
	}
	if e.Password != "" && e.Username == "" {
		return fmt.Errorf("api_keys: etcd: password without username")
	}
	if t := e.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
		return fmt.Errorf("api_keys: etcd: tls: cert and key go together")
	}
	return nil
}

// checkEndpoint accepts host:port and http(s)://host:port.
func checkEndpoint(ep string) error {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("%q: want host:port or https://host:port", ep)
		}
		hostport = u.Host
	}
	i := strings.LastIndex(hostport, ":")
	if i <= 0 || i == len(hostport)-1 {
		return fmt.Errorf("%q: want host:port", ep)
	}
	return nil
}

// storeConfig is the store's view, with placeholders expanded.
func (e *EtcdConfig) storeConfig(repl *caddy.Replacer) store.EtcdConfig {
	c := store.EtcdConfig{
		Endpoints: append([]string(nil), e.Endpoints...),
		Prefix:    e.Prefix,
		Username:  repl.ReplaceAll(e.Username, ""),
		Password:  repl.ReplaceAll(e.Password, ""),
		Timeout:   time.Duration(e.MaxStaleness),
		Logger:    zapLogger{},
	}
	if c.Prefix == "" {
		c.Prefix = store.DefaultEtcdPrefix
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultMaxStaleness
	}
	c.MaxStaleness = c.Timeout // liveness and acknowledged revocation (store/liveness.go)
	if e.TLS != nil {
		c.CAFile, c.CertFile, c.KeyFile = repl.ReplaceAll(e.TLS.CA, ""), repl.ReplaceAll(e.TLS.Cert, ""), repl.ReplaceAll(e.TLS.Key, "")
	}
	return c
}

// poolKey names the shared store of this cluster and prefix.
func (e *EtcdConfig) poolKey() string {
	p := e.Prefix
	if p == "" {
		p = store.DefaultEtcdPrefix
	}
	return "etcd:" + strings.Join(e.Endpoints, ",") + p
}

// defaultNodeID is node_id's default: the host name.
func defaultNodeID() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("api_keys: node_id: no host name (%v): set node_id", err)
	}
	if err := store.CheckNodeID(h); err != nil {
		return "", fmt.Errorf("api_keys: node_id: the host name is not usable (%v): set node_id", err)
	}
	return h, nil
}

// unmarshalEtcd reads the etcd block of the api_keys option.
func unmarshalEtcd(d *caddyfile.Dispenser) (*EtcdConfig, error) {
	e := new(EtcdConfig)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "endpoints":
			e.Endpoints = append(e.Endpoints, d.RemainingArgs()...)
			if len(e.Endpoints) == 0 {
				return nil, d.Errf("etcd endpoints: want at least one host:port")
			}
			for _, ep := range e.Endpoints {
				if err := checkEndpoint(ep); err != nil {
					return nil, d.Errf("etcd endpoints: %v", err)
				}
			}
			continue
		case "tls":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			e.TLS = new(EtcdTLS)
			for n := d.Nesting(); d.NextBlock(n); {
				field := d.Val()
				if !d.NextArg() {
					return nil, d.ArgErr()
				}
				switch field {
				case "ca":
					e.TLS.CA = d.Val()
				case "cert":
					e.TLS.Cert = d.Val()
				case "key":
					e.TLS.Key = d.Val()
				default:
					return nil, d.Errf("unknown etcd tls option %q (want ca, cert, key)", field)
				}
				if d.NextArg() {
					return nil, d.ArgErr()
				}
			}
			continue
		}
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		val := d.Val()
		switch opt {
		case "prefix":
			e.Prefix = val
		case "max_staleness":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur < 100*time.Millisecond {
				return nil, d.Errf("etcd max_staleness: want a duration of at least 100ms, got %q", val)
			}
			e.MaxStaleness = caddy.Duration(dur)
		case "username":
			e.Username = val
		case "password":
			e.Password = val
		default:
			return nil, d.Errf("unknown etcd option %q", opt)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	if err := e.validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return e, nil
}
