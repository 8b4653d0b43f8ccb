package enricher

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/envelope"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// resolveLoop attributes pending unattributed incidents: once at start, and
// again whenever identities appear (coalesced: one pass for many).
func (e *Enricher) resolveLoop(ctx context.Context, appeared <-chan struct{}) {
	for {
		if n, err := e.ResolvePending(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			e.progress.Stalled(fmt.Errorf("resolving unattributed incidents: %w", err))
			_ = wait.For(ctx, 2*time.Second)
			continue
		} else if n > 0 {
			e.progress.OK()
			e.log.Info("attributed pending incidents", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-appeared:
		}
	}
}

// ResolvePending publishes a resolution for every unattributed incident
// whose IP now has an identity, and returns how many it resolved. An
// unattributed incident is pending until a resolution for it is stored.
func (e *Enricher) ResolvePending(ctx context.Context) (int, error) {
	unresolved := map[string]envelope.Enriched{}
	resolved := map[string]bool{}
	_, err := natsutil.ReadAll(ctx, e.js, topology.StreamEnriched, natsutil.ReadOptions{Filter: topology.UnattributedSubjects},
		func(m jetstream.Msg) error {
			env, _, err := envelope.Decode(m.Data())
			switch {
			case err != nil: // the projector dead-letters it
			case env.EmployeeID != "":
				resolved[env.ID] = true
			default:
				unresolved[env.ID] = env
			}
			return nil
		})
	if err != nil {
		return 0, err
	}
	var msgs []*nats.Msg
	for id, env := range unresolved {
		ip, ok := env.Addr()
		if resolved[id] || !ok {
			continue
		}
		emp, ok := e.ids.lookup(ip)
		if !ok {
			continue
		}
		env.EmployeeID = emp
		msg, err := enrichedMsg(env, true)
		if err != nil {
			return 0, err
		}
		msgs = append(msgs, msg)
	}
	if _, err := stage.PublishAtomic(ctx, e.js, msgs); err != nil {
		return 0, err
	}
	e.metrics.reattributed.Add(float64(len(msgs)))
	return len(msgs), nil
}
