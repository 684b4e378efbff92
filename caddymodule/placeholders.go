package caddymodule

import (
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/store"
)

// placeholderSet answers the spec's placeholders for one key. It is built
// once per cached key view (see decorate). The values are boxed as `any` on
// the first lookup, not when the view is built: a cache of 100k views with
// pre-boxed values held five extra heap objects per key for the garbage
// collector to mark, whether or not the config used any placeholder. The
// boxed values live in their own array, made on that first lookup, so that
// the set every cached view carries is two words (16 bytes, not the 112 of
// a sync.Once and the array inline: 10 MB of live heap less with 100k
// cached views). Once boxed, answering allocates nothing.
type placeholderSet struct {
	view  *store.KeyView
	boxed atomic.Pointer[[phCount]any]
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
	b := p.boxed.Load()
	if b == nil {
		// Requests racing here may each box; one array wins, and the
		// values are equal either way.
		v := p.view
		b = &[phCount]any{phID: v.ID, phName: v.Name, phOwner: v.Owner, phGroup: v.Group, phTenant: v.Tenant}
		if !p.boxed.CompareAndSwap(nil, b) {
			b = p.boxed.Load()
		}
	}
	return b[i], true
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
