package api

import (
	"sync"
	"syscall"
)

// streamLimits bounds the /events streams held open: each one holds a
// connection, a file descriptor (shared with the embedded NATS server in
// the standalone) and a goroutine for as long as the client likes.
type streamLimits struct {
	perClient, total int

	mu     sync.Mutex
	open   int
	client map[string]int // open streams by client key
}

func newStreamLimits(perClient, total int) *streamLimits {
	return &streamLimits{perClient: perClient, total: total, client: map[string]int{}}
}

// acquire takes a stream for the client key; it returns the limit that
// refuses it ("total" or "client"), or "".
func (l *streamLimits) acquire(key string) (refusedBy string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.total:
		return "total"
	case l.client[key] >= l.perClient:
		return "client"
	}
	l.open++
	l.client[key]++
	return ""
}

func (l *streamLimits) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.client[key]--; l.client[key] <= 0 {
		delete(l.client, key) // memory follows the clients with a stream open
	}
}

// openStreams is how many streams are open now.
func (l *streamLimits) openStreams() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// DefaultMaxStreams is the default bound on open /events streams: a quarter
// of the process's open-file limit, so that streams can never take the
// descriptors the view, NATS and other requests need.
func DefaultMaxStreams() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == 0 {
		return 256
	}
	return int(max(min(lim.Cur/4, 1<<20), 1))
}

// DefaultMaxStreamsPerClient is the default bound on the /events streams of
// one token (or one client address when the API has no tokens): a browser
// holds one per open tab.
const DefaultMaxStreamsPerClient = 16
