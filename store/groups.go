package store

import (
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// GroupInput creates or replaces a group.
type GroupInput struct {
	Description string     `json:"description"`
	Rules       []Rule     `json:"rules"`
	RateLimit   *RateLimit `json:"rate_limit"`
}

var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
	http.MethodConnect: true, http.MethodTrace: true,
}

func checkGroup(f fieldErrors, in *GroupInput) {
	checkText(f, "description", in.Description, 0, DescriptionMax)
	if len(in.Rules) > RulesMax {
		f.add("rules", fmt.Sprintf("at most %d rules", RulesMax))
	}
	for i, r := range in.Rules {
		if len(r.Methods) > GroupRuleEntryMax || len(r.Paths) > GroupRuleEntryMax {
			f.add(fmt.Sprintf("rules[%d]", i), fmt.Sprintf("at most %d methods and %d paths", GroupRuleEntryMax, GroupRuleEntryMax))
			continue
		}
		for j, m := range r.Methods {
			if !httpMethods[strings.ToUpper(m)] {
				f.add(fmt.Sprintf("rules[%d].methods[%d]", i, j), fmt.Sprintf("%q is not an HTTP method", truncate(m, 32)))
			}
			in.Rules[i].Methods[j] = strings.ToUpper(m)
		}
		for j, p := range r.Paths {
			if !strings.HasPrefix(p, "/") || len(p) > 1024 {
				f.add(fmt.Sprintf("rules[%d].paths[%d]", i, j), "must start with / and be at most 1024 bytes")
				continue
			}
			if _, err := path.Match(p, "/"); err != nil {
				f.add(fmt.Sprintf("rules[%d].paths[%d]", i, j), "is not a valid pattern")
			}
		}
	}
	if rl := in.RateLimit; rl != nil {
		if !(rl.RequestsPerSecond >= minRequestsPerSec && rl.RequestsPerSecond <= maxRequestsPerSec) {
			f.add("rate_limit.requests_per_second", "must be from "+strconv.FormatFloat(minRequestsPerSec, 'f', -1, 64)+" to "+strconv.FormatFloat(maxRequestsPerSec, 'f', -1, 64))
		}
		if rl.Burst < 1 || rl.Burst > maxBurst {
			f.add("rate_limit.burst", fmt.Sprintf("must be 1–%d", maxBurst))
		}
	}
}

// PutGroup creates or replaces a group. Keys of the group see the change on
// their next request.
func (s *Store) PutGroup(actor, tenant, name string, in GroupInput) (*Group, error) {
	f := fieldErrors{}
	checkID(f, "group", name)
	in.Rules = cloneRules(in.Rules) // checkGroup normalises; never the caller's slices
	checkGroup(f, &in)
	if err := f.err(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	g := Group{Name: name, Tenant: tenant, Description: in.Description, Rules: in.Rules, RateLimit: in.RateLimit, CreatedAt: now, UpdatedAt: now}
	if g.Rules == nil {
		g.Rules = []Rule{}
	}
	typ := "group.created"
	detail := map[string]any{"group": name}
	if old, err := s.GetGroup(tenant, name); err == nil {
		g.CreatedAt = old.CreatedAt
		typ = "group.updated"
		var ch changes
		ch.add("description", old.Description, g.Description)
		ch.add("rules", old.Rules, g.Rules)
		ch.add("rate_limit", old.RateLimit, g.RateLimit)
		detail = ch.detail(detail)
	} else if KindOf(err) != KindNotFound {
		return nil, err
	}
	var b Batch
	b.Set(k(pGroup+tenant, name), mustJSON(g))
	s.event(&b, now, tenant, typ, actor, "", detail)
	if err := s.apply(&b); err != nil {
		return nil, err
	}
	return &g, nil
}

func cloneRules(rules []Rule) []Rule {
	if rules == nil {
		return nil
	}
	out := make([]Rule, len(rules))
	for i, r := range rules {
		out[i] = Rule{Methods: cloneStrings(r.Methods), Paths: cloneStrings(r.Paths)}
	}
	return out
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append(make([]string, 0, len(s)), s...)
}

// GetGroup returns a group of the tenant.
func (s *Store) GetGroup(tenant, name string) (*Group, error) {
	return getRecord[Group](s, k(pGroup+tenant, name), "group", name)
}

// ListGroups returns the tenant's groups in name order.
func (s *Store) ListGroups(tenant, cursor string, limit int) ([]*Group, string, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, "", err
	}
	var out []*Group
	err := scanPage(s.kv, pGroup+tenant+"/", cursor, limit, &out, func(g *Group) string { return g.Name })
	if err != nil {
		return nil, "", fmt.Errorf("list groups: %w", err)
	}
	return pageOf(out, limit, func(g *Group) string { return g.Name })
}

