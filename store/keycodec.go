package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"time"
)

// Key records (kh/<secret hash>) are read on every verification cache miss,
// so they use a compact binary form rather than JSON: smaller Pebble blocks
// and a decode that allocates once for all the strings a cached view keeps.
// Records written as JSON by earlier versions (first byte '{') still read.
//
//	0x01 | mask (1 byte) |
//	id | tenant | name | owner | group | hint | revoked_by |
//	allowlist count (uvarint) | entry… |
//	created_at | updated_at |
//	[expires_at] [revoked_at] [prev_until] [grace_until] |
//	[prev_hash (32 bytes)] [grace_of (32 bytes)] |
//	description
//
// A string is its length (uvarint) and its bytes. A time is its unix
// seconds (varint) and nanoseconds (uvarint, < 1e9), read back as UTC; the
// zero time.Time round-trips, and so does any expiry a client may set
// (unix nanoseconds would overflow past 2262). A bracketed field is present
// when its mask bit is set (keyHas*); the other mask bits must be zero.
// The description is last and must end the record exactly, so that any
// truncation is an error; it is the one string decoded into its own
// allocation, so that cached views (which keep id, tenant, name, owner and
// group) do not keep up to DescriptionMax bytes alive each.
const keyCodecV1 = 0x01

// Mask bits of the optional fields, in layout order.
const (
	keyHasExpiresAt = 1 << iota
	keyHasRevokedAt
	keyHasPrevUntil
	keyHasGraceUntil
	keyHasPrevHash
	keyHasGraceOf

	keyHasTimes  = keyHasExpiresAt | keyHasRevokedAt | keyHasPrevUntil | keyHasGraceUntil
	keyHasHashes = keyHasPrevHash | keyHasGraceOf
	keyHasAll    = keyHasTimes | keyHasHashes
)

// keyRecordStrings is how many single strings precede the allowlist.
const keyRecordStrings = 7

var errBadKeyRecord = errors.New("corrupt key record")

func badKeyRecord(why string) error { return fmt.Errorf("%w: %s", errBadKeyRecord, why) }

func encodeKeyRecord(r *keyRecord) []byte {
	strs := [keyRecordStrings]string{r.ID, r.Tenant, r.Name, r.Owner, r.Group, r.Hint, r.RevokedBy}
	n := 2 + keyRecordStrings*2 + 2 + 2*10 + 2 + len(r.Description)
	for _, s := range strs {
		n += len(s)
	}
	for _, s := range r.IPAllowlist {
		n += 2 + len(s)
	}
	var mask byte
	opt := [4]*time.Time{r.ExpiresAt, r.RevokedAt, r.PrevUntil, r.GraceUntil}
	for i, t := range opt {
		if t != nil {
			mask |= 1 << i
			n += 10
		}
	}
	if r.PrevHash != nil {
		mask |= keyHasPrevHash
		n += len(SecretHash{})
	}
	if r.GraceOf != nil {
		mask |= keyHasGraceOf
		n += len(SecretHash{})
	}

	b := make([]byte, 0, n)
	b = append(b, keyCodecV1, mask)
	for _, s := range strs {
		b = appendKeyString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(r.IPAllowlist)))
	for _, s := range r.IPAllowlist {
		b = appendKeyString(b, s)
	}
	b = appendKeyTime(b, r.CreatedAt)
	b = appendKeyTime(b, r.UpdatedAt)
	for _, t := range opt {
		if t != nil {
			b = appendKeyTime(b, *t)
		}
	}
	if r.PrevHash != nil {
		b = append(b, r.PrevHash[:]...)
	}
	if r.GraceOf != nil {
		b = append(b, r.GraceOf[:]...)
	}
	return appendKeyString(b, r.Description)
}

