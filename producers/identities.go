package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// SyncResult says what one identities sync did.
type SyncResult struct {
	Fetched, Invalid, Put, Deleted int
}

// ErrEmptyIdentities is returned when the upstream answers no valid
// identity at all: taken as an upstream fault, it never wipes the bucket.
var ErrEmptyIdentities = errors.New("upstream returned no valid identity; IDENTITIES left as it was")

// SyncIdentities copies the upstream identities into IDENTITIES: changed
// keys put, vanished keys deleted. Entries whose IP or employee id is invalid
// are skipped and counted.
func (p *Producers) SyncIdentities(ctx context.Context) (SyncResult, error) {
	start := time.Now()
	raw, err := p.up.Identities(ctx)
	if err != nil {
		p.metrics.polls.WithLabelValues(upstream.EndpointIdentities, "error").Inc()
		return SyncResult{}, err
	}
	res := SyncResult{Fetched: len(raw)}
	want := make(map[string]string, len(raw))
	for ipText, v := range raw {
		ip, err1 := incident.ParseIP(ipText)
		emp, err2 := employeeOf(v)
		if err1 != nil || err2 != nil {
			res.Invalid++
			continue
		}
		want[topology.IdentityKey(ip)] = emp
	}
	p.metrics.invalidIdentities.Set(float64(res.Invalid))
	if len(want) == 0 {
		p.metrics.polls.WithLabelValues(upstream.EndpointIdentities, "error").Inc()
		return res, ErrEmptyIdentities
	}
	kv, err := p.js.KeyValue(ctx, topology.BucketIdentities)
	if err != nil {
		return res, fmt.Errorf("opening %s: %w", topology.BucketIdentities, err)
	}
	have, err := readBucket(ctx, kv)
	if err != nil {
		return res, err
	}
	var puts []rawIncident
	for k, v := range want {
		if have[k] != v {
			puts = append(puts, rawIncident{id: k, data: []byte(v)})
		}
	}
	n, err := putAll(ctx, p.js, topology.BucketIdentities, puts)
	res.Put = n
	if err != nil {
		p.progress.Stalled(err)
		return res, fmt.Errorf("%w: identities: %w", errPublishing, err)
	}
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := kv.Delete(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return res, fmt.Errorf("deleting identity %s: %w", k, err)
		}
		res.Deleted++
	}
	p.metrics.polls.WithLabelValues(upstream.EndpointIdentities, "ok").Inc()
	p.metrics.lastSuccess.WithLabelValues(upstream.EndpointIdentities).SetToCurrentTime()
	p.log.Info("synced identities", "count", res.Fetched, "invalid", res.Invalid, "put", res.Put, "deleted", res.Deleted,
		"duration", time.Since(start).Round(time.Millisecond).String())
	return res, nil
}

// employeeOf reads an employee id given as a JSON integer or digit string.
func employeeOf(v json.RawMessage) (string, error) {
	s := strings.TrimSpace(string(v))
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(v, &s); err != nil {
			return "", err
		}
	}
	return incident.ParseEmployeeID(s)
}

// readBucket returns every key and value of kv.
func readBucket(ctx context.Context, kv jetstream.KeyValue) (map[string]string, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	m := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("reading %s: watcher closed", kv.Bucket())
			}
			if e == nil { // initial values done
				return m, nil
			}
			m[e.Key()] = string(e.Value())
		}
	}
}
