package store

import "encoding/json"

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// scanPage decodes up to limit+1 JSON records under prefix after cursor into
// out; the extra one tells pageOf whether there is a next page.
func scanPage[T any](kv KV, prefix, cursor string, limit int, out *[]*T, _ func(*T) string) error {
	limit = pageLimit(limit)
	var decodeErr error
	err := kv.Scan([]byte(prefix), afterCursor(prefix, cursor), func(_, v []byte) bool {
		rec := new(T)
		if decodeErr = json.Unmarshal(v, rec); decodeErr != nil {
			return false
		}
		*out = append(*out, rec)
		return len(*out) <= limit
	})
	if err != nil {
		return err
	}
	return decodeErr
}

// pageOf cuts a scanPage result to limit and names the cursor of the next
// page ("" on the last page).
func pageOf[T any](items []*T, limit int, id func(*T) string) ([]*T, string, error) {
	limit = pageLimit(limit)
	if items == nil {
		items = []*T{}
	}
	if len(items) > limit {
		items = items[:limit]
		return items, id(items[limit-1]), nil
	}
	return items, "", nil
}
