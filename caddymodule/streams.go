package caddymodule

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/store"
)

// Long-lived requests (SPEC section 3): a request still running when the
// secret that admitted it stops admitting (revoked, deleted, rotated out, its
// grace over, expired, its tenant's API keys disabled) is ended within a
// second, and nothing else is touched.
//
// How it is told. The store delivers an explicit store.Invalidation after
// every committed write that ends a secret or disables a tenant, before the
// admin call returns (store/invalidation.go); nothing polls. Expiry is the
// one end no write announces: one timer for the whole registry, armed for
// the earliest deadline of a tracked request, sweeps the expired ones.
//
// What is tracked. Every admitted request joins a live set for as long as
// its handler runs, because which responses will stream (an LLM answer, a
// large download) is only known from the response, after the point where a
// request could still be wrapped: picking requests by their headers
// (Upgrade, gRPC, Accept: text/event-stream) would miss the OpenAI SDKs,
// which ask for a stream in the JSON body. Joining must cost ordinary requests
// nothing measurable, so the set is sharded by secret hash, each shard an
// intrusive list under its own mutex, and entries are pooled: join and
// leave are a pool get/put and two list splices (0 allocations). How a
// request is ended decides how much more it needs:
//
//   - HTTP/1.x: one request owns its connection while it runs, so closing
//     that connection (Caddy's ConnCtxKey; under TLS, the TCP connection
//     beneath, so no blocking close_notify) ends the response and makes
//     net/http cancel the request's context, which stops reverse_proxy. The
//     close happens under the shard lock, while the entry is still the
//     request's: a keep-alive connection that has moved on to another
//     request (maybe another key's) is never closed for this one. Nothing
//     is wrapped.
//   - HTTP/1.1 Upgrade (WebSocket): the writer is wrapped so that the
//     hijacked connection is wrapped too; the wrapper follows the
//     server-to-client frame boundaries, so the end can write a close frame
//     1008 between two frames (letting a frame in progress finish, within
//     a bound), then the request's context is cancelled
//     (reverse_proxy closes both sides) and the connection closed.
//   - HTTP/2 and HTTP/3: streams share a connection, so only the handler
//     can end one: its context is cancelled (reverse_proxy stops reading
//     the upstream) and the wrapped writer refuses further writes; the
//     handler's abort then resets that stream alone (RST_STREAM), or a gRPC
//     stream gets trailers grpc-status 16 when the response is between two
//     messages (or trailers-only if nothing was sent yet). This costs these
//     requests a context, a request copy and a wrapper (4 allocations,
//     about 0.3 µs: BenchmarkHandlerHitH2).
type streamRegistry struct {
	shards [streamShards]streamShard
	now    func() time.Time
	pool   sync.Pool

	// The expiry sweep: wakeAt is when the armed timer fires (UnixNano,
	// math.MaxInt64 when none); a join only takes wakeMu when its deadline
	// is earlier.
	wakeAt atomic.Int64
	wakeMu sync.Mutex
	wake   *time.Timer
	closed bool // guarded by wakeMu
}

const streamShards = 16

type streamShard struct {
	mu   sync.Mutex
	head liveReq // sentinel of a circular doubly linked list
	_    [64]byte
}

// liveReq is one admitted request while its handler runs. All fields are
// guarded by the shard's mutex (the entry is pooled: only code holding the
// lock may look at it).
type liveReq struct {
	prev, next *liveReq
	hash       store.SecretHash
	tenant     string
	view       *store.KeyView  // what admitted it (re-checked after Invalidation.All)
	until      time.Time       // zero: no deadline
	untilCode  string          // rejection code once until has passed
	ctx        context.Context // HTTP/1.x: the request's, whose ConnCtxKey value is closed to end it
	full       *tracked        // nil: an HTTP/1.x request ended by closing its connection
	ended      bool
}

