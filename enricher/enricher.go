// Package enricher attributes every raw incident to an employee: directly
// when the incident names one, or through the IDENTITIES bucket when it names
// an IP. It reads INCIDENTS_RAW with the durable consumer "enricher" and
// publishes to INCIDENTS_ENRICHED, acknowledging a raw incident only once
// its enriched copy is stored. Invalid incidents go to INCIDENTS_DLQ.
//
// An incident whose IP no identity covers is published unattributed, on
// incidents.enriched.unattributed.<ip>. When the identity appears, the
// enricher publishes a resolution on the same subject (the envelope with
// employee_id set, header Incident-Reattributed), which moves the incident
// to the employee. An incident once attributed stays with that employee even
// if its IP is later assigned to someone else.
package enricher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/envelope"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// Options configure an Enricher.
type Options struct {
	JS jetstream.JetStream
	// Batch is how many raw incidents are fetched at once (default 500).
	Batch      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Enricher is one copy of the enrichment stage; several may run at once.
type Enricher struct {
	js      jetstream.JetStream
	batch   int
	log     *slog.Logger
	metrics *metrics
	ids     *identities
	dlq     dlq.Publisher
}

// New returns an enricher for o.
func New(o Options) (*Enricher, error) {
	if o.JS == nil {
		return nil, errors.New("enricher: JS is required")
	}
	if o.Batch <= 0 {
		o.Batch = 500
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	return &Enricher{
		js:      o.JS,
		batch:   o.Batch,
		log:     o.Logger.With("stage", topology.StageEnricher),
		metrics: newMetrics(o.Registerer),
		ids:     newIdentities(),
		dlq:     dlq.Publisher{JS: o.JS, Stage: topology.StageEnricher},
	}, nil
}

// Run loads the identities, then enriches raw incidents until ctx ends. It
// also attributes pending incidents as their identities appear.
func (e *Enricher) Run(ctx context.Context) error {
	kv, err := e.js.KeyValue(ctx, topology.BucketIdentities)
	if err != nil {
		return fmt.Errorf("opening %s: %w", topology.BucketIdentities, err)
	}
	appeared := make(chan struct{}, 1)
	watchErr := make(chan error, 1)
	loaded := make(chan struct{})
	go func() { watchErr <- e.ids.watch(ctx, kv, loaded, appeared) }()
	select {
	case <-loaded:
	case err := <-watchErr:
		return err
	case <-ctx.Done():
		return nil
	}
	e.log.Info("identities loaded", "count", e.ids.len())

	cons, err := topology.EnsureConsumer(ctx, e.js, topology.StreamRaw, topology.EnricherConsumer())
	if err != nil {
		return err
	}
	go e.resolveLoop(ctx, appeared)
	go natsutil.TrackLag(ctx, cons, 5*time.Second, func(n uint64) { e.metrics.pending.Set(float64(n)) })
	// A broken identities watch stops the stage: it could not attribute.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if err := <-watchErr; err != nil {
			cancel(fmt.Errorf("watching identities: %w", err))
		}
	}()
	natsutil.FetchBatches(ctx, cons, e.batch, e.log, func(msgs []jetstream.Msg) { e.handleBatch(ctx, msgs) })
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// job is one raw incident in flight.
type job struct {
	msg     jetstream.Msg
	futures []jetstream.PubAckFuture
	err     error
}

// handleBatch enriches a batch: all publishes go out asynchronously, then
// each raw message is acked once its publishes are acknowledged.
func (e *Enricher) handleBatch(ctx context.Context, msgs []jetstream.Msg) {
	jobs := make([]job, len(msgs))
	for i, m := range msgs {
		jobs[i] = job{msg: m}
		jobs[i].futures, jobs[i].err = e.enrich(ctx, m)
	}
	for _, j := range jobs {
		err := j.err
		for _, f := range j.futures {
			select {
			case <-f.Ok():
			case perr := <-f.Err():
				err = errors.Join(err, perr)
			case <-ctx.Done():
				return // unacked messages are redelivered
			}
		}
		if err != nil {
			e.log.Warn("enriching failed; will retry", "subject", j.msg.Subject(), "error", err)
			_ = j.msg.NakWithDelay(2 * time.Second)
			continue
		}
		_ = j.msg.Ack()
	}
}

// enrich starts the publishes of one raw incident. An invalid incident is
// dead-lettered (synchronously) and returns no futures.
func (e *Enricher) enrich(ctx context.Context, m jetstream.Msg) ([]jetstream.PubAckFuture, error) {
	env, in, err := attribute(m.Subject(), m.Data(), e.ids)
	if err != nil {
		id := m.Headers().Get(topology.HeaderMsgID)
		if id == "" {
			id = incident.ID(env.Type, m.Data())
		}
		letter := dlq.Letter{Type: string(env.Type), ID: id, Subject: m.Subject(), Data: m.Data(), Err: err}
		if err := e.dlq.Publish(ctx, letter); err != nil {
			return nil, err
		}
		e.metrics.dlq.WithLabelValues(topology.StageEnricher, letter.Reason()).Inc()
		e.log.Warn("invalid incident dead-lettered", "type", env.Type, "id", id, "reason", letter.Reason(), "error", err)
		return nil, nil
	}
	if env.EmployeeID != "" {
		e.metrics.enriched.WithLabelValues(string(env.Type), "attributed").Inc()
		f, err := e.publish(env, false)
		return []jetstream.PubAckFuture{f}, err
	}
	e.metrics.enriched.WithLabelValues(string(env.Type), "unattributed").Inc()
	f, err := e.publish(env, false)
	if err != nil {
		return nil, err
	}
	futures := []jetstream.PubAckFuture{f}
	// The identity may have appeared while this was in flight, after the
	// resolver scanned for it: resolve here too; the message id dedups.
	if emp, ok := e.ids.lookup(in.Identity.IP); ok {
		env.EmployeeID = emp
		f, err := e.publish(env, true)
		if err != nil {
			return futures, err
		}
		futures = append(futures, f)
	}
	return futures, nil
}

// attribute decodes a raw incident read from subject and resolves its
// employee: directly, or through ids; EmployeeID stays empty for an IP that
// no identity covers. The error is an *incident.InvalidError.
func attribute(subject string, data []byte, ids *identities) (envelope.Enriched, incident.Incident, error) {
	t, err := topology.TypeOfRawSubject(subject)
	if err != nil {
		return envelope.Enriched{}, incident.Incident{}, &incident.InvalidError{Reason: incident.ReasonUnknownType, Detail: err.Error()}
	}
	in, err := incident.Decode(t, data)
	env := envelope.Enriched{ID: in.ID, Type: t, Incident: data}
	if err != nil {
		return env, in, err
	}
	if !in.Identity.IsIP() {
		env.EmployeeID = in.Identity.EmployeeID
		return env, in, nil
	}
	env.IP = in.Identity.IP.String()
	env.EmployeeID, _ = ids.lookup(in.Identity.IP)
	return env, in, nil
}

// publish sends an enriched incident: attributed to its employee's subject,
// unattributed (and resolutions of unattributed ones) to its IP's subject.
func (e *Enricher) publish(env envelope.Enriched, resolution bool) (jetstream.PubAckFuture, error) {
	data, err := env.Encode()
	if err != nil {
		return nil, err
	}
	var msg *nats.Msg
	switch {
	case resolution:
		ip, _ := env.Addr()
		msg = nats.NewMsg(topology.UnattributedSubject(ip))
		msg.Header.Set(topology.HeaderMsgID, env.ID+".resolved")
		msg.Header.Set(topology.HeaderReattributed, "true")
	case env.EmployeeID == "":
		ip, _ := env.Addr()
		msg = nats.NewMsg(topology.UnattributedSubject(ip))
		msg.Header.Set(topology.HeaderMsgID, env.ID+".unattributed")
	default:
		msg = nats.NewMsg(topology.EnrichedSubject(env.EmployeeID))
		msg.Header.Set(topology.HeaderMsgID, env.ID+"."+env.EmployeeID)
	}
	msg.Data = data
	f, err := e.js.PublishMsgAsync(msg)
	if err != nil {
		return nil, fmt.Errorf("publishing enriched incident %s: %w", env.ID, err)
	}
	return f, nil
}
