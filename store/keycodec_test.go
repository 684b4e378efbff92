package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testHash(seed byte) *SecretHash {
	var h SecretHash
	for i := range h {
		h[i] = seed + byte(i)
	}
	return &h
}

// keyRecordSamples covers the record shapes the store writes and the edges
// of every field.
func keyRecordSamples() map[string]*keyRecord {
	created := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)
	updated := created.Add(90 * time.Minute)
	return map[string]*keyRecord{
		"zero":    {},
		"minimal": {ID: "key_01HZX", CreatedAt: created, UpdatedAt: created},
		"typical": {
			ID: "key_01J9ZQ3K7M0000000000000000", Tenant: DefaultTenant, Name: "billing service",
			Owner: "alice", Hint: "kg_live_AbCd…WxYz", CreatedAt: created, UpdatedAt: created,
		},
		"full": {
			ID: "key_01J9ZQ3K7M0000000000000001", Tenant: "acme", Name: "Zahlungsdienst 💳 ✓",
			Description: "line one\nline two\x00after NUL — ünïcödé 🚀\x00",
			Owner:       "bob\x00", Group: "billing", IPAllowlist: []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"},
			Hint: "kg_live_AbCd…WxYz", CreatedAt: created, UpdatedAt: updated,
			ExpiresAt: ptr(created.Add(30 * 24 * time.Hour)), RevokedAt: ptr(updated), RevokedBy: "carol 👩‍💻",
			PrevHash: testHash(1), PrevUntil: ptr(updated.Add(time.Hour)),
			GraceOf: testHash(100), GraceUntil: ptr(updated.Add(2 * time.Hour)),
		},
		"long description": {
			ID: "key_long", Tenant: DefaultTenant, Name: "n", Description: strings.Repeat("äb🚀\x00", 4096/8),
			CreatedAt: created, UpdatedAt: updated,
		},
		"grace": {ID: "key_01J9ZQ3K7M0000000000000002", GraceOf: testHash(7), GraceUntil: ptr(updated.Add(time.Hour)), CreatedAt: created, UpdatedAt: updated},
		"times at the edges": {
			ID:        "key_edges",
			CreatedAt: time.Unix(0, 0).UTC(), // the epoch is not the zero time
			UpdatedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
			ExpiresAt: ptr(time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)), // past UnixNano's range
			RevokedAt: ptr(time.Date(1500, 6, 1, 0, 0, 0, 0, time.UTC)),
			PrevUntil: ptr(time.Time{}),
		},
		"empty allowlist":            {ID: "key_e", IPAllowlist: []string{}, CreatedAt: created, UpdatedAt: created},
		"empty strings in allowlist": {ID: "key_s", IPAllowlist: []string{"", "x", ""}, CreatedAt: created, UpdatedAt: created},
	}
}

// normalKeyRecord is r as any codec reads it back: an empty allowlist is nil
// (JSON's omitempty did the same).
func normalKeyRecord(r *keyRecord) *keyRecord {
	c := *r
	if len(c.IPAllowlist) == 0 {
		c.IPAllowlist = nil
	}
	return &c
}

func TestKeyCodecRoundTrip(t *testing.T) {
	for name, rec := range keyRecordSamples() {
		t.Run(name, func(t *testing.T) {
			b := encodeKeyRecord(rec)
			if b[0] != keyCodecV1 {
				t.Fatalf("version byte %#x", b[0])
			}
			var got keyRecord
			mustNil(t, decodeKeyRecord(b, &got))
			if want := normalKeyRecord(rec); !reflect.DeepEqual(&got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, *want)
			}
			if !bytes.Equal(encodeKeyRecord(&got), b) {
				t.Fatal("re-encoding the decoded record differs")
			}

			// JSON (an older version's record) reads back the same too.
			var legacy keyRecord
			mustNil(t, decodeKeyRecord(mustJSON(rec), &legacy))
			if want := normalKeyRecord(rec); !reflect.DeepEqual(&legacy, want) {
				t.Fatalf("JSON:\n got %+v\nwant %+v", legacy, *want)
			}
		})
	}
}

// Decoding replaces the whole record: nothing of a reused one survives.
func TestKeyCodecDecodeReplaces(t *testing.T) {
	samples := keyRecordSamples()
	for _, raw := range [][]byte{encodeKeyRecord(samples["minimal"]), mustJSON(samples["minimal"])} {
		got := *samples["full"]
		mustNil(t, decodeKeyRecord(raw, &got))
		if !reflect.DeepEqual(&got, samples["minimal"]) {
			t.Fatalf("%q: leftovers in %+v", raw[:1], got)
		}
	}
}