func newStreamRegistry(now func() time.Time) *streamRegistry {
	s := &streamRegistry{now: now}
	s.wakeAt.Store(math.MaxInt64)
	for i := range s.shards {
		h := &s.shards[i].head
		h.prev, h.next = h, h
	}
	s.pool.New = func() any { return new(liveReq) }
	return s
}

func (s *streamRegistry) shard(h store.SecretHash) *streamShard {
	return &s.shards[h[0]%streamShards]
}

// admission is a request in the live set (admit), to be run by run.
type admission struct {
	e      *liveReq
	w      http.ResponseWriter
	r      *http.Request
	full   *tracked           // nil: an HTTP/1.x request, ended by closing its connection
	cancel context.CancelFunc // with full
}

// admit adds a request verified with view to the live set, then checks
// that view still admits (recheck): it is the handler's admit point. When
// the key stopped admitting in between (a window of microseconds) it
// returns the rejection's code, the request already out of the set, and
// the handler answers it through its one deny path like any rejection.
// Otherwise the handler counts the request and calls run exactly once.
func (s *streamRegistry) admit(w http.ResponseWriter, r *http.Request, st *store.Store, view *store.KeyView) (admission, string) {
	if r.ProtoMajor == 1 && r.Header["Upgrade"] == nil {
		e := s.join(view, r.Context(), nil)
		if code, ok := s.recheck(st, view, e); !ok {
			s.leave(e)
			return admission{}, code
		}
		return admission{e: e, w: w, r: r}, ""
	}
	ctx, cancel := context.WithCancel(r.Context())
	t := &tracked{ResponseWriter: w, cancel: cancel, grpc: isGRPC(r),
		websocket: strings.EqualFold(r.Header.Get("Upgrade"), "websocket")}
	e := s.join(view, ctx, t)
	if code, ok := s.recheck(st, view, e); !ok {
		s.leave(e)
		cancel()
		return admission{}, code
	}
	return admission{e: e, w: t, r: r.WithContext(ctx), full: t, cancel: cancel}, ""
}

// run runs next for an admitted request, tracked until next returns.
func (s *streamRegistry) run(a admission, next caddyhttp.Handler) error {
	if a.full == nil {
		defer s.leave(a.e)
		return next.ServeHTTP(a.w, a.r)
	}
	defer a.cancel()
	defer s.leave(a.e)
	return a.full.serve(next, a.r)
}

// join adds a request to the live set.
func (s *streamRegistry) join(view *store.KeyView, ctx context.Context, full *tracked) *liveReq {
	e := s.pool.Get().(*liveReq)
	e.hash = view.SecretHash()
	e.tenant = view.Tenant
	e.view = view
	e.ctx, e.full = ctx, full
	sh := s.shard(e.hash)
	sh.mu.Lock()
	e.next, e.prev = sh.head.next, &sh.head
	sh.head.next.prev = e
	sh.head.next = e
	sh.mu.Unlock()
	return e
}

// recheck runs once the request is in the live set: an invalidation
// delivered before that could not see it, so the store is asked again
// (store.AdmitsUntil: an atomic load and a map lookup when nothing changed).
// It also sets the request's deadline, unless an invalidation since the
// join set an earlier one.
func (s *streamRegistry) recheck(st *store.Store, view *store.KeyView, e *liveReq) (string, bool) {
	until, code, ok := st.AdmitsUntil(view, s.now())
	if !ok {
		return code, false
	}
	if until.IsZero() {
		return "", true
	}
	sh := s.shard(e.hash)
	sh.mu.Lock()
	if e.until.IsZero() || until.Before(e.until) {
		e.until, e.untilCode = until, code
	}
	sh.mu.Unlock()
	s.armExpiry(until)
	return "", true
}

// leave removes a request from the live set.
func (s *streamRegistry) leave(e *liveReq) {
	sh := s.shard(e.hash)
	sh.mu.Lock()
	e.prev.next = e.next
	e.next.prev = e.prev
	*e = liveReq{}
	sh.mu.Unlock()
	s.pool.Put(e)
}

