package store

import (
	"reflect"
	"sort"
)

// changes records, for an edit's audit event, the fields whose value an
// edit changed with their values before and after. Only metadata goes in:
// never a secret or a hash.
type changes struct {
	fields        []string
	before, after map[string]any
}

// add records field if its value differs between before and after.
func (c *changes) add(field string, before, after any) {
	if reflect.DeepEqual(before, after) {
		return
	}
	if c.before == nil {
		c.before, c.after = map[string]any{}, map[string]any{}
	}
	c.fields = append(c.fields, field)
	c.before[field], c.after[field] = before, after
}

// detail is the event detail {"fields": [...], "before": {...}, "after":
// {...}}, fields sorted; extra entries are added to it.
func (c *changes) detail(extra map[string]any) map[string]any {
	fields := append([]string{}, c.fields...)
	sort.Strings(fields)
	before, after := c.before, c.after
	if before == nil {
		before, after = map[string]any{}, map[string]any{}
	}
	d := map[string]any{"fields": fields, "before": before, "after": after}
	for k, v := range extra {
		d[k] = v
	}
	return d
}

// optString is the JSON form of an optional name: "" is null.
func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// strOrEmpty is *s, or "" for nil.
func strOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
