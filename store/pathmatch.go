package store

import (
	"math"
	"strings"
)

// Group path patterns and the request paths they are matched against.
//
// The gateway hands Allows the path exactly as the upstream will receive it
// (the escaped path reverse_proxy writes on the request line). Upstreams
// disagree on how to read such a path: Tomcat and Spring drop ";parameters"
// from each segment before resolving dot segments, IIS and some Node stacks
// treat "\" as "/", some decode "%2F" into a separator and some do not, and
// most resolve "." and "..". No single normalisation is right for all of
// them, and one that splits a segment where the upstream does not lets a
// ".." climb one level less in the gateway's eyes than in the upstream's.
// So:
//
//   - a path that holds a ".." segment in any reading ("..", "%2e%2e",
//     "..;x", "..\", "..%5c", "x%2F.."), a control character ("%00"), or a
//     double-encoded ".", "/", "\", ";", "%" or control character ("%252e")
//     matches no pattern (the gateway answers 403 forbidden);
//   - any other path must match a pattern in both of its readings: the
//     literal one (percent-decoded, except that "%2F" stays "%2F" inside its
//     segment) and the normalised one ("\" and "%2F" split segments,
//     ";parameters" are removed from each segment, "." segments and empty
//     segments are dropped, a trailing slash is kept).
//
// For an ordinary path ("/orders/17") both readings are the path itself and
// nothing is allocated.

// MaxMatchPathLen is the longest request path (escaped, in bytes) a path
// pattern can match. Longer paths match no pattern: common servers refuse
// request lines beyond 8 KiB anyway, and the bound caps the matching work a
// tenant admin's group can cause per request.
const MaxMatchPathLen = 16 << 10 // < 1<<16: segment offsets are uint16

// readPaths returns the literal and normalised readings of an escaped
// request path, and false if the path must match no pattern.
func readPaths(escaped string) (literal, normal string, ok bool) {
	if escaped == "" {
		return "/", "/", true
	}
	if escaped[0] != '/' || len(escaped) > MaxMatchPathLen {
		return "", "", false
	}
	if plainPath(escaped) {
		return escaped, escaped, true
	}
	decoded, ok := unescapeAll(escaped)
	if !ok {
		return "", "", false
	}
	normal, ok = normalise(decoded)
	if !ok {
		return "", "", false
	}
	return unescapeKeepSlash(escaped), normal, true
}

// plainPath reports whether both readings of p are p itself: no escapes,
// backslashes, semicolons or control characters, no empty segment but a
// trailing one, no dot segment.
func plainPath(p string) bool {
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			switch c := p[i]; {
			case c == '%' || c == '\\' || c == ';' || c < 0x20 || c == 0x7f:
				return false
			case c != '/':
				continue
			}
		}
		switch p[segStart:i] {
		case "":
			if i < len(p) {
				return false // "//"
			}
		case ".", "..":
			return false
		}
		segStart = i + 1
	}
	return true
}