// endLocked ends e; the shard's lock is held, so it must not block.
func endLocked(e *liveReq, code string) {
	if e.ended {
		return
	}
	e.ended = true
	if e.full != nil {
		e.full.end(code)
		return
	}
	closeConn(e.ctx)
}

// closeConn closes the connection an HTTP/1.x request came on. Under TLS
// the TCP connection beneath is closed: tls.Conn.Close would first write a
// close_notify, which can block behind a slow client for seconds.
func closeConn(ctx context.Context) {
	c, ok := ctx.Value(caddyhttp.ConnCtxKey).(net.Conn)
	if !ok {
		return
	}
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	_ = c.SetWriteDeadline(time.Now()) // a write blocked on the client fails now
	_ = c.Close()
}

// registerConnContext makes the server put each connection in its
// requests' context under caddyhttp.ConnCtxKey (Caddy defines the key but
// sets it only when a module asks), so that an HTTP/1.x request can be ended
// by closing its connection. It costs one context value per connection.
func registerConnContext(srv *caddyhttp.Server) {
	srv.RegisterConnContext(func(ctx context.Context, c net.Conn) context.Context {
		if ctx.Value(caddyhttp.ConnCtxKey) != nil {
			return ctx // another api_key handler of this server asked already
		}
		return context.WithValue(ctx, caddyhttp.ConnCtxKey, c)
	})
}

// invalidate is the store subscription: it ends the live requests the
// invalidation names and gives a rotated-out secret's requests its grace end.
//
// Each shard is scanned once whatever the number of secrets (a bulk revoke
// names up to a thousand), under its own lock only.
func (s *streamRegistry) invalidate(st *store.Store, inv store.Invalidation) {
	if inv.All {
		s.recheckAll(st)
		return
	}
	now := s.now()
	var ends [streamShards]map[store.SecretHash]store.SecretEnd
	for _, se := range inv.Secrets {
		i := se.Hash[0] % streamShards
		if ends[i] == nil {
			ends[i] = map[store.SecretHash]store.SecretEnd{}
		}
		ends[i][se.Hash] = se
	}
	var wake time.Time
	for i := range s.shards {
		if ends[i] == nil && len(inv.Tenants) == 0 {
			continue
		}
		sh := &s.shards[i]
		sh.mu.Lock()
		for e := sh.head.next; e != &sh.head; e = e.next {
			if e.ended {
				continue
			}
			if slices.Contains(inv.Tenants, e.tenant) {
				endLocked(e, "api_keys_disabled")
				continue
			}
			se, ok := ends[i][e.hash]
			switch {
			case !ok:
			case se.At.IsZero() || !now.Before(se.At):
				endLocked(e, se.Code)
			case e.until.IsZero() || se.At.Before(e.until):
				e.until, e.untilCode = se.At, se.Code
				if wake.IsZero() || se.At.Before(wake) {
					wake = se.At
				}
			}
		}
		sh.mu.Unlock()
	}
	if !wake.IsZero() {
		s.armExpiry(wake)
	}
}

// recheckAll asks the store again about every live request: the store lost
// track of what changed (store.Invalidation.All, e.g. a watch that had to
// start over) and dropped every cached verification, so AdmitsUntil reads
// the committed records. Store reads may block, so they happen outside the
// shard locks; a request that left meanwhile (its entry possibly reused by
// another request, which has another context) is left alone.
func (s *streamRegistry) recheckAll(st *store.Store) {
	type verdict struct {
		until time.Time
		code  string
		ok    bool
	}
	type live struct {
		e    *liveReq
		ctx  context.Context
		view *store.KeyView
	}
	now := s.now()
	verdicts := map[*store.KeyView]verdict{}
	var wake time.Time
	for i := range s.shards {
		sh := &s.shards[i]
		var reqs []live
		sh.mu.Lock()
		for e := sh.head.next; e != &sh.head; e = e.next {
			if !e.ended {
				reqs = append(reqs, live{e, e.ctx, e.view})
			}
		}
		sh.mu.Unlock()
		if len(reqs) == 0 {
			continue
		}
		for _, r := range reqs {
			if _, done := verdicts[r.view]; !done {
				until, code, ok := st.AdmitsUntil(r.view, now)
				verdicts[r.view] = verdict{until, code, ok}
			}
		}
		sh.mu.Lock()
		for _, r := range reqs {
			e, v := r.e, verdicts[r.view]
			switch {
			case e.ctx != r.ctx || e.ended:
			case !v.ok:
				endLocked(e, v.code)
			case !v.until.IsZero() && (e.until.IsZero() || v.until.Before(e.until)):
				e.until, e.untilCode = v.until, v.code
				if wake.IsZero() || v.until.Before(wake) {
					wake = v.until
				}
			}
		}
		sh.mu.Unlock()
	}
	if !wake.IsZero() {
		s.armExpiry(wake)
	}
}

