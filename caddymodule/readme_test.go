package caddymodule

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestReadmeClientsExamples: every Caddyfile block of README's Clients
// section adapts, and every api_key JSON fragment decodes into the
// handler with no unknown field.
func TestReadmeClientsExamples(t *testing.T) {
	text, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	i := strings.Index(s, "\n## Clients\n")
	if i < 0 {
		t.Fatal("README has no Clients section")
	}
	s = s[i+1:]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	blocks := regexp.MustCompile("(?s)```(caddyfile|json)\n(.*?)```").FindAllStringSubmatch(s, -1)
	var caddyfiles, handlers int
	for _, b := range blocks {
		switch b[1] {
		case "caddyfile":
			caddyfiles++
			if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(b[2]), nil); err != nil {
				t.Errorf("Caddyfile does not adapt: %v\n%s", err, b[2])
			}
		case "json":
			if !json.Valid([]byte(b[2])) {
				t.Errorf("invalid JSON:\n%s", b[2])
				continue
			}
			if !strings.HasPrefix(b[2], `{"handler": "api_key"`) {
				continue
			}
			handlers++
			var raw map[string]json.RawMessage
			_ = json.Unmarshal([]byte(b[2]), &raw)
			delete(raw, "handler")
			rest, _ := json.Marshal(raw)
			dec := json.NewDecoder(bytes.NewReader(rest))
			dec.DisallowUnknownFields()
			if err := dec.Decode(new(Handler)); err != nil {
				t.Errorf("api_key JSON %s: %v", b[2], err)
			}
		}
	}
	if caddyfiles < 4 || handlers < 2 {
		t.Errorf("found %d Caddyfiles and %d api_key JSON examples: the section lost its examples", caddyfiles, handlers)
	}
}
