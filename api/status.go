package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// pipelineStatus is what GET /status shows: the pipeline's health as the
// console's strip shows it. Read from NATS every statusEvery, never per
// request.
type pipelineStatus struct {
	Version      string           `json:"version"`
	Updated      string           `json:"updated,omitempty"` // when the served view last changed (RFC 3339)
	Employees    int              `json:"employees"`
	Unattributed int              `json:"unattributed"`
	Lag          map[string]int64 `json:"lag"` // per stage; -1 when unknown
	DeadLetters  int64            `json:"dead_letters"`
	Checked      string           `json:"checked,omitempty"` // when lag and DLQ were read
	// Stuck names the upstream endpoints whose polls cannot advance, and
	// why; only where the producers run in the API's process.
	Stuck map[string]string `json:"stuck,omitempty"`
}

// statusEvery is how often the pipeline's health is read from NATS.
const statusEvery = 5 * time.Second

// nats-side figures, refreshed by watchStatus.
type natsStatus struct {
	lag     map[string]int64
	dlq     int64
	checked time.Time
}

// watchStatus reads the stages' lag and the DLQ's size until ctx ends.
func (a *API) watchStatus(ctx context.Context, into *atomic.Pointer[natsStatus]) {
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		st := &natsStatus{lag: map[string]int64{}, dlq: -1, checked: time.Now()}
		rctx, cancel := context.WithTimeout(ctx, statusEvery)
		for stage, where := range map[string][2]string{
			topology.StageEnricher:  {topology.StreamRaw, topology.ConsumerEnricher},
			topology.StageProjector: {topology.StreamEnriched, topology.ConsumerProjector},
		} {
			st.lag[stage] = -1
			if c, err := a.js.Consumer(rctx, where[0], where[1]); err == nil {
				if info, err := c.Info(rctx); err == nil {
					st.lag[stage] = int64(info.NumPending) + int64(info.NumAckPending)
				}
			}
		}
		if s, err := a.js.Stream(rctx, topology.StreamDLQ); err == nil {
			if info, err := s.Info(rctx); err == nil {
				st.dlq = int64(info.State.Msgs)
			}
		}
		cancel()
		into.Store(st)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// status answers GET /status.
func (a *API) status(w http.ResponseWriter, r *http.Request) {
	snap := a.store.snap.Load()
	out := pipelineStatus{Version: strconv.FormatUint(snap.version, 10), Employees: len(snap.keys),
		Lag: map[string]int64{topology.StageEnricher: -1, topology.StageProjector: -1}, DeadLetters: -1}
	if !snap.updated.IsZero() {
		out.Updated = snap.updated.UTC().Format(time.RFC3339)
	}
	out.Unattributed = snap.unattributedCount
	if st := a.nats.Load(); st != nil {
		out.Lag, out.DeadLetters, out.Checked = st.lag, st.dlq, st.checked.UTC().Format(time.RFC3339)
	}
	if a.stuck != nil {
		out.Stuck = a.stuck()
	}
	b, _ := json.Marshal(out)
	serve(w, r, newBody(b))
}