// armExpiry makes sure the sweep runs at t or earlier. When a sweep is
// already due by then it is one atomic load.
func (s *streamRegistry) armExpiry(t time.Time) {
	at := t.UnixNano()
	if at >= s.wakeAt.Load() {
		return
	}
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	if s.closed || at >= s.wakeAt.Load() {
		return
	}
	s.wakeAt.Store(at)
	d := max(t.Sub(s.now()), 0)
	if s.wake == nil {
		s.wake = time.AfterFunc(d, s.sweep)
	} else {
		s.wake.Reset(d)
	}
}

// sweep ends the requests whose deadline has passed and re-arms for the
// next one.
func (s *streamRegistry) sweep() {
	s.wakeAt.Store(math.MaxInt64) // joins from now on arm their own
	now := s.now()
	var next time.Time
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for e := sh.head.next; e != &sh.head; e = e.next {
			if e.ended || e.until.IsZero() {
				continue
			}
			if !now.Before(e.until) {
				endLocked(e, e.untilCode)
			} else if next.IsZero() || e.until.Before(next) {
				next = e.until
			}
		}
		sh.mu.Unlock()
	}
	if !next.IsZero() {
		s.armExpiry(next)
	}
}

// close stops the expiry timer (the store is closing).
func (s *streamRegistry) close() {
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	s.closed = true
	if s.wake != nil {
		s.wake.Stop()
	}
}

// tracked wraps the writer of a request that only its handler can end (an
// HTTP/2 or HTTP/3 stream, an upgraded HTTP/1.1 connection).
type tracked struct {
	http.ResponseWriter
	cancel    context.CancelFunc
	grpc      bool
	websocket bool // an Upgrade to WebSocket: the hijacked connection carries frames

	ended atomic.Bool
	code  atomic.Pointer[string] // set before ended
	ws    atomic.Pointer[hijacked]

	// The handler goroutine's own state.
	wroteHeader bool
	frames      grpcFraming
}

var errStreamEnded = errors.New("keygate: the API key that admitted this request no longer does")

func (t *tracked) Write(p []byte) (int, error) {
	if t.ended.Load() {
		return 0, errStreamEnded
	}
	t.wroteHeader = true
	n, err := t.ResponseWriter.Write(p)
	if t.grpc {
		t.frames.feed(p[:n])
	}
	return n, err
}

func (t *tracked) WriteHeader(code int) {
	if t.ended.Load() {
		return
	}
	if code >= 200 || code == http.StatusSwitchingProtocols {
		t.wroteHeader = true
	}
	t.ResponseWriter.WriteHeader(code)
}

// FlushError flushes unless the request has been ended.
func (t *tracked) FlushError() error {
	if t.ended.Load() {
		return errStreamEnded
	}
	t.wroteHeader = true
	return http.NewResponseController(t.ResponseWriter).Flush()
}

// Flush is http.Flusher for handlers that assert it.
func (t *tracked) Flush() { _ = t.FlushError() }

