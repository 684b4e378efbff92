package store

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"sync"
	"time"
)

// Secret layout: <prefix>_<22 base62 random>_<6 base62 CRC32>. 22 base62
// characters carry 130.9 bits from crypto/rand; the checksum lets the gateway
// turn away typos and garbage before touching any cache or the store.
const (
	KeyPrefix   = "kg"  // gateway API keys
	TokenPrefix = "kga" // admin user tokens

	randomLen   = 22
	checksumLen = 6
	base62      = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// MaxSecretLen is the length of the longest native secret (an admin
// token's); imported key secrets may be longer (MaxPresentedSecretLen).
const MaxSecretLen = len(TokenPrefix) + 1 + randomLen + 1 + checksumLen

// NewSecret returns a fresh secret with the given prefix.
func NewSecret(prefix string) string {
	b := make([]byte, 0, len(prefix)+2+randomLen+checksumLen)
	b = append(b, prefix...)
	b = append(b, '_')
	var rnd [64]byte
	n := 0
	for n < randomLen {
		if _, err := rand.Read(rnd[:]); err != nil {
			panic("crypto/rand failed: " + err.Error()) // never happens on Linux
		}
		for _, c := range rnd {
			// Rejection sampling keeps every character uniform: 248 = 4*62.
			if c >= 248 {
				continue
			}
			b = append(b, base62[c%62])
			n++
			if n == randomLen {
				break
			}
		}
	}
	sum := crc32.ChecksumIEEE(b)
	b = append(b, '_')
	b = appendBase62(b, sum)
	return string(b)
}

func appendBase62(b []byte, v uint32) []byte {
	var tmp [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		tmp[i] = base62[v%62]
		v /= 62
	}
	return append(b, tmp[:]...)
}

// WellFormed reports whether s has the layout of a secret with the prefix and
// a correct checksum. It does not allocate.
func WellFormed(prefix, s string) bool {
	if len(s) != len(prefix)+2+randomLen+checksumLen || s[:len(prefix)] != prefix || s[len(prefix)] != '_' {
		return false
	}
	body := len(prefix) + 1 + randomLen
	if s[body] != '_' {
		return false
	}
	for i := len(prefix) + 1; i < body; i++ {
		if !isBase62(s[i]) {
			return false
		}
	}
	// Decode the presented checksum rather than encode the computed one
	// (multiplications instead of divisions). 62^6 > 2^32, so the base62
	// form of a CRC is unique and comparing the numbers is exact.
	var got uint64
	for i := body + 1; i < len(s); i++ {
		d := base62Value[s[i]]
		if d < 0 {
			return false
		}
		got = got*62 + uint64(d)
	}
	return got == uint64(crc32String(s[:body]))
}

// base62Value maps a character to its base62 digit, or -1.
var base62Value = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(base62); i++ {
		t[base62[i]] = int8(i)
	}
	return t
}()

// crc32Slicing8 are the slicing-by-8 tables of CRC-32 (IEEE).
var crc32Slicing8 = func() (t [8][256]uint32) {
	t[0] = *crc32.IEEETable
	for i := range 256 {
		crc := t[0][i]
		for j := 1; j < 8; j++ {
			crc = t[0][crc&0xFF] ^ (crc >> 8)
			t[j][i] = crc
		}
	}
	return t
}()

// crc32String is crc32.ChecksumIEEE(s) without converting s to a slice:
// the conversion escapes through crc32's dispatch and would cost the hot
// path an allocation for every presented secret.
func crc32String(s string) uint32 {
	t := &crc32Slicing8
	crc := ^uint32(0)
	for len(s) >= 8 {
		crc ^= uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
		crc = t[0][s[7]] ^ t[1][s[6]] ^ t[2][s[5]] ^ t[3][s[4]] ^
			t[4][crc>>24] ^ t[5][(crc>>16)&0xFF] ^ t[6][(crc>>8)&0xFF] ^ t[7][crc&0xFF]
		s = s[8:]
	}
	for i := 0; i < len(s); i++ {
		crc = t[0][byte(crc)^s[i]] ^ (crc >> 8)
	}
	return ^crc
}

