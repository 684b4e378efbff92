package store

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"hash/crc32"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestNewSecretWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		for _, prefix := range []string{KeyPrefix, TokenPrefix} {
			s := NewSecret(prefix)
			if !WellFormed(prefix, s) {
				t.Fatalf("NewSecret(%q) = %q is not well-formed", prefix, s)
			}
			if len(s) != len(prefix)+1+randomLen+1+checksumLen || len(s) > MaxSecretLen {
				t.Fatalf("bad length %d of %q (MaxSecretLen %d)", len(s), s, MaxSecretLen)
			}
			if !strings.HasPrefix(s, prefix+"_") {
				t.Fatalf("%q lacks prefix %q", s, prefix)
			}
			for _, c := range []byte(s[len(prefix)+1 : len(prefix)+1+randomLen]) {
				if !isBase62(c) {
					t.Fatalf("%q: random part has %q", s, c)
				}
			}
			if seen[s] {
				t.Fatalf("duplicate secret %q", s)
			}
			seen[s] = true
		}
	}
}

func TestNewSecretCharacterSpread(t *testing.T) {
	// 22 characters × 3000 secrets: every base62 character must show up,
	// none wildly more often than another (rejection sampling is uniform).
	counts := map[byte]int{}
	for range 3000 {
		s := NewSecret(KeyPrefix)
		for _, c := range []byte(s[3 : 3+randomLen]) {
			counts[c]++
		}
	}
	if len(counts) != 62 {
		t.Fatalf("only %d distinct characters", len(counts))
	}
	want := 3000 * randomLen / 62 // ≈ 1064
	for c, n := range counts {
		if n < want*7/10 || n > want*13/10 {
			t.Errorf("character %q drawn %d times, want ≈ %d", c, n, want)
		}
	}
}

func TestWellFormedRejects(t *testing.T) {
	good := NewSecret(KeyPrefix)
	tok := NewSecret(TokenPrefix)
	// Every single-character change fails: the checksum catches changes of
	// the random part, the layout catches the rest.
	for i := range len(good) {
		for _, c := range []byte("0aZ_-.") {
			if good[i] == c {
				continue
			}
			bad := good[:i] + string(c) + good[i+1:]
			if WellFormed(KeyPrefix, bad) {
				t.Fatalf("changed %d to %q: %q still well-formed", i, c, bad)
			}
		}
	}
	cases := map[string]string{
		"empty":            "",
		"prefix only":      "kg_",
		"wrong prefix":     "kx" + good[2:],
		"upper prefix":     "KG" + good[2:],
		"token is not key": tok,
		"truncated":        good[:len(good)-1],
		"extended":         good + "0",
		"space":            " " + good[1:],
		"no separator":     strings.Replace(good, "_", "-", 1),
		"non-ascii":        good[:5] + "é" + good[7:],
		"checksum garbage": good[:len(good)-6] + "!!!!!!",
	}
	for name, s := range cases {
		if WellFormed(KeyPrefix, s) {
			t.Errorf("%s: %q is well-formed", name, s)
		}
	}
	if WellFormed(TokenPrefix, good) {
		t.Error("a key is a well-formed token")
	}
	if !WellFormed(TokenPrefix, tok) {
		t.Error("token not well-formed")
	}
	// A correct checksum over a body with a non-base62 character is refused.
	body := "kg_" + strings.Repeat("A", randomLen-1) + "-"
	forged := string(appendBase62([]byte(body+"_"), crc32.ChecksumIEEE([]byte(body))))
	if WellFormed(KeyPrefix, forged) {
		t.Errorf("%q with a valid checksum but a bad character is well-formed", forged)
	}
}

func TestWellFormedDoesNotAllocate(t *testing.T) {
	s := NewSecret(KeyPrefix)
	bad := s[:10] + flip(s[10]) + s[11:]
	if n := testing.AllocsPerRun(100, func() {
		if !WellFormed(KeyPrefix, s) || WellFormed(KeyPrefix, bad) {
			t.Fatal("wrong answer")
		}
	}); n != 0 {
		t.Fatalf("WellFormed allocates %.1f times per call", n)
	}
}

func TestChecksumMatchesCRC32(t *testing.T) {
	var cases []string
	for n := range 80 {
		cases = append(cases, NewSecret(KeyPrefix)[:min(n, 32)]+strings.Repeat("\xff", max(0, n-32)))
	}
	for _, s := range cases {
		if got, want := crc32String(s), crc32.ChecksumIEEE([]byte(s)); got != want {
			t.Errorf("crc32String(%q) = %08x, want %08x", s, got, want)
		}
	}
}

