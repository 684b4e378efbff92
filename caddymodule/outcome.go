package caddymodule

import (
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/keygate/keygate/store"
)

// outcome of one gateway request: a row of outcomeTable.
type outcome uint8

const (
	outcomeOK outcome = iota
	outcomePreflight
	outcomeMissingKey
	outcomeInvalidKey
	outcomeDuplicateKey
	outcomeRevoked
	outcomeExpired
	outcomeDisabled
	outcomeTooEarly
	outcomeIPNotAllowed
	outcomeForbidden
	outcomeRateLimited
	outcomeUnavailable
	numOutcomes
)

// outcomeRow is everything keygate says about one outcome. Adding an
// outcome is adding a row: deny reads the rest from here.
type outcomeRow struct {
	// code is the spec's error code: the JSON body's error.code, the
	// {http.auth.api_key.error} placeholder, the grpc-message of a gRPC
	// rejection and the outcome label of keygate_requests_total (rows may
	// share a code: their counts are summed).
	code string
	// status is the HTTP status of the answer.
	status int
	// message is the JSON body's error.message. Static: it never quotes
	// anything from the request.
	message string
	// usage is what the identified key's usage counters record, or noUsage
	// when the outcome comes before a key is identified.
	usage store.Outcome
	// grpc is the grpc-status of a gRPC request's trailers-only rejection.
	grpc codes.Code
	// invalidToken marks a 401 answering a presented credential: its
	// challenge carries error="invalid_token" (RFC 6750 section 3.1).
	invalidToken bool
}

// noUsage marks outcomes that no key's usage records (no key identified).
const noUsage = store.Outcome(255)

// outcomeTable is SPEC section 3's outcome table, plus ok, the CORS
// preflight keygate answers itself, and 425 for unfinished 0-RTT TLS.
var outcomeTable = [numOutcomes]outcomeRow{
	outcomeOK:        {code: "ok", status: http.StatusOK, usage: store.OutcomeOK, grpc: codes.OK},
	outcomePreflight: {code: "preflight", status: http.StatusNoContent, usage: noUsage, grpc: codes.OK},
	outcomeMissingKey: {code: "missing_key", status: http.StatusUnauthorized, usage: noUsage, grpc: codes.Unauthenticated,
		message: "an API key is required"},
	outcomeInvalidKey: {code: "invalid_key", status: http.StatusUnauthorized, usage: noUsage, grpc: codes.Unauthenticated,
		invalidToken: true, message: "invalid API key"},
	outcomeDuplicateKey: {code: "invalid_key", status: http.StatusUnauthorized, usage: noUsage, grpc: codes.Unauthenticated,
		invalidToken: true, message: "a credential source was sent more than once"},
	outcomeRevoked: {code: "key_revoked", status: http.StatusUnauthorized, usage: store.OutcomeRevoked, grpc: codes.Unauthenticated,
		invalidToken: true, message: "this API key has been revoked"},
	outcomeExpired: {code: "key_expired", status: http.StatusUnauthorized, usage: store.OutcomeExpired, grpc: codes.Unauthenticated,
		invalidToken: true, message: "this API key has expired"},
	outcomeDisabled: {code: "api_keys_disabled", status: http.StatusForbidden, usage: store.OutcomeDisabled, grpc: codes.PermissionDenied,
		message: "API keys are disabled for this tenant"},
	// 0-RTT: the client address is not verified yet, so an IP allowlist
	// cannot be checked (as Caddy's remote_ip matcher does).
	outcomeTooEarly: {code: "too_early", status: http.StatusTooEarly, usage: noUsage, grpc: codes.Unavailable,
		message: "the TLS handshake is not complete; retry after it"},
	outcomeIPNotAllowed: {code: "ip_not_allowed", status: http.StatusForbidden, usage: store.OutcomeIPNotAllowed, grpc: codes.PermissionDenied,
		message: "this API key may not be used from this IP address"},
	outcomeForbidden: {code: "forbidden", status: http.StatusForbidden, usage: store.OutcomeForbidden, grpc: codes.PermissionDenied,
		message: "this API key may not call this route"},
	outcomeRateLimited: {code: "rate_limited", status: http.StatusTooManyRequests, usage: store.OutcomeRateLimited, grpc: codes.ResourceExhausted,
		message: "rate limit exceeded"},
	outcomeUnavailable: {code: "unavailable", status: http.StatusServiceUnavailable, usage: noUsage, grpc: codes.Unavailable,
		message: "the API key store is unavailable"},
}

// metricOf maps each outcome to the first row with its code: the metric
// series that counts it.
var metricOf = func() (m [numOutcomes]outcome) {
	for o := range numOutcomes {
		m[o] = o
		for p := range o {
			if outcomeTable[p].code == outcomeTable[o].code {
				m[o] = p
				break
			}
		}
	}
	return m
}()

// outcomeOfCode is the first rejection with the code (rare paths only: it
// scans the table). An unknown code is invalid_key: the request is refused
// either way.
func outcomeOfCode(code string) outcome {
	for o := range outcomeTable {
		if row := &outcomeTable[o]; row.code == code && row.status >= http.StatusBadRequest {
			return outcome(o)
		}
	}
	return outcomeInvalidKey
}