func isBase62(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

// SecretHash is what is stored at rest instead of a secret.
type SecretHash [sha256.Size]byte

// hasher hashes secrets: plain SHA-256, or HMAC-SHA-256 with a server pepper
// so that a stolen store alone cannot be used to test guesses.
type hasher struct {
	pepper []byte
	// ipad and opad are the HMAC pads of the pepper (RFC 2104), so that
	// hashing a secret on the hot path needs no allocation.
	ipad, opad [sha256.BlockSize]byte
}

func newHasher(pepper []byte) hasher {
	h := hasher{pepper: pepper}
	if len(pepper) == 0 {
		return h
	}
	key := pepper
	if len(key) > sha256.BlockSize {
		sum := sha256.Sum256(key)
		key = sum[:]
	}
	copy(h.ipad[:], key)
	copy(h.opad[:], key)
	for i := range h.ipad {
		h.ipad[i] ^= 0x36
		h.opad[i] ^= 0x5c
	}
	return h
}

// hmacStackMax is the longest secret hashed with buffers on the stack;
// every well-formed secret is far shorter.
const hmacStackMax = 64

func (h *hasher) hash(secret string) SecretHash {
	if len(h.pepper) == 0 {
		return sha256.Sum256([]byte(secret))
	}
	if len(secret) > hmacStackMax {
		m := hmac.New(sha256.New, h.pepper)
		m.Write([]byte(secret))
		var out SecretHash
		m.Sum(out[:0])
		return out
	}
	var in [sha256.BlockSize + hmacStackMax]byte
	copy(in[:], h.ipad[:])
	n := copy(in[sha256.BlockSize:], secret)
	inner := sha256.Sum256(in[:sha256.BlockSize+n])
	var out [sha256.BlockSize + sha256.Size]byte
	copy(out[:], h.opad[:])
	copy(out[sha256.BlockSize:], inner[:])
	return sha256.Sum256(out[:])
}

// cacheKey is the ristretto key for a hash; entries carry the full hash and
// are compared on hit, so a 64-bit collision can never admit another key.
func (h SecretHash) cacheKey() uint64 { return binary.LittleEndian.Uint64(h[:8]) }

// Hint is how a secret is recognised in a list: prefix, first 4 and last 4
// characters of the random part. Never enough to use it.
func Hint(secret string) string {
	i := len(secret) - checksumLen - 1 - randomLen
	if i < 0 {
		return ""
	}
	r := secret[i : i+randomLen]
	return secret[:i] + r[:4] + "…" + r[len(r)-4:]
}

// newID returns a time-ordered id with the prefix: 10 Crockford base32
// characters of milliseconds then 16 random ones (80 bits), like a ULID, so
// lists in id order are in creation order.
//
// Within one millisecond (or when the clock steps back) the previous id's
// time is kept and its random part incremented, as ULID's monotonic mode
// does, so ids stay strictly increasing in this process.
func newID(prefix string, now time.Time) string {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	idState.mu.Lock()
	ms := uint64(max(now.UnixMilli(), 0))
	var rnd [16]byte // one base32 digit per byte
	if ms <= idState.ms && idState.used {
		ms, rnd = idState.ms, idState.rnd
		for i := len(rnd) - 1; i >= 0; i-- { // increment; 80 bits never wrap
			rnd[i] = (rnd[i] + 1) & 31
			if rnd[i] != 0 {
				break
			}
		}
	} else {
		_, _ = rand.Read(rnd[:])
		for i := range rnd {
			rnd[i] &= 31
		}
		rnd[0] &= 15 // leave room to increment without overflow
	}
	idState.ms, idState.rnd, idState.used = ms, rnd, true
	idState.mu.Unlock()

	b := make([]byte, 0, len(prefix)+1+26)
	b = append(b, prefix...)
	b = append(b, '_')
	var t [10]byte
	for i := 9; i >= 0; i-- {
		t[i] = crockford[ms&31]
		ms >>= 5
	}
	b = append(b, t[:]...)
	for _, c := range rnd {
		b = append(b, crockford[c])
	}
	return string(b)
}

var idState struct {
	mu   sync.Mutex
	used bool
	ms   uint64
	rnd  [16]byte
}

func (h SecretHash) MarshalText() ([]byte, error) {
	out := make([]byte, hex.EncodedLen(len(h)))
	hex.Encode(out, h[:])
	return out, nil
}

func (h *SecretHash) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(h) {
		return fmt.Errorf("hash: want %d hex bytes", len(h))
	}
	_, err := hex.Decode(h[:], b)
	return err
}
