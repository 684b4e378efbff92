package admin

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/keygate/keygate/store"
)

// maxBodyBytes bounds request bodies (SPEC: 413 above 1 MiB).
const maxBodyBytes = 1 << 20

// writeJSON sends v as the JSON answer with the status. Answers are
// application/json, so <, > and & need no HTML escaping.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var body bytes.Buffer
	enc := stdjson.NewEncoder(&body)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only our own response types are encoded; this cannot happen.
		status = http.StatusServiceUnavailable
		body.Reset()
		_ = enc.Encode(errorBody{Error: errorDetail{Code: errUnavailable.Code, Message: errUnavailable.Message}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(body.Bytes())
}

// strictJSON are the decoding options for request bodies (SPEC section 6,
// "strict JSON"). github.com/go-json-experiment/json already matches names
// exactly (case-sensitively, no Unicode folding), rejects duplicate names
// and invalid UTF-8 by default; unknown members are rejected on top.
var strictJSON = json.RejectUnknownMembers(true)

// decodeBody reads a JSON object of at most maxBodyBytes into dst, a
// pointer to a struct. Unknown, duplicate or inexact names, invalid UTF-8,
// type mismatches and malformed JSON are 400s naming the field where there
// is one; an oversized body is 413. An empty body decodes as {}.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	return decodeBodyLimit(w, r, dst, maxBodyBytes)
}

// decodeBodyLimit is decodeBody with another size limit (the import
// endpoint's).
func decodeBodyLimit(w http.ResponseWriter, r *http.Request, dst any, limit int64) error {
	if r.Body == nil {
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			if limit == maxBodyBytes {
				return errTooLarge
			}
			return errBodyTooLarge(limit)
		}
		return errBadRequest("could not read the request body")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil
	}
	if trimmed[0] != '{' {
		return errBadRequest("the request body must be a JSON object")
	}
	if err := json.Unmarshal(body, dst, strictJSON); err != nil {
		return describeDecodeError(err)
	}
	return nil
}

// describeDecodeError turns a decoding failure into a 400 that names the
// offending member (as the store names fields: "rules[1].paths") whenever
// the decoder knows it. The decoder's own messages are not passed on: they
// quote pieces of the body, which may be secrets (imported keys).
func describeDecodeError(err error) error {
	var syn *jsontext.SyntacticError
	if errors.As(err, &syn) {
		if syn.Err == jsontext.ErrDuplicateName {
			name := clip(fieldPath(syn.JSONPointer, true))
			return &apiError{Status: http.StatusBadRequest, Code: codeInvalid,
				Message: fmt.Sprintf("duplicate field %q", name), Fields: map[string]string{name: "duplicate field"}}
		}
		problem := "malformed JSON"
		if strings.Contains(syn.Err.Error(), "UTF-8") {
			problem = "invalid UTF-8"
		}
		msg := fmt.Sprintf("%s at byte %d", problem, syn.ByteOffset)
		if syn.JSONPointer == "" {
			return errBadRequest(msg)
		}
		name := fieldPath(syn.JSONPointer, false)
		return &apiError{Status: http.StatusBadRequest, Code: codeInvalid, Message: msg,
			Fields: map[string]string{name: problem}}
	}
	var sem *json.SemanticError
	if !errors.As(err, &sem) {
		return errBadRequest("malformed JSON")
	}
	if sem.Err == json.ErrUnknownName {
		name := clip(fieldPath(sem.JSONPointer, true))
		return &apiError{Status: http.StatusBadRequest, Code: codeInvalid,
			Message: fmt.Sprintf("unknown field %q", name), Fields: map[string]string{name: "unknown field"}}
	}
	if sem.JSONPointer == "" {
		return errBadRequest("the request body must be a JSON object")
	}
	return errInvalid(fieldPath(sem.JSONPointer, false), fieldProblem(sem))
}

// fieldPath writes a JSON pointer ("/rules/1/paths") the way the store names
// fields ("rules[1].paths"). Numeric tokens are array indexes, except the
// last one when it is known to be an object member's name.
func fieldPath(p jsontext.Pointer, lastIsName bool) string {
	var b strings.Builder
	var tokens []string
	for tok := range p.Tokens() {
		tokens = append(tokens, tok)
	}
	for i, tok := range tokens {
		isName := lastIsName && i == len(tokens)-1
		if _, err := strconv.Atoi(tok); err == nil && !isName {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

// clip shortens a member name taken from the body for an error answer.
func clip(name string) string {
	const max = 100
	if len(name) <= max {
		return name
	}
	n := max
	for n > 0 && !utf8.RuneStart(name[n]) {
		n--
	}
	return name[:n] + "…"
}

var (
	timeType      = reflect.TypeFor[time.Time]()
	unmarshalType = reflect.TypeFor[interface{ UnmarshalJSON([]byte) error }]()
)

// fieldProblem words a member's decoding failure for people.
func fieldProblem(sem *json.SemanticError) string {
	t := sem.GoType
	if t == nil {
		return "invalid value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == timeType:
		return `must be an RFC 3339 time such as "2030-01-02T15:04:05Z"`
	case sem.Err != nil && reflect.PointerTo(t).Implements(unmarshalType):
		// The type's own words (store.Duration: "must be a duration …").
		return sem.Err.Error()
	}
	return "must be " + jsonKind(t)
}

// jsonKind names a Go type the way a JSON user thinks of it.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "of another type"
}

// queryLimit reads the "limit" parameter: absent is 0 (the store's default
// page size), otherwise an integer 1–500.
func queryLimit(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > store.MaxPageLimit {
		return 0, errInvalid("limit", fmt.Sprintf("must be an integer from 1 to %d", store.MaxPageLimit))
	}
	return n, nil
}

// querySince reads the "since" parameter, an RFC 3339 time (zero if absent).
func querySince(r *http.Request) (time.Time, error) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return time.Time{}, nil
	}
	// An unencoded "+" of a zone offset arrives as a space.
	t, err := time.Parse(time.RFC3339Nano, strings.ReplaceAll(v, " ", "+"))
	if err != nil {
		return time.Time{}, errInvalid("since", `must be an RFC 3339 time such as "2030-01-02T15:04:05Z"`)
	}
	return t, nil
}

// nextCursor is the next_cursor of a list answer: null on the last page.
func nextCursor(c string) *string {
	if c == "" {
		return nil
	}
	return &c
}
