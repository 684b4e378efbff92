package caddymodule

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// reject answers a denied request. When the server has handle_errors routes
// it returns a caddyhttp.Error, so they can shape the answer (the code is in
// the placeholder {http.auth.api_key.error}); otherwise it writes the spec's
// JSON body itself. Every 401 carries the WWW-Authenticate challenge (with
// error="invalid_token" when a credential was presented); headers set before
// (Retry-After) stay.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, o outcome, status int, message string) error {
	h.shared.outcomes.inc(o)
	code := outcomeCodes[o]
	if status == http.StatusUnauthorized {
		if o == outcomeMissingKey {
			w.Header().Set("WWW-Authenticate", h.challenge)
		} else {
			w.Header().Set("WWW-Authenticate", h.challengeInvalid)
		}
	}
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Errors != nil && len(srv.Errors.Routes) > 0 {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("http.auth.api_key.error", code)
		}
		return caddyhttp.Error(status, errors.New(code+": "+message))
	}
	writeJSONError(w, status, code, message)
	return nil
}

// writeJSONError writes {"error":{"code":…,"message":…}}. Codes and
// messages are our own constants, so no escaping beyond quoting is needed.
func writeJSONError(w http.ResponseWriter, status int, code, message string) {
	body := `{"error":{"code":` + strconv.Quote(code) + `,"message":` + strconv.Quote(message) + "}}\n"
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}