// unescapeAll percent-decodes p. It fails on a bad escape, a control
// character, or a double-encoded separator, dot, semicolon, percent sign or
// control character (something a second decoding upstream would turn into
// one of those).
func unescapeAll(p string) (string, bool) {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", false
			}
			c = unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
		}
		if c < 0x20 || c == 0x7f {
			return "", false
		}
		b.WriteByte(c)
	}
	d := b.String()
	for i := strings.IndexByte(d, '%'); i >= 0; {
		if i+2 < len(d) && isHex(d[i+1]) && isHex(d[i+2]) {
			switch c := unhex(d[i+1])<<4 | unhex(d[i+2]); {
			case c == '.' || c == '/' || c == '\\' || c == ';' || c == '%' || c < 0x20 || c == 0x7f:
				return "", false
			}
		}
		j := strings.IndexByte(d[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return d, true
}

// unescapeKeepSlash percent-decodes an escaped path that unescapeAll
// accepted, except "%2F", which stays (upper-cased) inside its segment.
func unescapeKeepSlash(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			c = unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
			if c == '/' {
				b.WriteString("%2F")
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

// normalise splits a decoded path on "/" and "\", removes ";parameters"
// from each segment, drops "." and empty segments, keeps a trailing slash,
// and fails on a ".." segment.
func normalise(d string) (string, bool) {
	var b strings.Builder
	b.Grow(len(d))
	trailing := false
	for start := 0; start <= len(d); {
		end := start + strings.IndexAny(d[start:], `/\`)
		if end < start {
			end = len(d)
		}
		seg := d[start:end]
		if i := strings.IndexByte(seg, ';'); i >= 0 {
			seg = seg[:i]
		}
		switch seg {
		case "..":
			return "", false
		case "", ".":
			trailing = start > 0
		default:
			b.WriteByte('/')
			b.WriteString(seg)
			trailing = false
		}
		start = end + 1
	}
	if b.Len() == 0 || trailing {
		b.WriteByte('/')
	}
	return b.String(), true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// pathPattern is a compiled group path pattern. A trailing "*" with no
// other "*" is a prefix match, as in Caddy's path matcher ("/orders/*"
// matches "/orders/", "/orders/1/items"; "/orders*" matches "/ordersX");
// otherwise "*" matches any run of characters within one segment and the
// path must have as many segments as the pattern.
//
// Validation allows at most one "*" per segment, so a segment is matched by
// comparing its ends, and a pattern costs O(len(pattern)) plus a walk over
// the path's segment boundaries. Patterns stored before that rule may have
// several: the chunks between them are searched for (strings.Index), which
// costs O(len(path)) per pattern; paths longer than MaxMatchPathLen match
// nothing, which bounds it.
type pathPattern struct {
	p     string // the pattern; prefix patterns: without their "*"
	kind  patternKind
	nsegs int          // glob: number of segments
	segs  []segPattern // glob: the segments that are not a lone "*"
}

type patternKind uint8

const (
	never  patternKind = iota // stored with syntax no longer supported: matches nothing
	prefix                    // a trailing "*" and no other
	glob
)

// segPattern is one segment of a glob, as offsets into the pattern (a
// compiled group stays small: 10 bytes a segment). The segment is
// p[start:end]; star and last are its first and last "*", or end.
// Validation allows one "*" a segment; patterns stored before may have
// several, and the literal chunks between them are searched for.
type segPattern struct {
	idx, start, star, last, end uint16
}

// unsupportedPatternChars are path.Match syntax keygate no longer accepts:
// "?" and "[...]" made matching cost O(len(path) × len(pattern)), and "\"
// (an escape in path.Match) is a separator in some upstreams.
const unsupportedPatternChars = `?[\`

func compilePattern(p string) pathPattern {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, unsupportedPatternChars) || len(p) > math.MaxUint16 {
		return pathPattern{kind: never}
	}
	if strings.IndexByte(p, '*') == len(p)-1 {
		return pathPattern{p: p[:len(p)-1], kind: prefix}
	}
	pp := pathPattern{p: p, kind: glob}
	for start := 1; start <= len(p); pp.nsegs++ {
		end := start + strings.IndexByte(p[start:], '/')
		if end < start {
			end = len(p)
		}
		sp := segPattern{idx: uint16(pp.nsegs), start: uint16(start), star: uint16(end), last: uint16(end), end: uint16(end)}
		if i := strings.IndexByte(p[start:end], '*'); i >= 0 {
			sp.star = uint16(start + i)
			sp.last = uint16(start + strings.LastIndexByte(p[start:end], '*'))
		}
		if p[start:end] != "*" {
			pp.segs = append(pp.segs, sp)
		}
		start = end + 1
	}
	return pp
}

// match matches one segment of a request path: the literal before the
// first "*" and after the last must fit without overlapping, and the
// chunks between several "*" are found leftmost in between (greedy
// leftmost is exact for "*"-only globs), so the cost is linear.
func (sp segPattern) match(p, s string) bool {
	if sp.star == sp.end {
		return s == p[sp.start:sp.end]
	}
	pre, suf := p[sp.start:sp.star], p[sp.last+1:sp.end]
	if len(s) < len(pre)+len(suf) || s[:len(pre)] != pre || s[len(s)-len(suf):] != suf {
		return false
	}
	mid := s[len(pre) : len(s)-len(suf)]
	for chunks := p[sp.star+1 : max(sp.star+1, sp.last)]; chunks != ""; {
		c, rest, _ := strings.Cut(chunks, "*")
		i := strings.Index(mid, c)
		if i < 0 {
			return false
		}
		mid, chunks = mid[i+len(c):], rest
	}
	return true
}

// pathView is one reading of a request path and, when some glob pattern
// has as many segments, where its segments end.
type pathView struct {
	p    string
	nseg int      // segments: the number of "/" in p
	ends []uint16 // ends[i] is the index just past segment i; nil if not needed
}

func newPathView(p string, maxSegs int, buf []uint16) pathView {
	v := pathView{p: p, nseg: strings.Count(p, "/")}
	if v.nseg <= maxSegs {
		v.ends = buf[:0]
		for i := 1; ; {
			j := strings.IndexByte(p[i:], '/')
			if j < 0 {
				v.ends = append(v.ends, uint16(len(p)))
				break
			}
			v.ends = append(v.ends, uint16(i+j))
			i += j + 1
		}
	}
	return v
}

func (v *pathView) segment(i int) string {
	start := uint16(1)
	if i > 0 {
		start = v.ends[i-1] + 1
	}
	return v.p[start:v.ends[i]]
}

// match reports whether the pattern matches one reading of a path.
func (pp *pathPattern) match(v *pathView) bool {
	switch {
	case pp.kind == never:
		return false
	case pp.kind == prefix:
		return strings.HasPrefix(v.p, pp.p)
	case v.nseg != pp.nsegs || v.ends == nil:
		return false
	}
	for _, sp := range pp.segs {
		if !sp.match(pp.p, v.segment(int(sp.idx))) {
			return false
		}
	}
	return true
}
