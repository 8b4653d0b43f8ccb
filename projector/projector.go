// Package projector folds enriched incidents into INCIDENT_VIEW: one document
// per employee, exactly as GET /incidents shows it, and one per unresolved IP
// for incidents not yet attributed. It reads INCIDENTS_ENRICHED with the
// durable consumer "projector". Folding is idempotent (an incident already in
// a document changes nothing) and every write is a compare-and-set on the
// key's revision, so several projectors never lose each other's updates.
package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/envelope"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// Options configure a Projector.
type Options struct {
	JS jetstream.JetStream
	// Batch is how many enriched incidents are fetched at once (default 1000).
	Batch int
	// Workers is how many documents are prepared at once (default 64): most
	// manifests are read together beforehand, the rest one round trip each.
	Workers    int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Projector is one copy of the projection stage; several may run at once.
type Projector struct {
	js       jetstream.JetStream
	batch    int
	workers  int
	log      *slog.Logger
	metrics  *metrics
	progress *stage.Progress
	pieces   *pieces
}

// Ready reports whether the stage makes progress: a readiness check.
func (p *Projector) Ready(ctx context.Context) error { return p.progress.Check(ctx) }

// New returns a projector for o.
func New(o Options) (*Projector, error) {
	if o.JS == nil {
		return nil, errors.New("projector: JS is required")
	}
	if o.Batch <= 0 {
		o.Batch = 1000
	}
	if o.Workers <= 0 {
		o.Workers = 64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	return &Projector{
		js:       o.JS,
		batch:    o.Batch,
		workers:  o.Workers,
		log:      o.Logger.With("stage", topology.StageProjector),
		metrics:  newMetrics(o.Registerer),
		progress: stage.NewProgress(topology.StageProjector, o.Registerer, o.Logger),
		pieces:   newPieces(),
	}, nil
}

// Run projects enriched incidents until ctx ends.
func (p *Projector) Run(ctx context.Context) error {
	kv, err := p.js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		return fmt.Errorf("opening %s: %w", topology.BucketView, err)
	}
	// Before any incident is folded, so that none lands beside a
	// document still under an earlier spelling of its employee.
	for attempt := 1; ; attempt++ {
		err := p.migrateKeys(ctx, kv)
		if err == nil {
			if attempt > 1 {
				p.progress.OK()
			}
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.progress.Stalled(err)
		if err := wait.For(ctx, min(time.Duration(attempt)*time.Second, 30*time.Second)); err != nil {
			return err
		}
	}
	cons, err := topology.AwaitConsumer(ctx, p.log, p.js, topology.StreamEnriched, topology.ProjectorConsumer())
	if err != nil {
		return err
	}
	stage.KeepAligned(ctx, p.js, topology.StreamEnriched, topology.ProjectorConsumer(), 5*time.Second, p.log)
	go p.metrics.lag.Track(ctx, cons, 5*time.Second, p.progress)
	go p.removeMarkers(ctx, kv)
	go p.resumeRebuilds(ctx, kv)
	stage.Consume(ctx, cons, func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		return p.handle(ctx, kv, msgs)
	}, stage.Options{
		Stage:        topology.StageProjector,
		DLQ:          dlq.Publisher{JS: p.js, Stage: topology.StageProjector},
		Batch:        p.batch,
		Progress:     p.progress,
		Conn:         p.js.Conn(),
		DeadLettered: func(reason string) { p.metrics.dlq.WithLabelValues(topology.StageProjector, reason).Inc() },
		Logger:       p.log,
	})
	return nil
}

// batch is the plans of a batch of enriched incidents, one per document,
// in the order documents were first touched.
type batch struct {
	plans map[string]*plan
	order []string
	bytes int // about what the planned incidents hold in memory
}

func newBatch() *batch { return &batch{plans: map[string]*plan{}} }

func (b *batch) add(key string, o op) {
	pl := b.plans[key]
	if pl == nil {
		pl = &plan{key: key}
		b.plans[key] = pl
		b.order = append(b.order, key)
	}
	pl.ops = append(pl.ops, o)
}

// plan adds one enriched message (its subject, data and headers) to the
// batch: it returns the documents it touches, or why it is invalid. The
// employee is named three times (subject, envelope, and the incident when
// it names one), each in canonical form: a message whose parts disagree is
// refused, never filed under one of them.
func (b *batch) plan(subject string, data []byte, h nats.Header) ([]string, *stage.Outcome) {
	id := h.Get(topology.HeaderMsgID)
	env, in, err := envelope.Decode(data)
	if err == nil {
		err = agree(subject, env, in, h.Get(topology.HeaderReattributed) != "")
	}
	if err != nil {
		out := stage.Rejected(string(env.Type), id, err)
		return nil, &out
	}
	ip, hasIP := env.Addr()
	// Canonical; Decode checked it.
	employee, _ := incident.ParseEmployeeID(env.EmployeeID)
	b.bytes += 2*len(data) + 192 // the incident decoded, and its entry
	switch {
	case env.EmployeeID == "" && !hasIP:
		out := stage.Rejected(string(env.Type), id, &incident.InvalidError{Reason: incident.ReasonInvalidEnvelope, Detail: "unattributed incident without a valid ip"})
		return nil, &out
	case env.EmployeeID == "":
		key := topology.UnattributedKey(ip)
		b.add(key, op{kind: opUnattributed, in: in})
		return []string{key}, nil
	case h.Get(topology.HeaderReattributed) != "" && hasIP:
		emp, un := topology.EmployeeKey(employee), topology.UnattributedKey(ip)
		b.add(emp, op{kind: opEmployee, in: in})
		b.add(un, op{kind: opAttributed, in: in})
		return []string{emp, un}, nil
	default:
		key := topology.EmployeeKey(employee)
		b.add(key, op{kind: opEmployee, in: in})
		return []string{key}, nil
	}
}

// agree checks that the subject, the envelope and the incident name the
// same employee, or the same IP: an unattributed incident, and the
// resolution of one (reattributed), go on the IP's subject.
func agree(subject string, env envelope.Enriched, in incident.Incident, reattributed bool) error {
	disagree := func(format string, args ...any) error {
		return &incident.InvalidError{Reason: incident.ReasonInvalidEnvelope, Detail: fmt.Sprintf(format, args...)}
	}
	named := strings.TrimPrefix(subject, "incidents.enriched.")
	subjEmployee, subjIP, err := topology.EnrichedTarget(subject)
	if err != nil {
		return disagree("%v", err)
	}
	employee, _ := incident.ParseEmployeeID(env.EmployeeID)
	if subjIP != "" {
		ip, ok := env.Addr()
		switch {
		case !ok || incident.IPKey(ip) != subjIP:
			return disagree("the subject names %q, the envelope the ip %q", named, env.IP)
		case employee != "" && !reattributed:
			return disagree("the subject names the unattributed ip %q, the envelope employee %s", named, employee)
		}
	} else if subjEmployee != employee {
		return disagree("the subject names %q, the envelope employee %q", named, employee)
	}
	if own := in.Identity.EmployeeID; own != "" && own != employee {
		return disagree("the incident names employee %s, the envelope employee %s", own, employee)
	}
	return nil
}

// handle folds a batch: the changes to each document are grouped, in
// message order, into one compare-and-set write; a message is done when all
// documents it touches are written.
func (p *Projector) handle(ctx context.Context, kv jetstream.KeyValue, msgs []jetstream.Msg) []stage.Outcome {
	out := make([]stage.Outcome, len(msgs))
	b := newBatch()
	touches := make([][]string, len(msgs))
	for i, m := range msgs {
		var rejected *stage.Outcome
		if touches[i], rejected = b.plan(m.Subject(), m.Data(), m.Headers()); rejected != nil {
			out[i] = *rejected
		}
	}
	plans, order := b.plans, b.order

	results := p.write(ctx, kv, plans, order)

	for i := range msgs {
		var err error
		for _, key := range touches[i] {
			err = errors.Join(err, results[key])
		}
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrMaxPayload):
			// The document would outgrow what NATS carries: retrying cannot help.
			out[i] = stage.Rejected("", msgs[i].Headers().Get(topology.HeaderMsgID), &incident.InvalidError{Reason: dlq.ReasonTooLarge, Detail: err.Error()})
		default:
			out[i] = stage.Retried(err)
		}
	}
	return out
}

