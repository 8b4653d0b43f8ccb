// Package api serves the incident view over HTTP with chi: GET /incidents
// (every employee's document, or a filtered page of them),
// GET /incidents/{employee_id}, GET /unattributed, GET /risk (employees by
// risk score, paged) and GET /risk/{employee_id}, GET /events (the view's
// changes, as Server-Sent Events), GET /status (the pipeline's health), and
// the analyst console at /. It watches INCIDENT_VIEW and serves bytes
// prepared when the view changed, never computed per request.
package api

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// Options configure the API.
type Options struct {
	JS jetstream.JetStream
	// Metrics serves /metrics; nil serves none.
	Metrics http.Handler
	// Health gets the API's readiness check and serves /healthz and /readyz.
	Health     *telemetry.Health
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	// TokensFile, when set, names the file of allowed bearer tokens
	// ("sha256:<hex>" lines) that every data route requires; it is re-read
	// when it changes. Empty leaves the API open.
	TokensFile string
	// MetricsAuth requires the same tokens on /metrics.
	MetricsAuth bool
	// RateLimit, when positive, limits each client to this many requests a
	// second (bursts of twice that).
	RateLimit float64
	// RiskHalfLife, when positive, halves an incident's risk score per
	// half-life of its age (measured from now); zero: no decay.
	RiskHalfLife time.Duration
	// RiskCursorBytes bounds the memory of the rankings kept for open
	// /risk cursors (0: DefaultCursorBudget); each stays valid CursorTTL
	// after its last page unless the budget forces it out first.
	RiskCursorBytes int64

	// EventsMaxStreams bounds the /events streams open at once (0:
	// DefaultMaxStreams); past it a new one is answered 503.
	EventsMaxStreams int
	// EventsMaxPerClient bounds the open streams of one token, or of one
	// client address when the API has no tokens (0:
	// DefaultMaxStreamsPerClient).
	EventsMaxPerClient int
	// EventsMaxLifetime ends a stream after this long (0:
	// DefaultMaxStreamLifetime); the browser reconnects with Last-Event-ID
	// and misses nothing.
	EventsMaxLifetime time.Duration

	// Stuck, when set, names the upstream endpoints whose polls cannot
	// advance and why (the standalone passes its producers'); /status
	// shows them.
	Stuck func() map[string]string
}

// DefaultMaxStreamLifetime is how long an /events stream lasts at most by
// default.
const DefaultMaxStreamLifetime = time.Hour

// eventsKept is how many changes /events keeps for clients that reconnect;
// eventsBuffered how many a client may fall behind before it is dropped.
const (
	eventsKept     = 1024
	eventsBuffered = 256
)

// filterCacheBytes bounds the filtered answers kept for the current view.
const filterCacheBytes = 64 << 20

// API is the HTTP API.
type API struct {
	js      jetstream.JetStream
	log     *slog.Logger
	store   *store
	hub     *hub
	nats    atomic.Pointer[natsStatus]
	filters *filterCache
	tokens  *tokens
	handler http.Handler

	streams        *streamLimits
	streamLifetime time.Duration
	stuck          func() map[string]string
	stopping       chan struct{} // closed when Run's context ends: streams close
	stopOnce       sync.Once
	metrics        *metrics
}

