package caddymodule

import (
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/store"
)

// placeholderSet answers the spec's placeholders for one key. It is built
// once per cached key view (see decorate). The values are boxed as `any` on
// the first lookup, not when the view is built: a cache of 100k views with
// pre-boxed values held five extra heap objects per key for the garbage
// collector to mark, whether or not the config used any placeholder. Once
// boxed, answering allocates nothing.
type placeholderSet struct {
	view  *store.KeyView
	once  sync.Once
	boxed [phCount]any
}

// Indexes into placeholderSet.boxed.
const (
	phID = iota
	phName
	phOwner
	phGroup
	phTenant
	phCount
)

func (p *placeholderSet) replace(key string) (any, bool) {
	var i int
	switch key {
	case "http.auth.user.id", "http.auth.api_key.id":
		i = phID
	case "http.auth.api_key.name":
		i = phName
	case "http.auth.api_key.owner":
		i = phOwner
	case "http.auth.api_key.group":
		i = phGroup
	case "http.auth.api_key.tenant":
		i = phTenant
	default:
		return nil, false
	}
	p.once.Do(func() {
		v := p.view
		p.boxed = [phCount]any{phID: v.ID, phName: v.Name, phOwner: v.Owner, phGroup: v.Group, phTenant: v.Tenant}
	})
	return p.boxed[i], true
}

// decorate is the store's view hook: it runs once when a key view is built.
func decorate(v *store.KeyView) any {
	p := &placeholderSet{view: v}
	return caddy.ReplacerFunc(p.replace)
}

func placeholdersOf(v *store.KeyView) caddy.ReplacerFunc {
	if f, ok := v.Extra.(caddy.ReplacerFunc); ok {
		return f
	}
	return decorate(v).(caddy.ReplacerFunc)
}
