package admin

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keygate/keygate/store"
)

// apiError is an error answer decided by the admin layer itself (auth,
// routing, decoding, authorization). Store errors are mapped in writeError.
type apiError struct {
	Status     int
	Code       string
	Message    string
	Fields     map[string]string
	RetryAfter time.Duration // sent as Retry-After when positive
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// errorBody is the JSON shape of every error answer:
// {"error": {"code": "...", "message": "...", "fields": {...}}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// Error codes of the admin API besides the store's own ("invalid",
// "not_found", "conflict", "key_limit_reached", "api_keys_disabled",
// "insufficient_storage").
const (
	codeUnauthorized     = "unauthorized"
	codeForbidden        = "forbidden"
	codeNotFound         = "not_found"
	codeInvalid          = "invalid"
	codeMethodNotAllowed = "method_not_allowed"
	codeTooLarge         = "request_too_large"
	codeUnavailable      = "unavailable"
	codeRateLimited      = "rate_limited"
)

// wwwAuthenticate is sent with every 401.
const wwwAuthenticate = `Bearer realm="keygate-admin"`

func errUnauthorized(msg string) error {
	return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Message: msg}
}

// errThrottled answers a client address with too many failed
// authentications (authlimit.go).
func errThrottled(wait time.Duration) error {
	return &apiError{Status: http.StatusTooManyRequests, Code: codeRateLimited, RetryAfter: wait,
		Message: "too many failed authentications from this address; retry later"}
}

func errForbidden(format string, args ...any) error {
	return &apiError{Status: http.StatusForbidden, Code: codeForbidden, Message: fmt.Sprintf(format, args...)}
}

// errGroupForbidden answers a developer who gives a key's group, on create
// or edit (null included): groups are the tenant_admin's to assign.
var errGroupForbidden = &apiError{Status: http.StatusForbidden, Code: codeForbidden,
	Message: "developers cannot choose or change a key's group; their keys get the tenant's default_group",
	Fields:  map[string]string{"group": "only a tenant_admin may set a key's group"}}

func errNotFound(format string, args ...any) error {
	return &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: fmt.Sprintf(format, args...)}
}

// errInvalid is a 400 naming one field.
func errInvalid(field, problem string) error {
	return &apiError{Status: http.StatusBadRequest, Code: codeInvalid, Message: "validation failed",
		Fields: map[string]string{field: problem}}
}

// errBadRequest is a 400 about the request as a whole (malformed JSON).
func errBadRequest(msg string) error {
	return &apiError{Status: http.StatusBadRequest, Code: codeInvalid, Message: msg}
}

var (
	errNoRoute     = &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: "no such API path"}
	errTooLarge    = errBodyTooLarge(maxBodyBytes)
	errUnavailable = &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable,
		Message: "the key store is unavailable; try again later"}
)

// errBodyTooLarge is the 413 of a body over limit bytes.
func errBodyTooLarge(limit int64) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codeTooLarge,
		Message: fmt.Sprintf("the request body exceeds %d bytes", limit)}
}

func errMethodNotAllowed(method string) error {
	return &apiError{Status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
		Message: fmt.Sprintf("method %s is not allowed on this path", method)}
}

// statusOfKind maps the store's error kinds to HTTP statuses.
var statusOfKind = map[store.Kind]int{
	store.KindInvalid:      http.StatusBadRequest,
	store.KindNotFound:     http.StatusNotFound,
	store.KindConflict:     http.StatusConflict,
	store.KindLimit:        http.StatusConflict,
	store.KindDisabled:     http.StatusForbidden,
	store.KindUnauthorized: http.StatusUnauthorized,
	// The store's disk is full: the change was refused before it was made
	// (code "insufficient_storage"); it succeeds once space is freed.
	store.KindInsufficientStorage: http.StatusInsufficientStorage,
}

// asAPIError turns any error into the answer to send. Storage failures and
// anything unexpected become 503 "unavailable" (fail closed) without their
// text, which stays in the log.
func (h *Handler) asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var se *store.Error
	if errors.As(err, &se) {
		if status, ok := statusOfKind[se.Kind]; ok {
			return &apiError{Status: status, Code: se.Code, Message: se.Message, Fields: se.Fields}
		}
	}
	if h.log != nil {
		h.log.Errorf("admin API: %v", err)
	}
	return errUnavailable
}

// writeError sends err as the JSON error answer.
func (h *Handler) writeError(w http.ResponseWriter, err error) {
	ae := h.asAPIError(err)
	if ae.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", wwwAuthenticate)
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", retryAfter(ae.RetryAfter))
	}
	writeJSON(w, ae.Status, errorBody{Error: errorDetail{Code: ae.Code, Message: ae.Message, Fields: ae.Fields}})
}