// write applies the plans of a batch and returns each document's error.
// Employees' changes are prepared in parallel and written together (their
// pieces in one go, then their manifests); a change that meets another
// writer's, and every unattributed document, is written on its own.
func (p *Projector) write(ctx context.Context, kv jetstream.KeyValue, plans map[string]*plan, order []string) map[string]error {
	results := make(map[string]error, len(order))
	var mu sync.Mutex
	set := func(key string, err error) {
		mu.Lock()
		results[key] = err
		mu.Unlock()
	}
	parallel := func(keys []string, f func(key string)) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, p.workers)
		for _, key := range keys {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				f(key)
			})
		}
		wg.Wait()
	}

	var employees, alone []string
	for _, key := range order {
		if strings.HasPrefix(key, topology.UnattributedPrefix) {
			alone = append(alone, key)
		} else {
			employees = append(employees, key)
		}
	}
	changes := make(map[string]*change, len(employees))
	if err := p.pieces.prefetch(ctx, p.js, employees); err != nil {
		p.log.Warn("reading manifests together failed; reading them one by one for a while", "error", err)
	}
	parallel(employees, func(key string) {
		c, err := p.pieces.prepare(ctx, kv, key, entriesOf(plans[key]))
		switch {
		case errors.Is(err, errConflict):
			mu.Lock()
			alone = append(alone, key)
			mu.Unlock()
		case err != nil:
			set(key, err)
		case c == nil:
			p.metrics.projected.WithLabelValues("duplicate").Add(float64(len(plans[key].ops)))
			set(key, nil)
		default:
			mu.Lock()
			changes[key] = c
			mu.Unlock()
		}
	})
	var batch []*change
	for _, key := range employees {
		if c := changes[key]; c != nil {
			batch = append(batch, c)
		}
	}
	for i, err := range p.pieces.commit(ctx, p.js, batch) {
		key := batch[i].employee
		switch {
		case errors.Is(err, errConflict):
			p.metrics.conflicts.Inc()
			alone = append(alone, key)
		case err != nil:
			set(key, err)
		default:
			p.metrics.projected.WithLabelValues("added").Add(float64(batch[i].added))
			p.metrics.projected.WithLabelValues("duplicate").Add(float64(len(plans[key].ops) - batch[i].added))
			set(key, nil)
		}
	}
	parallel(alone, func(key string) { set(key, p.apply(ctx, kv, plans[key])) })
	return results
}

// markerAge is how old the marker of a removed piece must be before it goes:
// readers have long moved on to the manifest that replaced the piece.
const markerAge = time.Hour

// removeMarkers removes, every markerAge, the delete markers that replaced
// pieces: each change of an employee replaces a piece, so without this the
// bucket would grow with every change, not with the view.
func (p *Projector) removeMarkers(ctx context.Context, kv jetstream.KeyValue) {
	t := time.NewTicker(markerAge)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(markerAge))
		if err != nil && !failing && ctx.Err() == nil {
			p.log.Warn("removing old delete markers from the view failed; will try again", "error", err)
		}
		failing = err != nil
	}
}
