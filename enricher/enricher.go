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

// Options configure an Enricher.
type Options struct {
	JS jetstream.JetStream
	// Batch is how many raw incidents are fetched at once (default 500).
	Batch      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Ready reports whether the stage makes progress: a readiness check.
func (e *Enricher) Ready(ctx context.Context) error { return e.progress.Check(ctx) }

// Enricher is one copy of the enrichment stage; several may run at once.
type Enricher struct {
	js       jetstream.JetStream
	batch    int
	log      *slog.Logger
	metrics  *metrics
	progress *stage.Progress
	ids      *identities
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
		js:       o.JS,
		batch:    o.Batch,
		log:      o.Logger.With("stage", topology.StageEnricher),
		metrics:  newMetrics(o.Registerer),
		progress: stage.NewProgress(topology.StageEnricher, o.Registerer, o.Logger),
		ids:      newIdentities(),
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
	loaded := make(chan struct{})
	var loadOnce sync.Once
	// A watch that breaks (its consumer lost with a server, and not
	// recreated) is started again: the identities already known stay.
	go func() {
		for ctx.Err() == nil {
			err := e.ids.watch(ctx, kv, func() { loadOnce.Do(func() { close(loaded) }) }, appeared)
			if ctx.Err() != nil {
				return
			}
			e.log.Warn("watching identities failed; watching again", "error", err)
			_ = wait.For(ctx, time.Second)
		}
	}()
	select {
	case <-loaded:
	case <-ctx.Done():
		return nil
	}
	e.log.Info("identities loaded", "count", e.ids.len())

	cons, err := topology.AwaitConsumer(ctx, e.log, e.js, topology.StreamRaw, topology.EnricherConsumer())
	if err != nil {
		return err
	}
	go e.resolveLoop(ctx, appeared)
	stage.KeepAligned(ctx, e.js, topology.StreamRaw, topology.EnricherConsumer(), 5*time.Second, e.log)
	go e.metrics.lag.Track(ctx, cons, 5*time.Second, e.progress)
	stage.Consume(ctx, cons, e.handle, stage.Options{
		Stage:        topology.StageEnricher,
		DLQ:          dlq.Publisher{JS: e.js, Stage: topology.StageEnricher},
		Batch:        e.batch,
		Progress:     e.progress,
		Conn:         e.js.Conn(),
		DeadLettered: func(reason string) { e.metrics.dlq.WithLabelValues(topology.StageEnricher, reason).Inc() },
		Logger:       e.log,
	})
	return nil
}

// handle enriches a batch: every publish goes out at once, and a raw
// incident is done once all its enriched copies are stored.
func (e *Enricher) handle(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
	out := make([]stage.Outcome, len(msgs))
	var pubs []*nats.Msg
	var owner []int // owner[j]: the index in msgs that pubs[j] enriches
	for i, m := range msgs {
		ms, o := e.enrich(m)
		out[i] = o
		for _, pm := range ms {
			pubs = append(pubs, pm)
			owner = append(owner, i)
		}
	}
	res, _ := stage.PublishAtomic(ctx, e.js, pubs)
	for j, r := range res {
		i := owner[j]
		switch {
		case r.Err == nil || out[i].Verdict != stage.Ack:
		case stage.OwnFault(r.Err):
			out[i] = stage.Failed(r.Err)
		default:
			out[i] = stage.Retried(r.Err)
		}
	}
	return out
}

// enrich returns the messages that enrich one raw incident, or the outcome
// of one that cannot be enriched.
func (e *Enricher) enrich(m jetstream.Msg) ([]*nats.Msg, stage.Outcome) {
	id := m.Headers().Get(topology.HeaderMsgID)
	env, in, err := attribute(m.Subject(), m.Data(), id, e.ids)
	if err != nil {
		return nil, stage.Rejected(string(env.Type), env.ID, err)
	}
	outcome := "attributed"
	if env.EmployeeID == "" {
		outcome = "unattributed"
	}
	e.metrics.enriched.WithLabelValues(string(env.Type), outcome).Inc()
	msg, err := enrichedMsg(env, false)
	if err != nil {
		return nil, stage.Failed(err)
	}
	msgs := []*nats.Msg{msg}
	// The identity may have appeared while this was in flight, after the
	// resolver scanned for it: resolve here too; the message id dedups.
	if env.EmployeeID == "" {
		if emp, ok := e.ids.lookup(in.Identity.IP); ok {
			env.EmployeeID = emp
			if msg, err = enrichedMsg(env, true); err != nil {
				return nil, stage.Failed(err)
			}
			msgs = append(msgs, msg)
		}
	}
	return msgs, stage.Done()
}

// attribute decodes a raw incident read from subject, whose id the
// producers computed (id; computed here when empty), and resolves its
// employee: directly, or through ids; EmployeeID stays empty for an IP that
// no identity covers. The error is an *incident.InvalidError.
func attribute(subject string, data []byte, id string, ids *identities) (envelope.Enriched, incident.Incident, error) {
	t, err := topology.TypeOfRawSubject(subject)
	if err != nil {
		return envelope.Enriched{}, incident.Incident{}, &incident.InvalidError{Reason: incident.ReasonUnknownType, Detail: err.Error()}
	}
	in, err := incident.DecodeWithID(t, data, id)
	if err != nil {
		if id == "" {
			id = incident.ID(t, data)
		}
		return envelope.Enriched{ID: id, Type: t, Incident: data}, in, err
	}
	env := envelope.Enriched{ID: in.ID, Type: t, Incident: data}
	if !in.Identity.IsIP() {
		env.EmployeeID = in.Identity.EmployeeID
		return env, in, nil
	}
	env.IP = in.Identity.IP.String()
	env.EmployeeID, _ = ids.lookup(in.Identity.IP)
	return env, in, nil
}

// enrichedMsg is the message of an enriched incident: attributed to its
// employee's subject, unattributed (and resolutions of unattributed ones) to
// its IP's subject.
func enrichedMsg(env envelope.Enriched, resolution bool) (*nats.Msg, error) {
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
	return msg, nil
}