func TestHashMatchesReference(t *testing.T) {
	secret := NewSecret(KeyPrefix)
	plain := newHasher(nil)
	if got, want := plain.hash(secret), SecretHash(sha256.Sum256([]byte(secret))); got != want {
		t.Fatal("plain hash is not SHA-256")
	}
	for _, n := range []int{1, 16, 32, 63, 64, 65, 200} {
		pepper := []byte(strings.Repeat("p", n-1) + "!")
		for _, msg := range []string{secret, NewSecret(TokenPrefix), "", strings.Repeat("m", 500)} {
			m := hmac.New(sha256.New, pepper)
			m.Write([]byte(msg))
			var want SecretHash
			copy(want[:], m.Sum(nil))
			hp := newHasher(pepper)
			if got := hp.hash(msg); got != want {
				t.Fatalf("pepper %d bytes, message %d bytes: not HMAC-SHA-256", n, len(msg))
			}
		}
	}
	h := newHasher([]byte("pepper"))
	if n := testing.AllocsPerRun(100, func() { _ = h.hash(secret) }); n != 0 {
		t.Fatalf("peppered hash allocates %.1f times", n)
	}
}

func TestHint(t *testing.T) {
	for _, prefix := range []string{KeyPrefix, TokenPrefix} {
		s := NewSecret(prefix)
		random := s[len(prefix)+1 : len(prefix)+1+randomLen]
		h := Hint(s)
		want := prefix + "_" + random[:4] + "…" + random[randomLen-4:]
		if h != want {
			t.Fatalf("Hint(%q) = %q, want %q", s, h, want)
		}
		// Never more than 8 characters of the random part.
		shown := strings.TrimPrefix(h, prefix+"_")
		if n := utf8.RuneCountInString(strings.ReplaceAll(shown, "…", "")); n != 8 {
			t.Fatalf("hint shows %d random characters", n)
		}
		if strings.Contains(h, random[4:randomLen-4]) {
			t.Fatal("hint contains the middle of the secret")
		}
	}
	if Hint("short") != "" {
		t.Fatal("hint of garbage")
	}
}

func TestNewIDOrdered(t *testing.T) {
	now := t0
	prev := ""
	seen := map[string]bool{}
	for i := range 2000 {
		if i%500 == 0 {
			now = now.Add(time.Millisecond)
		}
		id := newID("key", now)
		if len(id) != len("key_")+26 || strings.ContainsAny(id, "/ ") {
			t.Fatalf("bad id %q", id)
		}
		if id <= prev {
			t.Fatalf("ids not increasing: %q then %q", prev, id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id], prev = true, id
	}
}

func TestSecretHashText(t *testing.T) {
	plain := newHasher(nil)
	h := plain.hash("x")
	b, err := json.Marshal(struct{ H SecretHash }{h})
	mustNil(t, err)
	var back struct{ H SecretHash }
	mustNil(t, json.Unmarshal(b, &back))
	if back.H != h {
		t.Fatal("hash does not round-trip")
	}
	if err := json.Unmarshal([]byte(`{"H":"abcd"}`), &back); err == nil {
		t.Fatal("short hash accepted")
	}
}

func FuzzWellFormed(f *testing.F) {
	for _, s := range []string{"", "kg_", "kga_", NewSecret(KeyPrefix), NewSecret(TokenPrefix),
		"kg_" + strings.Repeat("0", randomLen) + "_000000", "kg_\xff\xfe", strings.Repeat("_", 32)} {
		f.Add(KeyPrefix, s)
		f.Add(TokenPrefix, s)
	}
	f.Add("", "_"+strings.Repeat("a", randomLen)+"_aaaaaa")
	f.Fuzz(func(t *testing.T, prefix, s string) {
		got := WellFormed(prefix, s) // must not panic
		if got {
			if len(s) != len(prefix)+2+randomLen+checksumLen || !strings.HasPrefix(s, prefix+"_") {
				t.Fatalf("WellFormed(%q, %q) with the wrong layout", prefix, s)
			}
		}
		if len(prefix) <= 8 && !strings.Contains(prefix, "\x00") {
			fresh := NewSecret(prefix)
			if !WellFormed(prefix, fresh) {
				t.Fatalf("NewSecret(%q) = %q is not well-formed", prefix, fresh)
			}
		}
		_ = Hint(s) // must not panic
	})
}
