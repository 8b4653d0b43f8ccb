// Package upstream is the client of the upstream incident API: basic auth,
// Django-REST paging page by page, per-request timeouts, retries with
// backoff, and caps on a response's size, on the bytes all requests hold
// together, and on one poll's pages, bytes and time.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// Options configure a Client.
type Options struct {
	// BaseURL of the upstream API, e.g. https://incidents.example.com.
	// User info in it is used as credentials and removed from the URL.
	BaseURL  string
	User     string
	Password string
	// Timeout of one HTTP request (default 30s).
	Timeout time.Duration
	// MaxBody is the largest incident, and the largest identities body,
	// read, in bytes (default 64 MiB). A page is read as it streams and may
	// be longer; an incident longer than MaxBody is reported in
	// Page.TooLarge, not kept.
	MaxBody int64
	// Retry bounds the attempts of one request.
	Retry RetryPolicy
	// Limits bound one poll of one type.
	Limits Limits
	// MaxInFlight bounds the response bytes held by all requests of the
	// client together (default 256 MiB): a request that would pass it
	// fails, to be retried, rather than grow memory.
	MaxInFlight int64
	// RootCAs, when set, replaces the system roots for verifying the upstream.
	RootCAs *x509.CertPool
	// Metrics, when set, counts requests.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Client talks to the upstream API. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	user     string
	password string
	maxBody  int64
	retry    RetryPolicy
	limits   Limits
	inFlight *semaphore.Weighted
	http     *http.Client
	metrics  *Metrics
	log      *slog.Logger
}

// New returns a client for o.
func New(o Options) (*Client, error) {
	base, err := url.Parse(strings.TrimRight(o.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("upstream URL must be an absolute http(s) URL")
	}
	if base.User != nil {
		if o.User == "" {
			o.User = base.User.Username()
		}
		if p, ok := base.User.Password(); ok && o.Password == "" {
			o.Password = p
		}
		base.User = nil
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 64 << 20
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs}
	c := &Client{
		base:     base,
		user:     o.User,
		password: o.Password,
		maxBody:  o.MaxBody,
		retry:    o.Retry.withDefaults(),
		limits:   o.Limits.withDefaults(),
		inFlight: semaphore.NewWeighted(max(o.MaxInFlight, o.MaxBody)),
		metrics:  o.Metrics,
		log:      o.Logger,
	}
	c.http = &http.Client{
		Timeout:       o.Timeout,
		Transport:     transport,
		CheckRedirect: c.checkRedirect,
	}
	return c, nil
}

// checkRedirect never carries the credentials to another host.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if !sameOrigin(req.URL, c.base) {
		req.Header.Del("Authorization")
	}
	return nil
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host)
}

// Endpoint names an upstream resource in logs and metrics.
func Endpoint(t incident.Type) string { return "incidents/" + string(t) }

// EndpointIdentities is the identities resource in logs and metrics.
const EndpointIdentities = "identities"

// Page is one complete page of incidents.
type Page struct {
	// Number counts the pages of this poll from 1.
	Number int
	// Items are the page's incidents, each the exact bytes received; an
	// item that is not valid JSON is kept as it came, to be refused alone.
	Items []json.RawMessage
	// Count is every incident of the page, Items and those known skipped.
	Count int
	// TooLarge are the page's incidents longer than MaxBody: read past,
	// not kept, each to be dead-lettered alone.
	TooLarge []incident.Oversize
}

