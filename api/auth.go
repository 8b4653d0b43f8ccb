package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// tokens are the SHA-256 digests of the bearer tokens allowed to read,
// loaded from a file of lines "sha256:<hex>" ('#' starts a comment).
type tokens struct {
	path string
	log  *slog.Logger

	mu       sync.RWMutex
	digests  [][]byte
	stamp    string        // size and modification time of the file last loaded
	reloaded chan struct{} // closed at the next successful reload
}

// loadTokens reads path; an unreadable or malformed file is an error, so
// that a mistake never opens the API.
func loadTokens(path string, log *slog.Logger) (*tokens, error) {
	t := &tokens{path: path, log: log, reloaded: make(chan struct{})}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *tokens) reload() error {
	st, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("API_TOKENS_FILE: %w", err)
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("API_TOKENS_FILE: %w", err)
	}
	digests, err := ParseTokens(data)
	if err != nil {
		return fmt.Errorf("API_TOKENS_FILE %s: %w", t.path, err)
	}
	t.mu.Lock()
	t.digests = digests
	t.stamp = fmt.Sprint(st.Size(), st.ModTime().UnixNano())
	if t.reloaded != nil {
		close(t.reloaded)
	}
	t.reloaded = make(chan struct{})
	t.mu.Unlock()
	return nil
}

// changed returns a channel closed when the tokens are next reloaded.
func (t *tokens) changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.reloaded
}

// ParseTokens reads a tokens file: one "sha256:<64 hex digits>" per line,
// blank lines and '#' comments ignored.
func ParseTokens(data []byte) ([][]byte, error) {
	var digests [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		h, ok := strings.CutPrefix(line, "sha256:")
		d, err := hex.DecodeString(h)
		if !ok || err != nil || len(d) != sha256.Size {
			return nil, fmt.Errorf("line %d is not sha256:<64 hex digits>", n) // never echo the line: it may be a token
		}
		digests = append(digests, d)
	}
	return digests, sc.Err()
}

// TokenLine returns the tokens-file line of a token.
func TokenLine(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// watch reloads the file when it changes, until stop closes.
func (t *tokens) watch(stop <-chan struct{}) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		st, err := os.Stat(t.path)
		if err != nil {
			continue
		}
		t.mu.RLock()
		same := t.stamp == fmt.Sprint(st.Size(), st.ModTime().UnixNano())
		t.mu.RUnlock()
		if !same {
			t.Reload()
		}
	}
}

// Reload re-reads the file; on failure the tokens loaded before stay.
func (t *tokens) Reload() {
	if err := t.reload(); err != nil {
		t.log.Error("reloading API tokens failed; keeping the previous ones", "error", err)
		return
	}
	t.mu.RLock()
	n := len(t.digests)
	t.mu.RUnlock()
	t.log.Info("API tokens reloaded", "tokens", n)
}

// allowedDigest compares a token's SHA-256 digest with every allowed digest
// in constant time, so timing tells nothing about which, or how much,
// matched.
func (t *tokens) allowedDigest(sum [sha256.Size]byte) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	ok := 0
	for _, d := range t.digests {
		ok |= subtle.ConstantTimeCompare(sum[:], d)
	}
	return ok == 1
}

// require answers 401 unless the request carries an allowed bearer token;
// the request's context then holds the token's digest (tokenDigest).
func (t *tokens) require(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" || !t.allowedDigest(sum) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="incidents"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenDigestKey{}, sum)))
	})
}

type tokenDigestKey struct{}

// tokenDigest is the digest of the token a request was allowed with.
func tokenDigest(ctx context.Context) (sum [sha256.Size]byte, ok bool) {
	sum, ok = ctx.Value(tokenDigestKey{}).([sha256.Size]byte)
	return sum, ok
}