// Unwrap lets http.ResponseController reach the other methods.
func (t *tracked) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Hijack hands out the client connection wrapped, so that ending the
// request can write a WebSocket close frame between two frames. Whatever
// the server had buffered for the client (the 101 answer) is written first.
func (t *tracked) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(t.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	hj := &hijacked{Conn: conn, websocket: t.websocket}
	t.ws.Store(hj)
	if t.ended.Load() {
		hj.end(t.endCode())
	}
	return hj, bufio.NewReadWriter(brw.Reader, bufio.NewWriter(hj)), nil
}

func (t *tracked) endCode() string {
	if c := t.code.Load(); c != nil {
		return *c
	}
	return "invalid_key"
}

// end is called with the registry's shard lock held: it must not block.
func (t *tracked) end(code string) {
	t.code.Store(&code)
	if t.ended.Swap(true) {
		return
	}
	if hj := t.ws.Load(); hj != nil {
		go func() {
			hj.end(code)
			t.cancel()
		}()
		return
	}
	t.cancel()
}

// serve runs next and, when the request was ended, finishes it the way its
// protocol allows: gRPC trailers with grpc-status 16 between two messages,
// an aborted stream (RST_STREAM) otherwise. Panics of a request that was
// not ended pass through untouched.
func (t *tracked) serve(next caddyhttp.Handler, r *http.Request) (err error) {
	defer func() {
		if !t.ended.Load() {
			return
		}
		if rec := recover(); rec != nil && rec != http.ErrAbortHandler {
			panic(rec)
		}
		switch {
		case t.ws.Load() != nil:
			err = nil // the hijacked connection is closed
		case t.grpc && t.frames.boundary():
			t.grpcEnd()
			err = nil
		default:
			panic(http.ErrAbortHandler)
		}
	}()
	return next.ServeHTTP(t, r)
}

// grpcEnd ends a gRPC response with grpc-status 16 (UNAUTHENTICATED) and the
// rejection code as grpc-message: in trailers when headers were sent, as a
// trailers-only answer otherwise.
func (t *tracked) grpcEnd() {
	h := t.ResponseWriter.Header()
	code := t.endCode()
	if !t.wroteHeader {
		h.Del("Content-Length")
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", "16")
		h.Set("Grpc-Message", code)
		t.ResponseWriter.WriteHeader(http.StatusOK)
		return
	}
	h.Set(http.TrailerPrefix+"Grpc-Status", "16")
	h.Set(http.TrailerPrefix+"Grpc-Message", code)
}

// grpcFraming follows gRPC's length-prefixed messages (1 flag byte, 4 bytes
// of big-endian length) to know whether the response is between two.
type grpcFraming struct {
	hdr    [5]byte
	hn     int
	remain uint32
}

func (f *grpcFraming) feed(p []byte) {
	for len(p) > 0 {
		if f.remain > 0 {
			n := min(int(f.remain), len(p))
			f.remain -= uint32(n)
			p = p[n:]
			continue
		}
		n := copy(f.hdr[f.hn:], p)
		f.hn += n
		p = p[n:]
		if f.hn == len(f.hdr) {
			f.remain = binary.BigEndian.Uint32(f.hdr[1:])
			f.hn = 0
		}
	}
}

func (f *grpcFraming) boundary() bool { return f.hn == 0 && f.remain == 0 }

// hijacked is an upgraded client connection. Its writes (reverse_proxy's
// copy from the upstream) are followed frame by frame, so that a WebSocket
// close frame is only ever written between two frames: ended in the middle
// of one, the connection lets the frame in progress finish and writes the
// close frame right after it.
type hijacked struct {
	net.Conn
	websocket bool // false: another protocol, ended by closing only
	mu        sync.Mutex
	frames    wsFraming
	closed    bool
	pending   string        // reason of a close frame waiting for the frame in progress
	flushed   chan struct{} // closed when the pending close frame was written
}