// New returns the API for o; call Run to load and follow the view.
func New(o Options) (*API, error) {
	if o.JS == nil {
		return nil, errors.New("api: JS is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Health == nil {
		o.Health = &telemetry.Health{}
	}
	log := o.Logger.With("stage", topology.StageAPI)
	m := newMetrics(o.Registerer)
	a := &API{js: o.JS, log: log, store: newStore(log, m), metrics: m, stopping: make(chan struct{})}
	a.streams = newStreamLimits(cmp.Or(o.EventsMaxPerClient, DefaultMaxStreamsPerClient), cmp.Or(o.EventsMaxStreams, DefaultMaxStreams()))
	a.streamLifetime = cmp.Or(o.EventsMaxLifetime, DefaultMaxStreamLifetime)
	a.stuck = o.Stuck
	m.eventStreams = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "incidents_api_event_streams",
		Help: "Open /events streams.",
	}, func() float64 { return float64(a.streams.openStreams()) })
	o.Registerer.MustRegister(m.eventStreams)
	a.store.halfLife = o.RiskHalfLife
	a.store.cursors = newCursorRankings(CursorTTL, cmp.Or(o.RiskCursorBytes, DefaultCursorBudget), o.Registerer)
	a.filters = newFilterCache(filterCacheBytes, a.store.snap.Load)
	a.hub = newHub(eventsKept, eventsBuffered)
	a.store.onLoad, a.store.onChange, a.store.onReplace = a.hub.start, a.hub.publish, a.hub.replace
	if o.TokensFile != "" {
		t, err := loadTokens(o.TokensFile, log)
		if err != nil {
			return nil, err
		}
		a.tokens = t
	} else {
		log.Warn("API_TOKENS_FILE is not set: anyone who reaches the API reads every incident")
	}
	// open is the identity middleware; protected requires a token if any.
	open := func(next http.Handler) http.Handler { return next }
	protected := open
	if a.tokens != nil {
		protected = a.tokens.require
	}
	o.Health.Add("view", func(context.Context) error {
		if !a.store.loaded.Load() {
			return errors.New("the view is not loaded yet")
		}
		return nil
	})

	r := chi.NewRouter()
	r.Use(m.instrument, recoverer(log))
	if o.RateLimit > 0 {
		r.Use(rateLimit(o.RateLimit))
	}
	r.Use(middleware.GetHead)
	r.Get("/healthz", o.Health.Live)
	r.Get("/readyz", o.Health.Readiness)
	if o.Metrics != nil {
		metricsAuth := open
		if o.MetricsAuth {
			metricsAuth = protected
		}
		r.With(metricsAuth).Method(http.MethodGet, "/metrics", o.Metrics)
	}
	console := consoleHandler()
	r.Get("/", console.ServeHTTP)
	r.Get("/console/*", console.ServeHTTP)
	r.Get("/favicon.ico", console.ServeHTTP)
	r.Group(func(r chi.Router) {
		r.Use(dataHeaders, protected, a.loaded)
		r.Get("/incidents", a.all)
		r.Get("/incidents/{employee_id}", a.employee)
		r.Get("/unattributed", a.unattributedList)
		r.Get("/risk", a.riskRanking)
		r.Get("/risk/{employee_id}", a.employeeRiskEntry)
		r.Get("/events", a.events)
		r.Get("/status", a.status)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) { writeError(w, http.StatusNotFound, "not found") })
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		// Every route answers GET and HEAD only.
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	})
	a.handler = r
	return a, nil
}

// loaded answers 503 with Retry-After until the view is loaded, so that no
// client mistakes an empty view for "no incidents".
func (a *API) loaded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.store.loaded.Load() {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "the view is loading; retry shortly")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Handler returns the HTTP handler.
func (a *API) Handler() http.Handler { return a.handler }

// Run loads the view and follows its changes until ctx ends; it also
// re-reads the tokens file when it changes.
func (a *API) Run(ctx context.Context) error {
	// At shutdown the open streams end first, so that the HTTP server's
	// graceful shutdown is not held by them.
	context.AfterFunc(ctx, func() { a.stopOnce.Do(func() { close(a.stopping) }) })
	if a.tokens != nil {
		go a.tokens.watch(ctx.Done())
	}
	go a.watchStatus(ctx, &a.nats)
	a.store.run(ctx, a.js)
	return nil
}

// ReloadTokens re-reads the tokens file now (on SIGHUP).
func (a *API) ReloadTokens() {
	if a.tokens != nil {
		a.tokens.Reload()
	}
}

func (a *API) all(w http.ResponseWriter, r *http.Request) {
	f, used, err := parseFilter(r.URL.RawQuery)
	switch {
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
	case used:
		a.filtered(w, r, f)
	default:
		serve(w, r, a.store.snap.Load().all)
	}
}

func (a *API) employee(w http.ResponseWriter, r *http.Request) {
	// "0641" names employee 641, as it does in upstream data.
	id, err := incident.ParseEmployeeID(chi.URLParam(r, "employee_id"))
	b, ok := a.store.snap.Load().employee(id)
	if err != nil || !ok {
		writeError(w, http.StatusNotFound, "no incidents for this employee")
		return
	}
	serve(w, r, b)
}

func (a *API) unattributedList(w http.ResponseWriter, r *http.Request) {
	serve(w, r, a.store.snap.Load().unattributed)
}

// serve writes a prepared body, honouring If-None-Match and gzip.
func serve(w http.ResponseWriter, r *http.Request, b *body) {
	h := w.Header()
	h.Set("ETag", b.etag)
	h.Add("Vary", "Accept-Encoding")
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, b.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	length, write := b.length(), b.writeTo
	if acceptsGzip(r) {
		gz := b.gzipped()
		h.Set("Content-Encoding", "gzip")
		length, write = len(gz), func(w io.Writer) error { _, err := w.Write(gz); return err }
	}
	h.Set("Content-Length", strconv.Itoa(length))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_ = write(w)
	}
}

func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether the client takes gzip (RFC 9110 12.5.3): an
// explicit gzip entry decides by its quality; otherwise "*" does.
func acceptsGzip(r *http.Request) bool {
	gzip, star := -1.0, -1.0
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(part, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name != "gzip" && name != "*" {
			continue
		}
		q := 1.0
		for _, p := range strings.Split(params, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f >= 0 && f <= 1 {
					q = f
				} else {
					q = 0 // an unreadable quality: do not guess
				}
			}
		}
		if name == "gzip" {
			gzip = max(gzip, q)
		} else {
			star = max(star, q)
		}
	}
	if gzip >= 0 {
		return gzip > 0
	}
	return star > 0
}