// counting counts the bytes read through it.
type counting struct {
	r io.Reader
	n int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Limits bound one poll of one type: however the upstream pages, a poll
// stops after this many pages, bytes or this long (zero: the default).
type Limits struct {
	MaxPages int           // default 10,000
	MaxBytes int64         // default 1 GiB
	MaxTime  time.Duration // default 10m
}

func (l Limits) withDefaults() Limits {
	if l.MaxPages <= 0 {
		l.MaxPages = 10_000
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = 1 << 30
	}
	if l.MaxTime <= 0 {
		l.MaxTime = 10 * time.Minute
	}
	return l
}

// ErrLimit is returned when a poll reaches one of its Limits.
var ErrLimit = errors.New("poll limit reached")

// IncidentPages reads the incidents of type t page by page, following
// "next" links, from start (a page URL a previous call returned; "" for
// the first page), and calls fn with each page as soon as it is read in
// full, so that a long or failing chain still makes progress. It returns
// where the next call should start: "" once the last page was read, else
// the first page not handed to fn (the one that failed, or the one past a
// limit). A page that fails or is cut off is never handed to fn.
//
// Each page is read as it arrives, never held whole: known, when set, is
// asked about each incident (the i-th of page number page, its exact
// bytes) and those it knows are dropped on the way, so that a poll of an
// upstream that returns every incident each time holds and hands on only
// what is new.
func (c *Client) IncidentPages(ctx context.Context, t incident.Type, start string, known func(page, i int, raw []byte) bool, fn func(Page) error) (resume string, err error) {
	endpoint := Endpoint(t)
	first := c.base.JoinPath("incidents", string(t)).String() + "/"
	next := first
	if start != "" {
		next = start
	}
	began := time.Now()
	var read int64
	seen := map[string]bool{}
	for page := 1; next != ""; page++ {
		if seen[next] {
			return "", fmt.Errorf("fetching %s: paging loops back to an earlier page", endpoint)
		}
		seen[next] = true
		switch {
		case page > c.limits.MaxPages:
			return next, fmt.Errorf("fetching %s: %w: %d pages in one poll; the next poll goes on from here", endpoint, ErrLimit, c.limits.MaxPages)
		case read > c.limits.MaxBytes:
			return next, fmt.Errorf("fetching %s: %w: %d bytes in one poll; the next poll goes on from here", endpoint, ErrLimit, c.limits.MaxBytes)
		case time.Since(began) > c.limits.MaxTime:
			return next, fmt.Errorf("fetching %s: %w: polling for %s; the next poll goes on from here", endpoint, ErrLimit, c.limits.MaxTime)
		}
		u, err := url.Parse(next)
		if err != nil || !sameOrigin(u, c.base) {
			return "", fmt.Errorf("fetching %s: next page link leaves the upstream host", endpoint)
		}
		var link string
		// A page is read as it streams, so it may be longer than MaxBody
		// (what the poll has left of its byte limit); an incident longer
		// than MaxBody is read past and reported, costing itself only.
		err = c.do(ctx, endpoint, u.String(), max(c.maxBody, c.limits.MaxBytes-read), func(b body) error {
			counted := &counting{r: b}
			var skip func(int, []byte) bool
			if known != nil {
				skip = func(i int, raw []byte) bool { return known(page, i, raw) }
			}
			res, err := incident.ScanResults(counted, incident.ScanOptions{Skip: skip, Hold: b.hold, MaxWindow: int(c.maxBody)})
			if err != nil {
				return err
			}
			link = res.Next
			read += counted.n
			if err := fn(Page{Number: page, Items: res.Items, Count: res.Count, TooLarge: res.TooLarge}); err != nil {
				return fmt.Errorf("%w: %w", errHandler, err)
			}
			return nil
		})
		if err != nil {
			return next, fmt.Errorf("fetching %s (page %d): %w", endpoint, page, err)
		}
		next = ""
		if link != "" {
			ref, err := url.Parse(link)
			if err != nil {
				return "", fmt.Errorf("fetching %s: bad next link: %w", endpoint, err)
			}
			next = u.ResolveReference(ref).String()
		}
	}
	return "", nil
}

// Incidents returns every incident of type t (at most Limits' worth),
// following "next" links: all of them, or an error (ErrTooLarge when one
// is longer than MaxBody).
func (c *Client) Incidents(ctx context.Context, t incident.Type) ([]json.RawMessage, error) {
	var all []json.RawMessage
	_, err := c.IncidentPages(ctx, t, "", nil, func(p Page) error {
		if len(p.TooLarge) > 0 {
			return fmt.Errorf("%w: incident %d of page %d is %d bytes", ErrTooLarge, p.TooLarge[0].Index, p.Number, p.TooLarge[0].Size)
		}
		all = append(all, p.Items...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// Identities returns the upstream's IP → employee id map, values as raw JSON.
func (c *Client) Identities(ctx context.Context) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := c.do(ctx, EndpointIdentities, c.base.JoinPath("identities").String()+"/", c.maxBody, whole(func(body []byte) error {
		m = nil
		if err := json.Unmarshal(body, &m); err != nil {
			return fmt.Errorf("decoding identities: %w", err)
		}
		if m == nil {
			return errors.New("decoding identities: not a JSON object")
		}
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", EndpointIdentities, err)
	}
	return m, nil
}
