package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keygate/keygate/store"
)

// decodeKinds are the body types FuzzDecode decodes into: the key create,
// patch and rotate bodies, the settings patch and the group body.
var decodeKinds = []struct {
	name   string
	new    func() any
	encode func(any) ([]byte, error)
}{
	{"create", func() any { return new(keyCreate) }, json.Marshal},
	{"patch", func() any { return new(store.KeyPatch) }, encodePatch},
	{"rotate", func() any { return new(store.RotateInput) }, json.Marshal},
	{"settings", func() any { return new(store.SettingsPatch) }, encodePatch},
	{"group", func() any { return new(store.GroupInput) }, json.Marshal},
}

// FuzzDecode feeds request bodies to decodeBody. Properties:
//   - it never panics, and every rejection is a 400 (or 413) apiError;
//   - unknown fields are always rejected: every key of an accepted object
//     is exactly (case-sensitively) the JSON name of a field;
//   - an accepted body is valid UTF-8 and has no duplicate names in any
//     object (checked independently of the decoder, with encoding/json);
//   - an accepted body re-encodes, and the re-encoding decodes again to the
//     same value (encoding is a fixed point).
func FuzzDecode(f *testing.F) {
	seeds := []struct {
		kind uint8
		body string
	}{
		{0, `{"name":"billing","description":"d","group":"g","expires_at":"2030-01-02T15:04:05Z","ip_allowlist":["10.0.0.0/8"],"owner":"alice"}`},
		{0, `{"name":"x","expires_at":"2030-01-02T15:04:05.123456789+02:00"}`},
		{0, `{"name":"x","expires_at":null,"ip_allowlist":null}`},
		{0, `{"colour":"red"}`},
		{0, `{"NAME":"x"}`},
		{0, `{"Name":"x","name":"y"}`},
		{0, `{"deſcription":"long s folds to s"}`},
		{0, `{"n\u0061me":"escaped key"}`},
		{0, `{"name":1}`},
		{0, `{"expires_at":"tomorrow"}`},
		{0, `{"name":"a"} {"name":"b"}`},
		{0, `{"name":"a"`},
		{0, `[]`},
		{0, `null`},
		{0, ``},
		{0, "  \n"},
		{0, "{\"name\":\"\xff\xfe\"}"},
		{0, "{\"name\":\"ok\",\"description\":\"caf\xe9\"}"},
		{0, `{"name":"a","name":"b"}`},
		{0, `{"name":"a","n\u0061me":"b"}`},
		{0, `{"name":"\ud800"}`},
		{0, `{"ip_allowlist":["a",1]}`},
		{1, `{"name":"new","description":null,"group":"","ip_allowlist":[]}`},
		{1, `{"expires_at":"2030-01-02T15:04:05Z"}`},
		{1, `{"expires_at":{"a":[1,2,{"b":null}]}}`},
		{1, `{"secret":"x"}`},
		{1, `{"Ip_Allowlist":["10.0.0.1"]}`},
		{1, `{"name":null}`},
		{1, `{"name":"a","name":null}`},
		{1, `{"expires_at":{"a":1,"a":2}}`},
		{2, `{"grace_period":"1h30m","expires_at":"2031-01-01T00:00:00Z"}`},
		{2, `{"grace_period":"-9223372036854775808ns"}`},
		{2, `{"grace_period":"1e3h"}`},
		{2, `{"grace_period":3600}`},
		{2, `{"Grace_Period":"1h"}`},
		{2, `{"expires_at":"0000-01-01T00:00:00Z"}`},
		{3, `{"api_keys_enabled":true,"max_expiration":"720h","max_keys_per_user":5,"expiring_soon_window":"168h"}`},
		{3, `{"max_expiration":null,"expiring_soon_window":null}`},
		{3, `{"max_expiration":"1ns","max_expiration":null}`},
		{4, `{"description":"d","rules":[{"methods":["GET"],"paths":["/a/*"]}],"rate_limit":{"requests_per_second":0.5,"burst":2}}`},
		{4, `{"rules":[{"methods":["GET"],"methods":["POST"]}]}`},
		{4, `{"rate_limit":{"requests_per_second":1e400}}`},
	}
	for _, s := range seeds {
		f.Add(s.kind, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		k := decodeKinds[int(kind)%len(decodeKinds)]
		v := k.new()
		err := decodeRaw(body, v)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || (ae.Status != http.StatusBadRequest && ae.Status != http.StatusRequestEntityTooLarge) {
				t.Fatalf("%s %q: rejection is not a 400/413 apiError: %#v", k.name, body, err)
			}
			return
		}

		if !utf8.Valid(body) {
			t.Fatalf("%s %q: accepted invalid UTF-8", k.name, body)
		}
		if name, dup := duplicateName(body); dup {
			t.Fatalf("%s %q: accepted duplicate name %q", k.name, body, name)
		}

		// Unknown fields: an accepted body that is an object names only
		// the type's fields, exactly.
		var obj map[string]json.RawMessage
		if json.Unmarshal(body, &obj) == nil && obj != nil {
			known := jsonNames(reflect.TypeOf(v).Elem())
			for name := range obj {
				if !known[name] {
					t.Fatalf("%s %q: accepted unknown field %q", k.name, body, name)
				}
			}
		}

		first, err := k.encode(v)
		if err != nil {
			t.Fatalf("%s %q: accepted body does not re-encode: %v", k.name, body, err)
		}
		again := k.new()
		if err := decodeRaw(first, again); err != nil {
			t.Fatalf("%s %q: re-encoding %s is rejected: %v", k.name, body, first, err)
		}
		second, err := k.encode(again)
		if err != nil {
			t.Fatalf("%s: %s does not re-encode: %v", k.name, first, err)
		}
		if !bytes.Equal(first, second) {
			t.Fatalf("%s %q: encoding is not stable:\n%s\n%s", k.name, body, first, second)
		}
	})
}