// DeleteGroup deletes a group no key uses.
func (s *Store) DeleteGroup(actor, tenant, name string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.GetGroup(tenant, name); err != nil {
		return err
	}
	st, err := s.settingsOf(tenant)
	if err != nil {
		return err
	}
	if st.DefaultGroup != nil && *st.DefaultGroup == name {
		return conflict("group %q is the tenant's default_group; change default_group first", name)
	}
	inUse := 0
	if err := s.scanTenantKeys(tenant, func(r *keyRecord) bool {
		if r.Group == name {
			inUse++
		}
		return true
	}); err != nil {
		return err
	}
	if inUse > 0 {
		return conflict("group %q is used by %d key(s)", name, inUse)
	}
	now := s.now().UTC()
	var b Batch
	b.Delete(k(pGroup+tenant, name))
	s.event(&b, now, tenant, "group.deleted", actor, "", map[string]any{"group": name})
	return s.apply(&b)
}

// GroupView is a group compiled for the hot path. Never mutated once built.
type GroupView struct {
	Name      string
	RateLimit *RateLimit
	rules     []compiledRule
}

type compiledRule struct {
	methods []string
	paths   []pathPattern
}

// pathPattern: a trailing "*" is a prefix match (as in Caddy's path
// matcher, "/orders/*" matches "/orders/1/items"); anything else is
// path.Match, where "*" stays within one segment.
type pathPattern struct {
	prefix string
	glob   string
}

func compileGroup(g *Group) *GroupView {
	v := &GroupView{Name: g.Name, RateLimit: g.RateLimit}
	for _, r := range g.Rules {
		cr := compiledRule{methods: r.Methods}
		for _, p := range r.Paths {
			if strings.HasSuffix(p, "*") && !strings.ContainsAny(p[:len(p)-1], "*?[\\") {
				cr.paths = append(cr.paths, pathPattern{prefix: p[:len(p)-1]})
			} else {
				cr.paths = append(cr.paths, pathPattern{glob: p})
			}
		}
		v.rules = append(v.rules, cr)
	}
	return v
}

// Allows reports whether a request with the method and (cleaned) path is
// allowed by the group's rules. No rules allow everything.
func (g *GroupView) Allows(method, reqPath string) bool {
	if len(g.rules) == 0 {
		return true
	}
	for _, r := range g.rules {
		if r.matchMethod(method) && r.matchPath(reqPath) {
			return true
		}
	}
	return false
}

func (r *compiledRule) matchMethod(m string) bool {
	if len(r.methods) == 0 {
		return true
	}
	for _, want := range r.methods {
		if want == m {
			return true
		}
	}
	return false
}

func (r *compiledRule) matchPath(p string) bool {
	if len(r.paths) == 0 {
		return true
	}
	for _, pp := range r.paths {
		if pp.glob == "" {
			if strings.HasPrefix(p, pp.prefix) {
				return true
			}
		} else if ok, _ := path.Match(pp.glob, p); ok {
			return true
		}
	}
	return false
}