func (c *hijacked) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.pending != "" {
		k := c.frames.untilBoundary(p)
		n, err := c.Conn.Write(p[:k])
		c.frames.feed(p[:n])
		if err == nil && c.frames.boundary() {
			_, err = c.Conn.Write(wsCloseFrame(1008, c.pending))
		}
		c.closed = true
		close(c.flushed)
		if err == nil {
			err = net.ErrClosed
		}
		return n, err
	}
	n, err := c.Conn.Write(p)
	if c.websocket {
		c.frames.feed(p[:n])
	}
	return n, err
}

// wsEndWait bounds how long ending waits for a write in progress, or for the
// rest of a frame in progress, before it closes the connection without a
// close frame.
const wsEndWait = 300 * time.Millisecond

// end writes a close frame 1008 (policy violation) with the rejection code
// as its reason between two frames, then closes the connection. It returns
// within about 2×wsEndWait, whatever the client and the upstream do.
func (c *hijacked) end(code string) {
	force := time.AfterFunc(2*wsEndWait, func() { _ = c.Conn.Close() }) // unblocks a stuck write
	defer force.Stop()
	defer c.Conn.Close()
	c.mu.Lock()
	if c.closed || !c.websocket {
		c.closed = true
		c.mu.Unlock()
		return
	}
	if !c.frames.boundary() {
		c.pending, c.flushed = code, make(chan struct{})
		flushed := c.flushed
		c.mu.Unlock()
		select {
		case <-flushed:
		case <-time.After(wsEndWait):
			c.mu.Lock()
			c.closed = true
			c.mu.Unlock()
		}
		return
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(wsEndWait))
	_, _ = c.Conn.Write(wsCloseFrame(1008, code))
	c.closed = true
	c.mu.Unlock()
}

// wsCloseFrame is an unmasked (server-to-client) close frame.
func wsCloseFrame(status uint16, reason string) []byte {
	reason = reason[:min(len(reason), 123)] // control frames carry at most 125 bytes
	b := make([]byte, 0, 4+len(reason))
	b = append(b, 0x88, byte(2+len(reason)))
	b = binary.BigEndian.AppendUint16(b, status)
	return append(b, reason...)
}

// wsFraming follows WebSocket frame headers (RFC 6455 section 5.2) in one
// direction of a connection.
type wsFraming struct {
	hdr    [14]byte
	hn     int // header bytes seen
	need   int // header length, once the first two bytes are in
	remain uint64
}

func (f *wsFraming) feed(p []byte) {
	for len(p) > 0 {
		if f.remain > 0 {
			n := min(f.remain, uint64(len(p)))
			f.remain -= n
			p = p[n:]
			continue
		}
		f.hdr[f.hn] = p[0]
		f.hn++
		p = p[1:]
		if f.hn == 2 {
			f.need = 2
			switch f.hdr[1] & 0x7f {
			case 126:
				f.need += 2
			case 127:
				f.need += 8
			}
			if f.hdr[1]&0x80 != 0 {
				f.need += 4 // masked
			}
		}
		if f.hn >= 2 && f.hn == f.need {
			var l uint64
			switch f.hdr[1] & 0x7f {
			case 126:
				l = uint64(binary.BigEndian.Uint16(f.hdr[2:]))
			case 127:
				l = binary.BigEndian.Uint64(f.hdr[2:])
			default:
				l = uint64(f.hdr[1] & 0x7f)
			}
			f.remain, f.hn, f.need = l, 0, 0
		}
	}
}

func (f *wsFraming) boundary() bool { return f.hn == 0 && f.remain == 0 }

// untilBoundary is how many bytes of p finish the frame in progress (all of
// p if it does not).
func (f *wsFraming) untilBoundary(p []byte) int {
	g := *f
	for i := 0; i < len(p); {
		if g.remain > 0 {
			k := int(min(g.remain, uint64(len(p)-i)))
			g.remain -= uint64(k)
			i += k
		} else {
			g.feed(p[i : i+1])
			i++
		}
		if g.boundary() {
			return i
		}
	}
	return len(p)
}
