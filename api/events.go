package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// change is one change of the served view: its version (the view's stream
// sequence, the same on every API copy and after a restart) and which
// employees changed.
type change struct {
	Version      uint64   `json:"-"`
	VersionText  string   `json:"version"`
	Employees    []string `json:"employees"`
	More         bool     `json:"more,omitempty"` // more employees changed than listed
	Unattributed bool     `json:"unattributed,omitempty"`
	// Reset: the view was replaced (its versions start again); a client
	// reloads everything.
	Reset bool `json:"-"`
}

// maxListed bounds the employees an event names.
const maxListed = 500

// hub fans the view's changes out to the /events clients. It keeps the
// last changes so that a client that reconnects with Last-Event-ID misses
// none; each client has a bounded buffer, and a client that does not keep
// up is dropped: it never slows the view.
type hub struct {
	keep, buffer int

	mu      sync.Mutex
	base    uint64   // the version before the first kept change
	started bool     // base is known (the view is loaded)
	kept    []change // consecutive changes after base
	clients map[*listener]struct{}
}

type listener struct {
	ch      chan change
	dropped chan struct{} // closed when the client fell behind
}

func newHub(keep, buffer int) *hub {
	return &hub{keep: keep, buffer: buffer, clients: map[*listener]struct{}{}}
}

// start sets the version the view was loaded at.
func (h *hub) start(version uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.started {
		h.base, h.started = version, true
	}
}

// publish hands c to every client without waiting for any.
func (h *hub) publish(c change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kept = append(h.kept, c)
	if len(h.kept) > h.keep {
		h.base = h.kept[len(h.kept)-h.keep-1].Version
		h.kept = append(h.kept[:0], h.kept[len(h.kept)-h.keep:]...)
	}
	h.send(c)
}

// send hands c to every client; one whose buffer is full is dropped. h.mu
// is held.
func (h *hub) send(c change) {
	for l := range h.clients {
		select {
		case l.ch <- c:
		default:
			close(l.dropped)
			delete(h.clients, l)
		}
	}
}

// replace starts the changes again at version, the first of a replaced
// view, and sends every client a reset.
func (h *hub) replace(version uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.base, h.started, h.kept = version, true, nil
	h.send(change{Version: version, VersionText: strconv.FormatUint(version, 10), Reset: true})
}

// subscribe registers a client that last saw version last (hasLast false:
// none). It returns the kept changes it missed, or reset when it missed
// more than is kept (it must reload).
func (h *hub) subscribe(last uint64, hasLast bool) (l *listener, missed []change, reset bool, current uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l = &listener{ch: make(chan change, h.buffer), dropped: make(chan struct{})}
	h.clients[l] = struct{}{}
	current = h.base
	if n := len(h.kept); n > 0 {
		current = h.kept[n-1].Version
	}
	switch {
	case !hasLast || last == current:
	case last < h.base || last > current:
		reset = true
	default:
		for _, c := range h.kept {
			if c.Version > last {
				missed = append(missed, c)
			}
		}
	}
	return l, missed, reset, current
}

func (h *hub) unsubscribe(l *listener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.clients, l)
}

// heartbeat is how often an idle /events stream says it is alive.
const heartbeat = 15 * time.Second

// events answers GET /events: Server-Sent Events, one "change" event per
// change of the view (id: the view version), resumable with Last-Event-ID;
// a "reset" event when the changes since that id are no longer kept.
//
// Streams are bounded (per token, or per client address without tokens,
// and in all: 503 with Retry-After past either), last at most the stream
// lifetime, end within seconds of their token's revocation, and end at
// once when the server stops; a browser reconnects with Last-Event-ID.
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	client, digest, hasToken := streamClient(r)
	if limit := a.streams.acquire(client); limit != "" {
		a.metrics.streamsRefused.WithLabelValues(limit).Inc()
		w.Header().Set("Retry-After", "10")
		msg := "too many open event streams; retry later"
		if limit == "client" {
			msg = "too many open event streams for this client; close one or retry later"
		}
		writeError(w, http.StatusServiceUnavailable, msg)
		return
	}
	defer a.streams.release(client)
	last, err := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	hasLast := r.Header.Get("Last-Event-ID") != ""
	l, missed, reset, current := a.hub.subscribe(last, hasLast && err == nil)
	defer a.hub.unsubscribe(l)
	if hasLast && err != nil {
		reset = true
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The stream lasts: neither the server's ReadTimeout (which would end
	// the request's context) nor its WriteTimeout applies to it.
	_ = rc.SetReadDeadline(time.Time{})
	send := func(format string, args ...any) bool {
		// Each write may take its time, not the stream: the server's
		// WriteTimeout would end every stream after a minute.
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 2000\n\n") {
		return
	}
	if reset && !send("event: reset\nid: %d\ndata: {\"version\":\"%d\"}\n\n", current, current) {
		return
	}
	writeChange := func(c change) bool {
		if c.Reset {
			return send("event: reset\nid: %d\ndata: {\"version\":\"%d\"}\n\n", c.Version, c.Version)
		}
		b, _ := json.Marshal(c)
		return send("event: change\nid: %d\ndata: %s\n\n", c.Version, b)
	}
	for _, c := range missed {
		if !writeChange(c) {
			return
		}
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	lifetime := time.NewTimer(a.streamLifetime)
	defer lifetime.Stop()
	var revoked <-chan struct{} // closed at a reload of the tokens
	if hasToken && a.tokens != nil {
		revoked = a.tokens.changed()
	}
	end := func(reason, why string) {
		a.metrics.streamsEnded.WithLabelValues(reason).Inc()
		send("event: end\ndata: {\"reason\":%q}\n\n", why)
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.stopping:
			end("stopping", "the server is stopping; reconnect with Last-Event-ID")
			return
		case <-lifetime.C:
			end("lifetime", "the stream reached its maximum lifetime; reconnect with Last-Event-ID")
			return
		case <-revoked:
			if !a.tokens.allowedDigest(digest) {
				end("revoked", "the token was revoked")
				return
			}
			revoked = a.tokens.changed()
		case <-l.dropped:
			a.metrics.streamsEnded.WithLabelValues("behind").Inc()
			send("event: dropped\ndata: {\"reason\":\"the client did not keep up; reconnect with Last-Event-ID\"}\n\n")
			return
		case c := <-l.ch:
			if !writeChange(c) {
				return
			}
		case <-tick.C:
			if !send(": alive\n\n") {
				return
			}
		}
	}
}

// streamClient is whom a stream counts against: its token (by digest) when
// the API has tokens, else the client's address.
func streamClient(r *http.Request) (key string, digest [sha256.Size]byte, hasToken bool) {
	if digest, ok := tokenDigest(r.Context()); ok {
		return "token:" + hex.EncodeToString(digest[:8]), digest, true
	}
	addr, _ := clientAddress(r)
	return "addr:" + addr, digest, false
}