func appendKeyString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendKeyTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// decodeKeyRecord replaces *r with the record in b (binary, or JSON as
// written by earlier versions). On error *r is left as it was.
func decodeKeyRecord(b []byte, r *keyRecord) error {
	if len(b) > 0 && b[0] == '{' {
		return decodeKeyRecordJSON(b, r)
	}
	if len(b) == 0 {
		return badKeyRecord("empty")
	}
	if b[0] != keyCodecV1 {
		return badKeyRecord(fmt.Sprintf("unknown version %#02x", b[0]))
	}
	if len(b) < 2 {
		return badKeyRecord("truncated")
	}
	mask := b[1]
	if mask&^keyHasAll != 0 {
		return badKeyRecord(fmt.Sprintf("unknown fields %#02x", mask))
	}
	const base = 2
	rd := reader{b: b[base:]}
	pos := func() int { return len(b) - len(rd.b) }

	// Find the strings, then copy them out of b in one allocation.
	var spans [keyRecordStrings][2]int
	for i := range spans {
		n := rd.uvarint()
		if rd.err || n > uint64(len(rd.b)) {
			return badKeyRecord("truncated")
		}
		spans[i] = [2]int{pos() - base, pos() - base + int(n)}
		rd.b = rd.b[n:]
	}
	nAllow := rd.uvarint()
	if rd.err || nAllow > uint64(len(rd.b)) { // an entry takes a byte at least
		return badKeyRecord("truncated")
	}
	allowAt := pos()
	for range nAllow {
		n := rd.uvarint()
		if rd.err || n > uint64(len(rd.b)) {
			return badKeyRecord("truncated")
		}
		rd.b = rd.b[n:]
	}
	end := pos()
	strs := string(b[base:end])

	var rec keyRecord
	sub := func(i int) string { return strs[spans[i][0]:spans[i][1]] }
	rec.ID, rec.Tenant, rec.Name, rec.Owner = sub(0), sub(1), sub(2), sub(3)
	rec.Group, rec.Hint, rec.RevokedBy = sub(4), sub(5), sub(6)
	if nAllow > 0 {
		rec.IPAllowlist = make([]string, nAllow)
		ar := reader{b: b[allowAt:end]} // checked above
		for i := range rec.IPAllowlist {
			n := int(ar.uvarint())
			at := end - len(ar.b) - base
			rec.IPAllowlist[i] = strs[at : at+n]
			ar.b = ar.b[n:]
		}
	}

	rec.CreatedAt = rd.keyTime()
	rec.UpdatedAt = rd.keyTime()
	if mask&keyHasTimes != 0 {
		times := make([]time.Time, 0, bits.OnesCount8(mask&keyHasTimes))
		for i, p := range [4]**time.Time{&rec.ExpiresAt, &rec.RevokedAt, &rec.PrevUntil, &rec.GraceUntil} {
			if mask&(1<<i) != 0 {
				times = append(times, rd.keyTime())
				*p = &times[len(times)-1]
			}
		}
	}
	if mask&keyHasHashes != 0 {
		hashes := make([]SecretHash, 0, bits.OnesCount8(mask&keyHasHashes))
		for i, p := range [2]**SecretHash{&rec.PrevHash, &rec.GraceOf} {
			if mask&(keyHasPrevHash<<i) != 0 {
				var h SecretHash
				if len(rd.b) < len(h) {
					return badKeyRecord("truncated")
				}
				rd.b = rd.b[copy(h[:], rd.b):]
				hashes = append(hashes, h)
				*p = &hashes[len(hashes)-1]
			}
		}
	}
	n := rd.uvarint()
	if rd.err {
		return badKeyRecord("truncated")
	}
	if n != uint64(len(rd.b)) {
		return badKeyRecord("bad length")
	}
	if n > 0 {
		rec.Description = string(rd.b)
	}
	*r = rec
	return nil
}

// keyTime reads a time as appendKeyTime wrote it.
func (r *reader) keyTime() time.Time {
	sec := r.varint()
	nsec := r.uvarint()
	if r.err || nsec >= uint64(time.Second) {
		r.err = true
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// decodeKeyRecordJSON reads a record written by an earlier version, in the
// form the binary codec reads back: UTC times and a nil empty allowlist.
func decodeKeyRecordJSON(b []byte, r *keyRecord) error {
	var rec keyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%w: %w", errBadKeyRecord, err)
	}
	rec.CreatedAt, rec.UpdatedAt = rec.CreatedAt.UTC(), rec.UpdatedAt.UTC()
	for _, t := range [4]*time.Time{rec.ExpiresAt, rec.RevokedAt, rec.PrevUntil, rec.GraceUntil} {
		if t != nil {
			*t = t.UTC()
		}
	}
	if len(rec.IPAllowlist) == 0 {
		rec.IPAllowlist = nil
	}
	*r = rec
	return nil
}

// getKeyRecord reads the record stored under h; a missing one is
// errKVNotFound, unwrapped. Errors do not name the hash: the gateway logs
// them, and hashes stay out of logs like secrets do (callers that know the
// key id add it).
func (s *Store) getKeyRecord(h SecretHash, r *keyRecord) error {
	raw, err := s.kv.Get(hashKey(pKeyHash, h))
	if err != nil {
		return err
	}
	if err := decodeKeyRecord(raw, r); err != nil {
		return fmt.Errorf("%s record: %w", pKeyHash, err)
	}
	return nil
}