// Pointer fields decoded from one record do not alias each other.
func TestKeyCodecPointersDistinct(t *testing.T) {
	var got keyRecord
	mustNil(t, decodeKeyRecord(encodeKeyRecord(keyRecordSamples()["full"]), &got))
	times := []*time.Time{got.ExpiresAt, got.RevokedAt, got.PrevUntil, got.GraceUntil}
	for i := range times {
		for j := range i {
			if times[i] == times[j] {
				t.Fatalf("times %d and %d share storage", i, j)
			}
		}
	}
	if got.PrevHash == got.GraceOf {
		t.Fatal("hashes share storage")
	}
	*got.ExpiresAt = time.Time{}
	*got.PrevHash = SecretHash{}
	if got.RevokedAt.IsZero() || *got.GraceOf == (SecretHash{}) {
		t.Fatal("writing one pointer changed another")
	}
}

func TestKeyCodecSmallerThanJSON(t *testing.T) {
	for name, rec := range keyRecordSamples() {
		if name == "zero" || name == "times at the edges" {
			continue
		}
		bin, js := encodeKeyRecord(rec), mustJSON(rec)
		if len(bin) >= len(js) {
			t.Errorf("%s: binary %d bytes, JSON %d", name, len(bin), len(js))
		}
	}

	// A key as the store writes it, at a time with nanoseconds.
	clk := newClock()
	clk.Advance(123456789)
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, _ := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "billing service"})
	h := currentHash(t, s, key.ID)
	bin, err := s.kv.Get(hashKey(pKeyHash, h))
	mustNil(t, err)
	var rec keyRecord
	mustNil(t, decodeKeyRecord(bin, &rec))
	js := mustJSON(&rec)
	t.Logf("typical key record: binary %d bytes, JSON %d bytes", len(bin), len(js))
	if len(bin)*2 > len(js) {
		t.Fatalf("binary %d bytes is not under half of JSON's %d", len(bin), len(js))
	}
}

