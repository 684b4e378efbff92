package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
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
		f.add("rules", fmt.Sprintf("at most %d rules (got %d)", RulesMax, len(in.Rules)))
		in.Rules = nil // nothing more to check
	}
	for i, r := range in.Rules {
		if len(r.Methods) > GroupRuleEntryMax {
			f.add(fmt.Sprintf("rules[%d].methods", i), fmt.Sprintf("at most %d methods (got %d)", GroupRuleEntryMax, len(r.Methods)))
		} else {
			for j, m := range r.Methods {
				if !httpMethods[strings.ToUpper(m)] {
					f.add(fmt.Sprintf("rules[%d].methods[%d]", i, j), fmt.Sprintf("%q is not an HTTP method", truncate(m, 32)))
				}
				in.Rules[i].Methods[j] = strings.ToUpper(m)
			}
		}
		if len(r.Paths) > GroupRuleEntryMax {
			f.add(fmt.Sprintf("rules[%d].paths", i), fmt.Sprintf("at most %d paths (got %d)", GroupRuleEntryMax, len(r.Paths)))
			continue
		}
		for j, p := range r.Paths {
			if problem := checkPathPattern(p); problem != "" {
				f.add(fmt.Sprintf("rules[%d].paths[%d]", i, j), problem)
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

// checkPathPattern returns what is wrong with a group path pattern, or "".
// Patterns are written decoded and match the readings of pathmatch.go, so
// whatever could never match one of them is refused here rather than
// silently never matching.
func checkPathPattern(p string) string {
	switch {
	case !utf8.ValidString(p):
		return "must be valid UTF-8"
	case !strings.HasPrefix(p, "/"):
		return "must start with /"
	case utf8.RuneCountInString(p) > PathPatternMax:
		return fmt.Sprintf("must be at most %d characters (got %d)", PathPatternMax, utf8.RuneCountInString(p))
	case strings.ContainsAny(p, unsupportedPatternChars):
		return `"?", "[" and "\" are not supported: "*" matches within one segment, a trailing "*" matches a prefix`
	case strings.Contains(p, ";"):
		return `must not contain ";" (request paths are matched without their ;parameters)`
	case strings.Contains(p, "%"):
		return `must not contain "%": write the path decoded ("/café", not "/caf%C3%A9")`
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return "must not contain control characters"
		}
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		switch {
		case s == "." || s == "..":
			return `must not contain "." or ".." segments`
		case s == "" && i < len(segs)-1:
			return `must not contain "//"`
		case strings.Count(s, "*") > 1:
			return `at most one "*" per segment ("/v*/items/*", "/files/*.csv")`
		}
	}
	return ""
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
	var g *Group
	err := s.retryConflicts(fmt.Sprintf("other nodes changed group %q", name), func() error {
		var err error
		g, err = s.putGroup(actor, tenant, name, in)
		return err
	})
	return g, err
}

// putGroup is one attempt of PutGroup; the caller holds wmu. The group
// replaced (or its absence) is expected unchanged (keyguard.go).
func (s *Store) putGroup(actor, tenant, name string, in GroupInput) (*Group, error) {
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, err
	}
	raw, err := s.readRaw(k(pGroup+tenant, name), "group")
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	g := Group{Name: name, Tenant: tenant, Description: in.Description, Rules: in.Rules, RateLimit: in.RateLimit, CreatedAt: now, UpdatedAt: now}
	if g.Rules == nil {
		g.Rules = []Rule{}
	}
	typ := "group.created"
	detail := map[string]any{"group": name}
	if raw != nil {
		old := new(Group)
		if err := json.Unmarshal(raw, old); err != nil {
			return nil, fmt.Errorf("decode group %q: %w", name, err)
		}
		g.CreatedAt = old.CreatedAt
		typ = "group.updated"
		var ch changes
		ch.add("description", old.Description, g.Description)
		ch.add("rules", old.Rules, g.Rules)
		ch.add("rate_limit", old.RateLimit, g.RateLimit)
		detail = ch.detail(detail)
	}
	c := newCommit()
	c.b.Expect(k(pGroup+tenant, name), raw)
	c.b.Set(k(pGroup+tenant, name), mustJSON(g))
	c.group(tenant, name)
	s.event(&c.b, now, tenant, typ, actor, "", detail)
	if err := s.commit(c); err != nil {
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
	return s.retryConflicts(fmt.Sprintf("other nodes made keys use group %q", truncate(name, 64)), func() error {
		return s.deleteGroup(actor, tenant, name)
	})
}

// deleteGroup is one attempt of DeleteGroup; the caller holds wmu. It reads
// the group's reference mark before it looks for users of the group, and
// commits only if neither the mark nor the group changed (grouprefs.go).
func (s *Store) deleteGroup(actor, tenant, name string) error {
	mark, err := s.readGroupRefMark(tenant, name)
	if err != nil {
		return err
	}
	raw, err := s.kv.Get(k(pGroup+tenant, name))
	if errors.Is(err, errKVNotFound) {
		return notFound("group", name)
	} else if err != nil {
		return fmt.Errorf("read group: %w", err)
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
	c := newCommit()
	c.b.Expect(k(pGroupRefs+tenant, name), mark)
	c.b.Expect(k(pGroup+tenant, name), raw)
	c.b.Delete(k(pGroup+tenant, name))
	c.b.Delete(k(pGroupRefs+tenant, name))
	c.group(tenant, name)
	s.event(&c.b, now, tenant, "group.deleted", actor, "", map[string]any{"group": name})
	return s.commit(c)
}

// GroupView is a group compiled for the hot path. Never mutated once built.
type GroupView struct {
	Name      string
	RateLimit *RateLimit
	rules     []compiledRule
	maxSegs   int // most segments of a glob pattern
	// unsupported counts stored path patterns that use syntax no longer
	// accepted ("?", "[...]", "\"); they match nothing.
	unsupported int
}

type compiledRule struct {
	methods []string
	paths   []pathPattern
}

func compileGroup(g *Group) *GroupView {
	v := &GroupView{Name: g.Name, RateLimit: g.RateLimit}
	for _, r := range g.Rules {
		cr := compiledRule{methods: r.Methods}
		for _, p := range r.Paths {
			pp := compilePattern(p)
			if pp.kind == never {
				v.unsupported++
			}
			v.maxSegs = max(v.maxSegs, pp.nsegs)
			cr.paths = append(cr.paths, pp)
		}
		v.rules = append(v.rules, cr)
	}
	return v
}

// Allows reports whether a request is allowed by the group's rules. No
// rules allow everything. reqPath is the path as the upstream will receive
// it: the escaped path (url.URL.EscapedPath), not the decoded one; see
// pathmatch.go for how it is read.
func (g *GroupView) Allows(method, reqPath string) bool {
	if len(g.rules) == 0 {
		return true
	}
	var (
		read            bool
		ok              bool
		literal, normal pathView
		litBuf, normBuf [PathPatternMax/2 + 1]uint16
	)
	for i := range g.rules {
		r := &g.rules[i]
		if !r.matchMethod(method) {
			continue
		}
		if len(r.paths) == 0 {
			return true
		}
		if !read {
			read = true
			var lit, norm string
			if lit, norm, ok = readPaths(reqPath); ok {
				normal = newPathView(norm, g.maxSegs, normBuf[:])
				if lit == norm {
					literal = normal
				} else {
					literal = newPathView(lit, g.maxSegs, litBuf[:])
				}
			}
		}
		if !ok {
			continue
		}
		for j := range r.paths {
			pp := &r.paths[j]
			if pp.match(&normal) && pp.match(&literal) {
				return true
			}
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
