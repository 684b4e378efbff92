package store

import (
	"fmt"
	"time"
)

// EventQuery filters ListEvents.
type EventQuery struct {
	KeyID  string
	Type   string
	Since  time.Time // zero: from the beginning
	Limit  int
	Cursor string // id of the last event of the previous page
}

// ListEvents returns a tenant's audit events, oldest first.
func (s *Store) ListEvents(tenant string, q EventQuery) ([]*Event, string, error) {
	if q.Limit < 0 || q.Limit > MaxPageLimit {
		return nil, "", invalid("limit", fmt.Sprintf("must be 1–%d", MaxPageLimit))
	}
	if _, err := s.tenantRecord(tenant); err != nil {
		return nil, "", err
	}
	limit := pageLimit(q.Limit)
	prefix := pEvent + tenant + "/"
	start := afterCursor(prefix, q.Cursor)
	if !q.Since.IsZero() {
		since := []byte(prefix + fmt.Sprintf("evt_%016x", uint64(q.Since.UnixNano())))
		if start == nil || string(since) > string(start) {
			start = since
		}
	}
	var out []*Event
	var decodeErr error
	err := s.kv.Scan([]byte(prefix), start, func(_, v []byte) bool {
		var e Event
		if decodeErr = jsonUnmarshal(v, &e); decodeErr != nil {
			return false
		}
		if q.Type != "" && e.Type != q.Type || q.KeyID != "" && (e.KeyID == nil || *e.KeyID != q.KeyID) {
			return true
		}
		out = append(out, &e)
		return len(out) <= limit
	})
	if err == nil {
		err = decodeErr
	}
	if err != nil {
		return nil, "", fmt.Errorf("list events: %w", err)
	}
	return pageOf(out, limit, func(e *Event) string { return e.ID })
}
