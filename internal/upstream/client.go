// Package upstream is the client of the upstream incident API: basic auth,
// Django-REST paging, per-request timeouts, retries with backoff, and a cap
// on response size. A call returns all the data or an error, never part.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

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
	// MaxBody is the largest response body read, in bytes (default 64 MiB).
	MaxBody int64
	// Retry bounds the attempts of one request.
	Retry RetryPolicy
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

// Incidents returns every incident of type t, following "next" links, each
// as the exact bytes received.
func (c *Client) Incidents(ctx context.Context, t incident.Type) ([]json.RawMessage, error) {
	endpoint := Endpoint(t)
	next := c.base.JoinPath("incidents", string(t)).String() + "/"
	var all []json.RawMessage
	seen := map[string]bool{}
	for next != "" {
		if seen[next] {
			return nil, fmt.Errorf("fetching %s: paging loops back to an earlier page", endpoint)
		}
		seen[next] = true
		u, err := url.Parse(next)
		if err != nil || !sameOrigin(u, c.base) {
			return nil, fmt.Errorf("fetching %s: next page link leaves the upstream host", endpoint)
		}
		var items []json.RawMessage
		var link string
		err = c.do(ctx, endpoint, u.String(), func(body []byte) error {
			var err error
			items, link, err = incident.DecodeResults(body)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("fetching %s (page %d): %w", endpoint, len(seen), err)
		}
		all = append(all, items...)
		next = ""
		if link != "" {
			ref, err := url.Parse(link)
			if err != nil {
				return nil, fmt.Errorf("fetching %s: bad next link: %w", endpoint, err)
			}
			next = u.ResolveReference(ref).String()
		}
	}
	return all, nil
}

// Identities returns the upstream's IP → employee id map, values as raw JSON.
func (c *Client) Identities(ctx context.Context) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := c.do(ctx, EndpointIdentities, c.base.JoinPath("identities").String()+"/", func(body []byte) error {
		m = nil
		if err := json.Unmarshal(body, &m); err != nil {
			return fmt.Errorf("decoding identities: %w", err)
		}
		if m == nil {
			return errors.New("decoding identities: not a JSON object")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", EndpointIdentities, err)
	}
	return m, nil
}
