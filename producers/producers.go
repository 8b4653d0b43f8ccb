// Package producers polls the upstream incident API: one poller per incident
// type, publishing new incidents to INCIDENTS_RAW, and one syncer copying the
// identities into the IDENTITIES bucket. Each runs on its own schedule, so a
// slow or failing type never delays the others.
package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// Upstream is what the producers need of the upstream API.
type Upstream interface {
	// IncidentPages hands fn each complete page of type t's incidents, from
	// start ("" for the first page), dropping on the way those known reports
	// stored already, and returns where the next poll starts.
	IncidentPages(ctx context.Context, t incident.Type, start string, known func(page, i int, raw []byte) bool, fn func(upstream.Page) error) (resume string, err error)
	Identities(ctx context.Context) (map[string]json.RawMessage, error)
}

// Options configure the producers.
type Options struct {
	Upstream Upstream
	JS       jetstream.JetStream
	// Interval between polls of each type (default 1m), with ±10% jitter.
	Interval time.Duration
	// Types to poll (default all).
	Types      []incident.Type
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Producers polls every type and the identities.
type Producers struct {
	up       Upstream
	js       jetstream.JetStream
	interval time.Duration
	types    []incident.Type
	log      *slog.Logger
	metrics  *metrics
	progress *stage.Progress

	mu     sync.Mutex
	polls  map[string]pollState       // by endpoint, once polled
	seen   map[incident.Type]*seenSet // what is known to be in INCIDENTS_RAW
	resume map[incident.Type]string   // where a type's next poll starts ("" the first page)
}

// New returns producers for o.
func New(o Options) (*Producers, error) {
	if o.Upstream == nil || o.JS == nil {
		return nil, errors.New("producers: Upstream and JS are required")
	}
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if len(o.Types) == 0 {
		o.Types = incident.Types()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	return &Producers{
		up:       o.Upstream,
		js:       o.JS,
		interval: o.Interval,
		types:    o.Types,
		log:      o.Logger.With("stage", topology.StageProducers),
		metrics:  newMetrics(o.Registerer, o.Types),
		progress: stage.NewProgress(topology.StageProducers, o.Registerer, o.Logger),
		seen:     map[incident.Type]*seenSet{},
		polls:    map[string]pollState{},
		resume:   map[incident.Type]string{},
	}, nil
}

// Ready reports whether publishing makes progress: a readiness check.
func (p *Producers) Ready(ctx context.Context) error { return p.progress.Check(ctx) }

// Run syncs the identities once, so that the first incidents resolve, then
// polls every type and the identities on the interval until ctx ends.
func (p *Producers) Run(ctx context.Context) error {
	if err := p.loadSeen(ctx); err != nil {
		return err
	}
	// Bounded: a down upstream must not hold back the incident pollers for
	// long; incidents that arrive first are attributed when the identities do.
	first, cancel := context.WithTimeout(ctx, 30*time.Second)
	if _, err := p.SyncIdentities(first); err != nil && ctx.Err() == nil {
		p.log.Error("identities sync failed", "endpoint", upstream.EndpointIdentities, "error", err)
	}
	cancel()
	var wg sync.WaitGroup
	for _, t := range p.types {
		wg.Go(func() {
			p.every(ctx, upstream.Endpoint(t), func(ctx context.Context) error {
				_, err := p.Poll(ctx, t)
				return err
			})
		})
	}
	wg.Go(func() {
		_ = wait.For(ctx, p.jittered(0))
		p.every(ctx, upstream.EndpointIdentities, func(ctx context.Context) error {
			_, err := p.SyncIdentities(ctx)
			return err
		})
	})
	wg.Wait()
	return nil
}

// every runs f now and then on the interval with jitter. After refused
// credentials it waits longer, up to 8 intervals, so as not to hammer. A
// failure is logged when polls start failing and then at most once per
// failureLogEvery while they go on; failures to publish are NATS's and are
// reported by the stage's progress instead.
func (p *Producers) every(ctx context.Context, endpoint string, f func(context.Context) error) {
	refused := 0
	var logged time.Time
	for ctx.Err() == nil {
		err := f(ctx)
		if ctx.Err() != nil {
			return
		}
		failing, before := p.polled(endpoint, err)
		switch {
		case err == nil:
			if before > 0 {
				p.log.Info("polls succeed again", "endpoint", endpoint, "failed_polls", before)
			}
			refused = 0
		default:
			if errors.Is(err, upstream.ErrUnauthorized) {
				refused++
			}
			if !errors.Is(err, errPublishing) && (failing == 1 || time.Since(logged) >= failureLogEvery) {
				logged = time.Now()
				p.log.Error("poll failed; what it read in full is kept, the view keeps what it has", "endpoint", endpoint, "failed_polls", failing, "error", err)
			}
		}
		_ = wait.For(ctx, p.jittered(refused))
	}
}

// failureLogEvery is how often a poll that keeps failing is logged.
const failureLogEvery = time.Minute

// errPublishing marks a poll that failed because NATS did not store what it
// read.
var errPublishing = errors.New("publishing to NATS")

// jittered is the wait before the next poll: the interval ±10%, doubled for
// each refusal of the credentials in a row, up to 8 times.
func (p *Producers) jittered(refused int) time.Duration {
	d := p.interval << min(refused, 3)
	return d + time.Duration((rand.Float64()-0.5)*0.2*float64(d))
}

// loadSeen reads the ids already in INCIDENTS_RAW (headers only), so that a
// restarted producer does not publish them again.
func (p *Producers) loadSeen(ctx context.Context) error {
	for _, t := range p.types {
		set := newSeenSet()
		_, err := readIDs(ctx, p.js, t, set.addID)
		if err != nil {
			return fmt.Errorf("loading published ids of %s: %w", t, err)
		}
		if _, err := readLetterIDs(ctx, p.js, t, set.addID); err != nil {
			return fmt.Errorf("loading dead-lettered ids of %s: %w", t, err)
		}
		p.mu.Lock()
		p.seen[t] = set
		p.mu.Unlock()
	}
	return nil
}

// PollResult says what one poll did.
type PollResult struct {
	Pages     int // complete pages read
	Fetched   int // incidents the upstream returned on them
	Published int // newly stored in INCIDENTS_RAW
	TooLarge  int // newly dead-lettered as longer than UPSTREAM_MAX_BODY
}

// Poll reads the incidents of type t page by page and publishes, as soon as
// a page is read in full, those not yet in INCIDENTS_RAW: a poll that fails
// half-way keeps what it read (everything is de-duplicated by id), and a
// page that fails or is cut off publishes nothing. A poll stopped by a
// failure or by its limits is resumed from that page by the next one, so a
// long paged upstream fills however often it fails.
func (p *Producers) Poll(ctx context.Context, t incident.Type) (PollResult, error) {
	start := time.Now()
	p.mu.Lock()
	seen := p.seen[t]
	if seen == nil {
		seen = newSeenSet()
		p.seen[t] = seen
	}
	from := p.resume[t]
	p.mu.Unlock()
	var res PollResult
	seen.pollStarts()
	resume, err := p.up.IncidentPages(ctx, t, from, seen.known, func(page upstream.Page) error {
		res.Pages++
		res.Fetched += page.Count
		stored, err := p.publishRaw(ctx, t, seen.fresh(t, page.Items))
		if err == nil {
			var dead int
			dead, err = p.deadLetterTooLarge(ctx, t, page, seen)
			res.TooLarge += dead
		}
		n := 0
		for _, r := range stored {
			seen.add(r)
			if r.new {
				n++
			}
		}
		res.Published += n
		p.metrics.published.WithLabelValues(string(t)).Add(float64(n))
		if err != nil {
			p.progress.Stalled(err)
			return fmt.Errorf("%w: %s incidents: %w", errPublishing, t, err)
		}
		p.progress.OK()
		return nil
	})
	p.mu.Lock()
	p.resume[t] = resume
	p.mu.Unlock()
	seen.pollEnds(err == nil && from == "" && resume == "")
	if err != nil {
		p.metrics.polls.WithLabelValues(upstream.Endpoint(t), "error").Inc()
		return res, err
	}
	p.metrics.polls.WithLabelValues(upstream.Endpoint(t), "ok").Inc()
	p.metrics.lastSuccess.WithLabelValues(upstream.Endpoint(t)).SetToCurrentTime()
	p.log.Info("polled", "type", t, "pages", res.Pages, "count", res.Fetched, "new", res.Published, "duration", time.Since(start).Round(time.Millisecond).String())
	return res, nil
}
