package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// maxResponseBytes bounds what the CLI reads of an answer.
const maxResponseBytes = 64 << 20

// client calls the admin REST API.
type client struct {
	baseURL string // without trailing slash, e.g. http://127.0.0.1:8081
	token   string
	http    *http.Client
}

func newClient(baseURL, token string) (*client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %q is not an http(s) URL such as http://127.0.0.1:8081", baseURL)
	}
	if token == "" {
		return nil, fmt.Errorf("no admin token: set KEYGATE_TOKEN (or pass --token)")
	}
	return &client{
		baseURL: strings.TrimRight(baseURL, "/"),
		token:   token,
		http:    &http.Client{Timeout: 30 * time.Second},
	}, nil
}

// APIError is a non-2xx answer of the admin API.
type APIError struct {
	Status  int               // HTTP status
	Code    string            // the API's error code, e.g. "invalid"
	Message string            // the API's message
	Fields  map[string]string // for validation errors: field → problem
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (HTTP %d", e.Message, e.Status)
	if e.Code != "" {
		b.WriteString(", " + e.Code)
	}
	b.WriteString(")")
	names := make([]string, 0, len(e.Fields))
	for f := range e.Fields {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		fmt.Fprintf(&b, "\n  %s: %s", f, e.Fields[f])
	}
	return b.String()
}

// call sends one request. path is the API path ("/v1/…", segments already
// escaped); query may be nil; body, if not nil, is sent as JSON. On a 2xx
// answer it returns the raw body; otherwise an *APIError.
func (c *client) call(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	target := c.baseURL + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keygate-cli")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error names the URL, never the token.
		return nil, fmt.Errorf("cannot reach the admin API: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return raw, nil
	}
	return nil, decodeAPIError(resp.StatusCode, raw)
}

// decodeAPIError reads {"error": {...}}; anything else (a proxy's HTML page)
// is reported by its status and a short excerpt.
func decodeAPIError(status int, raw []byte) *APIError {
	var body struct {
		Error struct {
			Code    string            `json:"code"`
			Message string            `json:"message"`
			Fields  map[string]string `json:"fields"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &body) == nil && body.Error.Message != "" {
		return &APIError{Status: status, Code: body.Error.Code, Message: body.Error.Message, Fields: body.Error.Fields}
	}
	msg := http.StatusText(status)
	if excerpt := strings.TrimSpace(string(raw)); excerpt != "" {
		if len(excerpt) > 200 {
			excerpt = excerpt[:200] + "…"
		}
		msg += ": " + excerpt
	}
	return &APIError{Status: status, Message: msg}
}

// apiPath joins escaped path segments under /v1.
func apiPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/v1")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}
