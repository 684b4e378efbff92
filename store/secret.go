package store

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
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

// MaxSecretLen bounds what the gateway will even look at.
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
	var want [checksumLen]byte
	w := appendBase62(want[:0], crc32.ChecksumIEEE([]byte(s[:body])))
	return string(w) == s[body+1:]
}

func isBase62(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

// SecretHash is what is stored at rest instead of a secret.
type SecretHash [sha256.Size]byte

// hasher hashes secrets: plain SHA-256, or HMAC-SHA-256 with a server pepper
// so that a stolen store alone cannot be used to test guesses.
type hasher struct{ pepper []byte }

func (h hasher) hash(secret string) SecretHash {
	if len(h.pepper) == 0 {
		return sha256.Sum256([]byte(secret))
	}
	m := hmac.New(sha256.New, h.pepper)
	m.Write([]byte(secret))
	var out SecretHash
	m.Sum(out[:0])
	return out
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
func newID(prefix string, now time.Time) string {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	b := make([]byte, 0, len(prefix)+1+26)
	b = append(b, prefix...)
	b = append(b, '_')
	ms := uint64(now.UnixMilli())
	var t [10]byte
	for i := 9; i >= 0; i-- {
		t[i] = crockford[ms&31]
		ms >>= 5
	}
	b = append(b, t[:]...)
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	for _, c := range rnd {
		b = append(b, crockford[c&31])
	}
	return string(b)
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
