package caddymodule

import (
	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/store"
)

// placeholderSet answers the spec's placeholders for one key. It is built
// once per cached key view (see decorate) so that admitting a request
// allocates nothing for them.
type placeholderSet struct {
	id, name, owner, group, tenant any
}

func (p *placeholderSet) replace(key string) (any, bool) {
	switch key {
	case "http.auth.user.id", "http.auth.api_key.id":
		return p.id, true
	case "http.auth.api_key.name":
		return p.name, true
	case "http.auth.api_key.owner":
		return p.owner, true
	case "http.auth.api_key.group":
		return p.group, true
	case "http.auth.api_key.tenant":
		return p.tenant, true
	}
	return nil, false
}

// decorate is the store's view hook: it runs once when a key view is built.
func decorate(v *store.KeyView) any {
	p := &placeholderSet{id: v.ID, name: v.Name, owner: v.Owner, group: v.Group, tenant: v.Tenant}
	return caddy.ReplacerFunc(p.replace)
}

func placeholdersOf(v *store.KeyView) caddy.ReplacerFunc {
	if f, ok := v.Extra.(caddy.ReplacerFunc); ok {
		return f
	}
	return decorate(v).(caddy.ReplacerFunc)
}
