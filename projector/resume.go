package projector

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// resumeEvery is how often a projector looks for a rebuild that died.
const resumeEvery = 5 * time.Second

// resumeRebuilds runs again, until ctx ends, any rebuild that stopped
// half-way (killed, its machine's power cut): such a rebuild leaves the
// view emptied and part refilled, and its marker's lease runs out. One
// projector takes the marker over by compare-and-set and rebuilds; the
// others see the renewed lease.
func (p *Projector) resumeRebuilds(ctx context.Context, kv jetstream.KeyValue) {
	t := time.NewTicker(resumeEvery)
	defer t.Stop()
	for {
		if err := p.resumeRebuild(ctx, kv); err != nil && ctx.Err() == nil {
			p.log.Error("running a rebuild that stopped half-way failed; will try again", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// resumeRebuild runs the rebuild again when its marker has expired.
func (p *Projector) resumeRebuild(ctx context.Context, kv jetstream.KeyValue) error {
	e, err := kv.Get(ctx, topology.RebuildKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	until, err := time.Parse(time.RFC3339, string(e.Value()))
	if err == nil && time.Now().Before(until) {
		return nil // running, or not yet known to have died
	}
	if _, err := kv.Update(ctx, topology.RebuildKey, []byte(rebuildUntil(RebuildLease)), e.Revision()); err != nil {
		return nil // another projector took it over
	}
	p.log.Warn("a rebuild of the view stopped half-way; running it again", "marker_until", string(e.Value()))
	if err := Rebuild(ctx, p.js, RebuildOptions{Projector: Options{Logger: p.log}}); err != nil {
		return err
	}
	p.log.Info("the rebuild that stopped half-way is done")
	return nil
}
