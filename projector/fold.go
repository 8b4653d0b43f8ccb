package projector

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

type opKind int

const (
	opEmployee     opKind = iota // add to an employee's document
	opUnattributed               // keep as unattributed under its IP
	opAttributed                 // remove from its IP's unattributed document for good
)

type op struct {
	kind opKind
	in   incident.Incident
}

// plan is every change of a batch to one document.
type plan struct {
	key string
	ops []op
}

// maxConflicts bounds the compare-and-set retries of one write.
const maxConflicts = 50

// apply folds a plan into its document with compare-and-set, re-reading
// and re-folding on a conflict with another writer: an employee's pieces,
// or an IP's unattributed document.
func (p *Projector) apply(ctx context.Context, kv jetstream.KeyValue, pl *plan) error {
	if !strings.HasPrefix(pl.key, topology.UnattributedPrefix) {
		return p.applyEmployee(ctx, kv, pl)
	}
	for range maxConflicts {
		var data []byte
		var rev uint64
		entry, err := kv.Get(ctx, pl.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("reading view %s: %w", pl.key, err)
		default:
			data, rev = entry.Value(), entry.Revision()
		}
		out, added, err := foldUnattributed(pl, data)
		if err != nil {
			return err
		}
		if out == nil {
			p.metrics.projected.WithLabelValues("duplicate").Add(float64(len(pl.ops)))
			return nil
		}
		if rev == 0 {
			_, err = kv.Create(ctx, pl.key, out)
		} else {
			_, err = kv.Update(ctx, pl.key, out, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			p.metrics.conflicts.Inc()
			continue
		}
		if err != nil {
			return fmt.Errorf("writing view %s: %w", pl.key, err)
		}
		p.metrics.projected.WithLabelValues("added").Add(float64(added))
		p.metrics.projected.WithLabelValues("duplicate").Add(float64(len(pl.ops) - added))
		return nil
	}
	return fmt.Errorf("writing view %s: still conflicting after %d tries", pl.key, maxConflicts)
}

// applyEmployee folds a plan into an employee's pieces, trying again from
// the manifest when another writer changed it first.
func (p *Projector) applyEmployee(ctx context.Context, kv jetstream.KeyValue, pl *plan) error {
	return p.foldEntries(ctx, kv, pl.key, entriesOf(pl))
}

// foldEntries folds entries into employee's document, again while another
// writer's change comes first.
func (p *Projector) foldEntries(ctx context.Context, kv jetstream.KeyValue, employee string, entries []view.Entry) error {
	for range maxConflicts {
		added, err := p.pieces.fold(ctx, p.js, kv, employee, entries)
		if errors.Is(err, errConflict) {
			p.metrics.conflicts.Inc()
			continue
		}
		if err != nil {
			return err
		}
		p.metrics.projected.WithLabelValues("added").Add(float64(added))
		p.metrics.projected.WithLabelValues("duplicate").Add(float64(len(entries) - added))
		return nil
	}
	return fmt.Errorf("writing view %s: still conflicting after %d tries", employee, maxConflicts)
}

// foldUnattributed applies a plan to an IP's stored unattributed document
// (nil: none yet) and returns the new document, or nil when nothing
// changed, and how many incidents it added.
func foldUnattributed(pl *plan, data []byte) ([]byte, int, error) {
	doc := &view.Unattributed{}
	if data != nil {
		var err error
		if doc, err = view.ParseUnattributed(data); err != nil {
			return nil, 0, fmt.Errorf("view %s: %w", pl.key, err)
		}
	}
	changed, added := false, 0
	for _, o := range pl.ops {
		switch o.kind {
		case opUnattributed:
			if doc.Add(o.in) {
				changed = true
				added++
			}
		case opAttributed:
			changed = doc.MarkAttributed(o.in.ID) || changed
		}
	}
	if !changed {
		return nil, 0, nil
	}
	out, err := doc.MarshalJSON()
	return out, added, err
}

// entriesOf returns the view entries of an employee plan's incidents.
func entriesOf(pl *plan) []view.Entry {
	entries := make([]view.Entry, len(pl.ops))
	for i, o := range pl.ops {
		entries[i] = view.EntryOf(o.in)
	}
	return entries
}