func TestKeyCodecLegacyJSON(t *testing.T) {
	want := keyRecordSamples()["full"]
	raw, err := json.Marshal(want)
	mustNil(t, err)
	var got keyRecord
	mustNil(t, decodeKeyRecord(raw, &got))
	if !reflect.DeepEqual(&got, want) {
		t.Fatalf("got %+v\nwant %+v", got, *want)
	}

	// Times with an offset (never written by the store, which writes UTC)
	// read back as the same instant in UTC, as the binary form does.
	got = keyRecord{}
	mustNil(t, decodeKeyRecord([]byte(`{"id":"k","created_at":"2030-01-02T04:04:05+01:00","updated_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-03T00:00:00-05:00","ip_allowlist":[]}`), &got))
	wantT := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if got.CreatedAt != wantT || got.UpdatedAt != wantT || *got.ExpiresAt != time.Date(2030, 1, 3, 5, 0, 0, 0, time.UTC) || got.IPAllowlist != nil {
		t.Fatalf("got %+v", got)
	}

	for _, bad := range []string{`{`, `{"id":1}`, `{"id":"k"} x`, `{"prev_hash":"00"}`} {
		if err := decodeKeyRecord([]byte(bad), &got); !errors.Is(err, errBadKeyRecord) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestKeyCodecCorrupt(t *testing.T) {
	sentinel := keyRecord{ID: "untouched"}
	check := func(t *testing.T, what string, b []byte) {
		t.Helper()
		got := sentinel
		err := decodeKeyRecord(b, &got)
		if !errors.Is(err, errBadKeyRecord) {
			t.Fatalf("%s (% x): want errBadKeyRecord, got %v", what, b, err)
		}
		if !reflect.DeepEqual(got, sentinel) {
			t.Fatalf("%s: a failed decode changed the record to %+v", what, got)
		}
	}
	for name, rec := range keyRecordSamples() {
		b := encodeKeyRecord(rec)
		for i := range len(b) {
			check(t, name+" truncated", b[:i])
		}
		check(t, name+" with a trailing byte", append(bytes.Clone(b), 0))
		for _, v := range []byte{0x00, 0x02, 0x7b - 1, 0xff} {
			c := bytes.Clone(b)
			c[0] = v
			check(t, name+" with a wrong version", c)
		}
		c := bytes.Clone(b)
		c[1] |= 0x80
		check(t, name+" with an unknown field bit", c)
	}
	check(t, "nil", nil)
	check(t, "empty", []byte{})
	check(t, "JSON array", []byte(`[1]`))

	// Nanoseconds of a second or more are not a time.
	b := encodeKeyRecord(&keyRecord{ID: "k"})
	at := bytes.LastIndex(b, []byte{0})                                   // the description's length
	c := binary.AppendUvarint(bytes.Clone(b[:at-1]), uint64(time.Second)) // updated_at's nanoseconds
	check(t, "nanoseconds out of range", append(c, 0))
	mustNil(t, decodeKeyRecord(append(binary.AppendUvarint(bytes.Clone(b[:at-1]), uint64(time.Second-1)), 0), new(keyRecord)))
	// A length past the end, and an allowlist count past the end.
	check(t, "long string", []byte{keyCodecV1, 0, 0x7f, 'a'})
	check(t, "huge allowlist", append([]byte{keyCodecV1, 0, 0, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff, 0x0f))
}

func FuzzDecodeKeyRecord(f *testing.F) {
	for _, rec := range keyRecordSamples() {
		f.Add(encodeKeyRecord(rec))
		f.Add(mustJSON(rec))
	}
	f.Add([]byte{})
	f.Add([]byte{keyCodecV1})
	f.Add([]byte{keyCodecV1, keyHasAll, 1, 2, 3})
	f.Add([]byte("{}"))
	f.Add([]byte(`{"id":"k","ip_allowlist":[],"created_at":"2030-01-02T04:04:05+01:00","grace_of":null}`))
	f.Add([]byte("\x02garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec keyRecord
		if err := decodeKeyRecord(b, &rec); err != nil {
			if !errors.Is(err, errBadKeyRecord) {
				t.Fatalf("error not errBadKeyRecord: %v", err)
			}
			if !reflect.DeepEqual(rec, keyRecord{}) {
				t.Fatalf("failed decode filled %+v", rec)
			}
			return
		}
		enc := encodeKeyRecord(&rec)
		var again keyRecord
		if err := decodeKeyRecord(enc, &again); err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, rec) {
			t.Fatalf("re-encoded record decodes differently:\n got %+v\nwant %+v", again, rec)
		}
		if !bytes.Equal(encodeKeyRecord(&again), enc) {
			t.Fatal("encoding is not stable")
		}
	})
}

// currentHash is the secret hash the key's id points at.
func currentHash(t testing.TB, s *Store, id string) SecretHash {
	t.Helper()
	raw, err := s.kv.Get(k(pKeyID + id))
	mustNil(t, err)
	var h SecretHash
	if len(raw) != len(h) {
		t.Fatalf("k/%s holds %d bytes", id, len(raw))
	}
	copy(h[:], raw)
	return h
}

// toJSONRecord rewrites the record under h as an older version stored it.
func toJSONRecord(t testing.TB, s *Store, h SecretHash) {
	t.Helper()
	var rec keyRecord
	mustNil(t, s.getKeyRecord(h, &rec))
	raw, err := json.Marshal(&rec)
	mustNil(t, err)
	var b Batch
	b.Set(hashKey(pKeyHash, h), raw)
	mustNil(t, s.kv.Apply(&b, true))
}

func wantRecordForm(t testing.TB, s *Store, h SecretHash, first byte) {
	t.Helper()
	raw, err := s.kv.Get(hashKey(pKeyHash, h))
	mustNil(t, err)
	if raw[0] != first {
		t.Fatalf("record starts with %q, want %q", raw[0], first)
	}
}

// A store written by an older version (JSON key records) keeps working, and
// records it rewrites become binary.
func TestKeyRecordsWrittenAsJSON(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	key, secret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "legacy", Description: "from v0", IPAllowlist: []string{"10.0.0.0/8"}})
	h := currentHash(t, s, key.ID)
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictValid { // cache the binary view
		t.Fatal(vname(v))
	}
	toJSONRecord(t, s, h)
	wantRecordForm(t, s, h, '{')

	view, v, err := s.Verify(DefaultTenant, secret, clk.Now())
	mustNil(t, err)
	if v != VerdictValid || view.ID != key.ID || view.Name != "legacy" || view.Owner != "alice" || view.Allow == nil {
		t.Fatalf("%s %+v", vname(v), view)
	}
	got, err := s.GetKey(DefaultTenant, key.ID)
	mustNil(t, err)
	if got.Description != "from v0" || !reflect.DeepEqual(got.IPAllowlist, []string{"10.0.0.0/8"}) || !got.CreatedAt.Equal(key.CreatedAt) {
		t.Fatalf("GetKey: %+v", got)
	}

	// Rotate with a grace period, then turn both records into JSON.
	_, newSecret, err := s.RotateKey("op", DefaultTenant, key.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	h2 := currentHash(t, s, key.ID)
	wantRecordForm(t, s, h2, keyCodecV1)
	wantRecordForm(t, s, h, keyCodecV1)
	toJSONRecord(t, s, h)
	toJSONRecord(t, s, h2)
	for _, sec := range []string{secret, newSecret} {
		if v := verdict(t, s, DefaultTenant, sec, clk.Now()); v != VerdictValid {
			t.Fatalf("JSON records after rotation: %s", vname(v))
		}
	}

	// An update rewrites the key's record in the binary form; the grace
	// record is not written (it did not change), yet the rotated-out
	// secret's view, built from the key's record, shows the edit.
	_, err = s.UpdateKey("op", DefaultTenant, key.ID, KeyPatch{Name: Some("renamed")})
	mustNil(t, err)
	wantRecordForm(t, s, h2, keyCodecV1)
	wantRecordForm(t, s, h, '{')
	for _, sec := range []string{secret, newSecret} {
		view, v, err := s.Verify(DefaultTenant, sec, clk.Now())
		mustNil(t, err)
		if v != VerdictValid || view.Name != "renamed" {
			t.Fatalf("after update: %s %+v", vname(v), view)
		}
	}
	clk.Advance(2 * time.Hour)
	if v := verdict(t, s, DefaultTenant, secret, clk.Now()); v != VerdictInvalid {
		t.Fatalf("old secret after its grace period: %s", vname(v))
	}

	// A JSON record is revoked like any other.
	toJSONRecord(t, s, h2)
	_, err = s.RevokeKey("op", DefaultTenant, key.ID)
	mustNil(t, err)
	wantRecordForm(t, s, h2, keyCodecV1)
	if v := verdict(t, s, DefaultTenant, newSecret, clk.Now()); v != VerdictRevoked {
		t.Fatalf("revoked: %s", vname(v))
	}
}

// Every kh/ record the store writes is binary.
func TestKeyRecordsWrittenBinary(t *testing.T) {
	clk := newClock()
	s := memStore(t, clk)
	enable(t, s, DefaultTenant)
	far := time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC) // past UnixNano's range
	a, aSecret := mustKey(t, s, DefaultTenant, "alice", KeyInput{Name: "aa", ExpiresAt: &far, IPAllowlist: []string{"192.0.2.0/24"}})
	_, _, err := s.CreateKeys("op", DefaultTenant, "bob", []KeyInput{{Name: "b1"}, {Name: "b2", Description: "dd"}})
	mustNil(t, err)
	_, err = s.UpdateKey("op", DefaultTenant, a.ID, KeyPatch{Description: Some("edited")})
	mustNil(t, err)
	c, _ := mustKey(t, s, DefaultTenant, "carol", KeyInput{Name: "cc"})
	_, _, err = s.RotateKey("op", DefaultTenant, c.ID, RotateInput{GracePeriod: dur(time.Hour)})
	mustNil(t, err)
	d, _ := mustKey(t, s, DefaultTenant, "dave", KeyInput{Name: "dd"})
	_, err = s.RevokeKey("op", DefaultTenant, d.ID)
	mustNil(t, err)

	n := 0
	mustNil(t, s.kv.Scan([]byte(pKeyHash), nil, func(key, v []byte) bool {
		n++
		if len(v) == 0 || v[0] != keyCodecV1 {
			t.Errorf("%x: not binary: %q", key, v)
		}
		var rec keyRecord
		if err := decodeKeyRecord(v, &rec); err != nil {
			t.Errorf("%x: %v", key, err)
		}
		return true
	}))
	if n != 6 { // a, b1, b2, c, c's grace record, d
		t.Fatalf("%d key records", n)
	}
	if v := verdict(t, s, DefaultTenant, aSecret, clk.Now()); v != VerdictValid {
		t.Fatalf("key expiring in 2600: %s", vname(v))
	}
	got, err := s.GetKey(DefaultTenant, a.ID)
	mustNil(t, err)
	if !got.ExpiresAt.Equal(far) {
		t.Fatalf("expires_at %v", got.ExpiresAt)
	}
}

func BenchmarkKeyRecordDecode(b *testing.B) {
	rec := keyRecordSamples()["typical"]
	rec.ExpiresAt = ptr(rec.CreatedAt.Add(90 * 24 * time.Hour))
	for _, c := range []struct {
		name string
		raw  []byte
	}{{"binary", encodeKeyRecord(rec)}, {"json", mustJSON(rec)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var got keyRecord
				if err := decodeKeyRecord(c.raw, &got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
