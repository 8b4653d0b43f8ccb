package projector

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// ErrNoDocument is an employee without incidents in the view.
var ErrNoDocument = errors.New("no incidents for this employee")

// Document returns one employee's document as GET /incidents/{id} shows
// it, read from INCIDENT_VIEW: the manifest, then its pieces (unless they
// are inline). A piece removed meanwhile (a writer replaced the manifest)
// starts the read over, so the answer is always one whole version of the
// document.
func Document(ctx context.Context, js jetstream.JetStream, employee string) ([]byte, error) {
	employee, err := incident.ParseEmployeeID(employee)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", employee, err)
	}
	kv, err := js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", topology.BucketView, err)
	}
	doc, _, err := documentAt(ctx, kv, employee)
	return doc, err
}

// documentAt is Document of the document stored under key, as it is spelt,
// with the manifest it was read by (nil for a whole document of an earlier
// version).
func documentAt(ctx context.Context, kv jetstream.KeyValue, employee string) ([]byte, *view.Manifest, error) {
	for range 20 {
		entry, err := kv.Get(ctx, employee)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil, ErrNoDocument
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", employee, err)
		}
		if !view.IsManifest(entry.Value()) {
			return entry.Value(), nil, nil // a whole document of an earlier version
		}
		m, err := view.ParseManifest(entry.Value())
		if err != nil {
			return nil, nil, err
		}
		frags := map[string][]byte{}
		missing := false
		for _, r := range m.Pieces {
			if r.Inline() {
				continue
			}
			e, err := kv.Get(ctx, r.Key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				missing = true
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("reading %s: %w", r.Key, err)
			}
			if frags[r.Key], err = view.PieceIncidents(e.Value()); err != nil {
				return nil, nil, err
			}
		}
		if missing {
			continue // replaced meanwhile: read the new manifest
		}
		doc, err := view.Assemble(m, func(k string) ([]byte, bool) { b, ok := frags[k]; return b, ok })
		return doc, m, err
	}
	return nil, nil, fmt.Errorf("reading %s: the document kept changing while read", employee)
}
