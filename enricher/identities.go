package enricher

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// identities is the IDENTITIES bucket watched into memory.
type identities struct {
	mu sync.RWMutex
	m  map[netip.Addr]string
}

func newIdentities() *identities { return &identities{m: map[netip.Addr]string{}} }

func (ids *identities) lookup(ip netip.Addr) (string, bool) {
	ids.mu.RLock()
	defer ids.mu.RUnlock()
	emp, ok := ids.m[ip]
	return emp, ok
}

func (ids *identities) len() int {
	ids.mu.RLock()
	defer ids.mu.RUnlock()
	return len(ids.m)
}

// watch keeps the map current. It closes loaded after the initial values and
// then signals appeared (without blocking) whenever an identity is put.
func (ids *identities) watch(ctx context.Context, kv jetstream.KeyValue, loaded func(), appeared chan<- struct{}) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watching %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watching %s: watcher closed", kv.Bucket())
			}
			if e == nil {
				// A watcher that recovers from a lost consumer may mark the
				// end of the initial values again.
				if initial {
					initial = false
					loaded()
				}
				continue
			}
			ip, err := incident.ParseIPKey(e.Key())
			if err != nil {
				continue // not an identity key; nothing to resolve with it
			}
			if e.Operation() != jetstream.KeyValuePut {
				ids.mu.Lock()
				delete(ids.m, ip)
				ids.mu.Unlock()
				continue
			}
			emp, err := incident.ParseEmployeeID(string(e.Value()))
			if err != nil {
				continue
			}
			ids.mu.Lock()
			ids.m[ip] = emp
			ids.mu.Unlock()
			if !initial {
				select {
				case appeared <- struct{}{}:
				default:
				}
			}
		}
	}
}
