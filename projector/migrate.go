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

// migrateKeys files every document an earlier version stored under an
// employee id spelt otherwise ("0042") under its canonical key ("42"),
// folded into what is there (folding is idempotent), then removes it; once
// done the view is marked, so that later starts do not look again.
func (p *Projector) migrateKeys(ctx context.Context, kv jetstream.KeyValue) error {
	if _, err := kv.Get(ctx, topology.CanonicalKeysKey); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("reading %s: %w", topology.CanonicalKeysKey, err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("listing the view's keys: %w", err)
	}
	var stray []string
	for key := range lister.Keys() {
		if c, err := incident.ParseEmployeeID(key); err == nil && c != key {
			stray = append(stray, key)
		}
	}
	for _, key := range stray {
		if err := p.migrateKey(ctx, kv, key); err != nil {
			return fmt.Errorf("migrating %q to its canonical key: %w", key, err)
		}
	}
	if _, err := kv.PutString(ctx, topology.CanonicalKeysKey, "1"); err != nil {
		return fmt.Errorf("marking the view's keys canonical: %w", err)
	}
	if len(stray) > 0 {
		p.log.Info("employee documents moved to their canonical keys", "documents", len(stray))
	}
	return nil
}

// migrateKey folds the document under key into its canonical key's, then
// removes it and its pieces.
func (p *Projector) migrateKey(ctx context.Context, kv jetstream.KeyValue, key string) error {
	canonical, _ := incident.ParseEmployeeID(key)
	doc, m, err := documentAt(ctx, kv, key)
	if errors.Is(err, ErrNoDocument) {
		return nil // another projector moved it
	}
	if err != nil {
		return err
	}
	emp, err := view.ParseEmployee(doc)
	if err != nil {
		return err
	}
	var entries []view.Entry
	for prio, list := range emp.Buckets {
		for _, e := range list {
			e.Priority = prio
			entries = append(entries, e)
		}
	}
	if err := p.foldEntries(ctx, kv, canonical, entries); err != nil {
		return err
	}
	if m != nil {
		for _, r := range m.Pieces {
			if !r.Inline() {
				if err := kv.Purge(ctx, r.Key); err != nil {
					return fmt.Errorf("removing piece %s: %w", r.Key, err)
				}
			}
		}
	}
	if err := kv.Purge(ctx, key); err != nil {
		return fmt.Errorf("removing %q: %w", key, err)
	}
	return nil
}