// decodeRaw runs decodeBody over body as a request would.
func decodeRaw(body []byte, dst any) error {
	r := httptest.NewRequest("POST", "/v1/tenants/t/keys", bytes.NewReader(body))
	return decodeBody(httptest.NewRecorder(), r, dst)
}

// duplicateName finds a name that occurs twice in one object of a valid JSON
// text, walking it with encoding/json's tokenizer (which unescapes names:
// "n\u0061me" is "name").
func duplicateName(body []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object bool
		names  map[string]bool
		key    bool // the next token of this object is a name
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch {
		case tok == json.Delim('{'):
			stack = append(stack, &frame{object: true, names: map[string]bool{}, key: true})
			continue
		case tok == json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case tok == json.Delim('}') || tok == json.Delim(']'):
			stack = stack[:len(stack)-1]
		case top != nil && top.object && top.key:
			name := tok.(string)
			if top.names[name] {
				return name, true
			}
			top.names[name] = true
			top.key = false
			continue
		}
		// A value ended: the enclosing object expects a name next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

// jsonNames are the JSON names of a struct's fields.
func jsonNames(t reflect.Type) map[string]bool {
	names := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		names[tag] = true
	}
	return names
}

// encodePatch writes a patch (a struct of store.Opt fields) back as the
// PATCH body it came from: set fields only, null for explicit nulls
// (store.Opt has no MarshalJSON).
func encodePatch(v any) ([]byte, error) {
	out := map[string]any{}
	rv := reflect.ValueOf(v).Elem()
	t := rv.Type()
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		fv := rv.Field(i)
		if !fv.FieldByName("Set").Bool() {
			continue
		}
		if fv.FieldByName("Null").Bool() {
			out[tag] = nil
			continue
		}
		out[tag] = fv.FieldByName("Value").Interface()
	}
	return json.Marshal(out) // map keys come out sorted: a stable encoding
}

// TestDecodeExactNames: field names are exact, at every depth (found by
// FuzzDecode: encoding/json alone accepts "NAME" and "deſcription").
func TestDecodeExactNames(t *testing.T) {
	for _, c := range []struct {
		body  string
		dst   any
		field string // "" = accepted
	}{
		{`{"name":"x","description":"d"}`, new(keyCreate), ""},
		{`{"n\u0061me":"x"}`, new(keyCreate), ""},
		{`{"NAME":"x"}`, new(keyCreate), "NAME"},
		{`{"deſcription":"x"}`, new(keyCreate), "deſcription"},
		{`{"Grace_Period":"1h"}`, new(store.RotateInput), "Grace_Period"},
		{`{"Max_Keys_Per_User":3}`, new(store.SettingsPatch), "Max_Keys_Per_User"},
		{`{"rules":[{"methods":["GET"],"paths":["/a"]}],"rate_limit":{"requests_per_second":1,"burst":2}}`, new(store.GroupInput), ""},
		{`{"rules":[{"methods":["GET"]},{"Paths":["/a"]}]}`, new(store.GroupInput), "rules[1].Paths"},
		{`{"rate_limit":{"Burst":2}}`, new(store.GroupInput), "rate_limit.Burst"},
		{`{"0":1}`, new(store.GroupInput), "0"},
		{`{"ip_allowlist":["10.0.0.1"],"Group":"g"}`, new(store.KeyPatch), "Group"},
		{`{"rate_limit":null,"rules":null}`, new(store.GroupInput), ""},
	} {
		err := decodeRaw([]byte(c.body), c.dst)
		var ae *apiError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v", c.body, err)
		case c.field != "" && (!errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Fields[c.field] != "unknown field"):
			t.Errorf("%s: want 400 unknown field %q, got %#v", c.body, c.field, err)
		}
	}
}

// TestDuplicateName checks FuzzDecode's independent duplicate finder.
func TestDuplicateName(t *testing.T) {
	for body, want := range map[string]string{
		`{"a":1,"b":[{"a":1}],"c":{"a":{"a":1}}}`: "",
		`{"a":{"b":1,"b":2}}`:                     "b",
		`{"a":[1,{"x":1}],"a":2}`:                 "a",
		`{"n\u0061me":1,"name":2}`:                "name",
		`[{"a":1},{"a":1}]`:                       "",
	} {
		got, dup := duplicateName([]byte(body))
		if got != want || dup != (want != "") {
			t.Errorf("%s: got %q %v, want %q", body, got, dup, want)
		}
	}
}
