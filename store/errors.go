package store

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Kind classifies domain errors; the admin API maps each to an HTTP status.
type Kind int

const (
	KindInternal     Kind = iota // storage failure: fail closed
	KindInvalid                  // validation: names the fields
	KindNotFound                 // unknown id (also another tenant's)
	KindConflict                 // state does not allow it (revoke twice, group in use)
	KindLimit                    // key_limit_reached
	KindDisabled                 // api_keys_disabled
	KindUnauthorized             // bad or missing credential
	// KindInsufficientStorage: the store's disk is (nearly) full, so the
	// write was refused before it reached Pebble. Reads keep working, and
	// writes succeed again once space is freed (see diskGuard).
	KindInsufficientStorage
)

// Error is a domain error. Message never contains a secret.
type Error struct {
	Kind    Kind
	Code    string            // machine-readable, e.g. "invalid", "key_limit_reached"
	Message string            // for people
	Fields  map[string]string // for KindInvalid: field → problem
}

func (e *Error) Error() string {
	if len(e.Fields) == 0 {
		return e.Message
	}
	names := make([]string, 0, len(e.Fields))
	for f := range e.Fields {
		names = append(names, f)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, f := range names {
		parts[i] = f + ": " + e.Fields[f]
	}
	return e.Message + ": " + strings.Join(parts, "; ")
}

// KindOf returns the kind of err; errors that are not *Error are internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

func notFound(what, id string) error {
	return &Error{Kind: KindNotFound, Code: "not_found", Message: fmt.Sprintf("%s %q not found", what, id)}
}

func conflict(format string, args ...any) error {
	return &Error{Kind: KindConflict, Code: "conflict", Message: fmt.Sprintf(format, args...)}
}

// fieldErrors accumulates validation problems so one answer names them all.
type fieldErrors map[string]string

func (f fieldErrors) add(field, problem string) {
	if _, ok := f[field]; !ok {
		f[field] = problem
	}
}

func (f fieldErrors) err() error {
	if len(f) == 0 {
		return nil
	}
	return &Error{Kind: KindInvalid, Code: "invalid", Message: "validation failed", Fields: f}
}

func invalid(field, problem string) error {
	return fieldErrors{field: problem}.err()
}
