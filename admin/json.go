package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/store"
)

// maxBodyBytes bounds request bodies (SPEC: 413 above 1 MiB).
const maxBodyBytes = 1 << 20

// writeJSON sends v as the JSON answer with the status. Answers are
// application/json, so <, > and & need no HTML escaping.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
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

// decodeBody reads a JSON object of at most maxBodyBytes into dst, a
// pointer to a struct. Unknown fields, type mismatches and malformed JSON
// are 400s (naming the field where there is one); an oversized body is 413.
// An empty body decodes as {}.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	if r.Body == nil {
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return errTooLarge
		}
		return errBadRequest("could not read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return describeDecodeError(body, dst, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errBadRequest("malformed JSON: unexpected data after the JSON object")
	}
	// encoding/json matches names case-insensitively ("NAME", and even
	// "deſcription" with a long s, fill description): the API's names are
	// exact, anything else is an unknown field like any other.
	if name, bad := inexactField(body, reflect.TypeOf(dst)); bad {
		return &apiError{Status: http.StatusBadRequest, Code: codeInvalid,
			Message: fmt.Sprintf("unknown field %q", name), Fields: map[string]string{name: "unknown field"}}
	}
	return nil
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// inexactField finds, in a JSON value that decoded into a value of type t,
// an object key that is not exactly the JSON name of a struct field (the
// path to it, e.g. "rules.0.Methods"). Types with their own UnmarshalJSON
// are taken as they are.
func inexactField(raw []byte, t reflect.Type) (string, bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return "", false
	}
	switch t.Kind() {
	case reflect.Struct:
		var object map[string]json.RawMessage
		if json.Unmarshal(raw, &object) != nil {
			return "", false // null, or judged by the decoder already
		}
		names := make([]string, 0, len(object))
		for name := range object {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			ft, ok := exactFieldType(t, name)
			if !ok {
				return name, true
			}
			if sub, bad := inexactField(object[name], ft); bad {
				return name + "." + sub, true
			}
		}
	case reflect.Slice, reflect.Array:
		var elems []json.RawMessage
		if json.Unmarshal(raw, &elems) != nil {
			return "", false
		}
		for i, e := range elems {
			if sub, bad := inexactField(e, t.Elem()); bad {
				return strconv.Itoa(i) + "." + sub, true
			}
		}
	case reflect.Map:
		var object map[string]json.RawMessage
		if json.Unmarshal(raw, &object) != nil {
			return "", false
		}
		for key, v := range object {
			if sub, bad := inexactField(v, t.Elem()); bad {
				return key + "." + sub, true
			}
		}
	}
	return "", false
}

// exactFieldType is the type of the struct field whose JSON name is name.
func exactFieldType(t reflect.Type, name string) (reflect.Type, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct {
			if ft, ok := exactFieldType(f.Type, name); ok { // promoted fields
				return ft, true
			}
			continue
		}
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		if tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

// describeDecodeError turns a json decoding failure into a 400 that names the
// offending field whenever there is one.
func describeDecodeError(body []byte, dst any, err error) error {
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name, _ = strconv.Unquote(name)
		return &apiError{Status: http.StatusBadRequest, Code: codeInvalid,
			Message: fmt.Sprintf("unknown field %q", name), Fields: map[string]string{name: "unknown field"}}
	}
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errBadRequest("malformed JSON: " + strings.TrimPrefix(err.Error(), "json: "))
	}
	var object map[string]json.RawMessage
	if json.Unmarshal(body, &object) != nil {
		return errBadRequest("the request body must be a JSON object")
	}
	// Errors from custom decoders (times, durations, PATCH fields) do not say
	// which field failed: decode the fields one by one to find it.
	names := make([]string, 0, len(object))
	for name := range object {
		names = append(names, name)
	}
	sort.Strings(names)
	t := reflect.TypeOf(dst).Elem()
	for _, name := range names {
		ft, ok := jsonFieldType(t, name)
		if !ok {
			continue
		}
		if ferr := json.Unmarshal(object[name], reflect.New(ft).Interface()); ferr != nil {
			return errInvalid(name, fieldProblem(ft, ferr))
		}
	}
	return errBadRequest("invalid request body")
}

// jsonFieldType finds the type of the struct field encoded as name.
func jsonFieldType(t reflect.Type, name string) (reflect.Type, bool) {
	if t.Kind() != reflect.Struct {
		return nil, false
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		if strings.EqualFold(tag, name) {
			return f.Type, true
		}
	}
	return nil, false
}

var timeType = reflect.TypeOf(time.Time{})

// fieldProblem words a field's decoding failure for people.
func fieldProblem(t reflect.Type, err error) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType || strings.Contains(t.String(), "time.Time") {
		return `must be an RFC 3339 time such as "2030-01-02T15:04:05Z"`
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return "must be " + jsonKind(typeErr.Type)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
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
