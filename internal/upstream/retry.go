package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// RetryPolicy bounds the retries of one upstream request: exponential backoff
// with full jitter, at most MaxAttempts tries and MaxElapsed in all, and
// the upstream's Retry-After where it sends one. (Written here rather than
// with cenkalti/backoff: the loop is twenty lines, and what it must decide,
// which failures are permanent, a refused credential, a body that does not
// decode, a full in-flight budget, is ours either way.)
type RetryPolicy struct {
	MaxAttempts int           // default 5
	MaxElapsed  time.Duration // default 2m
	BaseDelay   time.Duration // default 500ms
	MaxDelay    time.Duration // default 20s
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 5
	}
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = 2 * time.Minute
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = 500 * time.Millisecond
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = 20 * time.Second
	}
	return p
}

// delay is the full-jitter backoff before retry number attempt (from 1).
func (p RetryPolicy) delay(attempt int) time.Duration {
	ceiling := p.BaseDelay << min(attempt-1, 20)
	if ceiling > p.MaxDelay || ceiling <= 0 {
		ceiling = p.MaxDelay
	}
	return rand.N(ceiling) + time.Millisecond
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code int
	// RetryAfter is how long the upstream asked to wait (Retry-After on a
	// 429 or 503), zero when it did not say.
	RetryAfter time.Duration
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("upstream answered %d %s", e.Code, http.StatusText(e.Code))
}

// ErrUnauthorized is returned when the upstream refuses the credentials.
// It is not retried: the same credentials would be refused again.
var ErrUnauthorized = errors.New("upstream refused the credentials (check UPSTREAM_USER and UPSTREAM_PASSWORD)")

// ErrTooLarge is returned for a body over the size cap.
var ErrTooLarge = errors.New("upstream response is larger than UPSTREAM_MAX_BODY")

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// body is a response body as a handler reads it: at most UPSTREAM_MAX_BODY
// bytes, and hold accounts the memory the handler keeps of it against the
// client's in-flight budget (ErrBusy when it is full) until the attempt
// ends.
type body struct {
	io.Reader
	hold  func(n int64) error
	limit int64 // the most bytes it can hold
}

// do GETs url, retrying transient failures, and hands the body to handle;
// an error reading or decoding it is retried too (a cut-off body decodes
// badly).
func (c *Client) do(ctx context.Context, endpoint, url string, limit int64, handle func(body) error) error {
	start := time.Now()
	var err error
	for attempt := 1; ; attempt++ {
		err = c.once(ctx, endpoint, url, limit, handle)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		if attempt >= c.retry.MaxAttempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		wait := c.retry.delay(attempt)
		// The upstream's own Retry-After wins over the backoff, within
		// MaxDelay (and MaxElapsed, below).
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > 0 {
			wait = min(se.RetryAfter, c.retry.MaxDelay)
		}
		if time.Since(start)+wait > c.retry.MaxElapsed {
			return fmt.Errorf("giving up after %d attempts in %s: %w", attempt, time.Since(start).Round(time.Millisecond), err)
		}
		c.log.Warn("upstream request failed, retrying", "endpoint", endpoint, "attempt", attempt, "retry_in", wait.Round(time.Millisecond).String(), "error", err)
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// once makes one attempt.
func (c *Client) once(ctx context.Context, endpoint, url string, limit int64, handle func(body) error) (err error) {
	start := time.Now()
	defer func() { c.metrics.observe(endpoint, outcome(err), time.Since(start)) }()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return permanent{fmt.Errorf("building request: %w", err)}
	}
	if c.user != "" || c.password != "" {
		req.SetBasicAuth(c.user, c.password)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) && !sameOrigin(resp.Request.URL, c.base):
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return permanent{fmt.Errorf("the upstream redirected to another host, %s, which answered %w (credentials are never sent to another host)",
			resp.Request.URL.Host, &StatusError{Code: resp.StatusCode})}
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return permanent{fmt.Errorf("%w: %w", ErrUnauthorized, &StatusError{Code: resp.StatusCode})}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		se := &StatusError{Code: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
			return se
		}
		return permanent{se}
	}
	if resp.ContentLength > limit {
		return permanent{ErrTooLarge}
	}
	var held int64
	defer func() { c.inFlight.Release(held) }()
	b := body{Reader: &capped{r: resp.Body, left: limit}, limit: limit, hold: func(n int64) error {
		if !c.inFlight.TryAcquire(n) {
			return ErrBusy
		}
		held += n
		return nil
	}}
	err = handle(b)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errHandler):
		return permanent{err}
	case errors.Is(err, ErrTooLarge):
		return permanent{ErrTooLarge}
	case isDecodeError(err):
		return &decodeError{err}
	}
	return err
}

// capped reads at most left bytes; past them it fails with ErrTooLarge.
type capped struct {
	r    io.Reader
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, ErrTooLarge
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return 0, ErrTooLarge
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("reading body: %w", err)
	}
	return n, err
}

// isDecodeError reports a body that arrived but does not decode.
func isDecodeError(err error) bool {
	var pe *incident.PageError
	var u undecodable
	return errors.As(err, &pe) || errors.As(err, &u)
}

// undecodable marks a decoder's refusal of a whole body.
type undecodable struct{ error }

func (u undecodable) Unwrap() error { return u.error }

// ErrBusy is returned when the bodies being read already hold the client's
// in-flight byte budget; the request is retried later.
var ErrBusy = errors.New("upstream responses in flight hold UPSTREAM_MAX_IN_FLIGHT bytes")

// whole reads a whole body, its memory held against the in-flight budget,
// and hands it to decode; decode's errors are decode errors.
func whole(decode func([]byte) error) func(body) error {
	return func(b body) error {
		var buf []byte
		for {
			if len(buf) == cap(buf) {
				// Grow by doubling, from 64 KiB, to the cap (and one
				// byte past it, for capped to tell a body too large).
				grown := int(min(int64(max(2*cap(buf), 64<<10)), b.limit+1))
				if err := b.hold(int64(grown - cap(buf))); err != nil {
					return err
				}
				buf = append(make([]byte, 0, grown), buf...)
			}
			n, err := b.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
		if err := decode(buf); err != nil {
			return undecodable{err} // errHandler still shows through: once checks it first
		}
		return nil
	}
}

// errHandler marks an error of the caller's page handler: it ends the
// poll without a retry of the page.
var errHandler = errors.New("handling the page")

// decodeError is a body that arrived but does not decode.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }
