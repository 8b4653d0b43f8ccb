package stage

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/wait"
)

// Pull requests last pullExpiry and the server sends a heartbeat every
// pullHeartbeat while one waits: a pull lost on a server cut off from its
// cluster (its clients still reach it, so the connection looks healthy) is
// noticed after two missed heartbeats, not after nats.go's default 30 s.
const (
	pullExpiry    = 10 * time.Second
	pullHeartbeat = 2 * time.Second
	probeTimeout  = 3 * time.Second
)

// pullBatches pulls from a durable consumer and hands handle whatever has
// arrived, up to batch messages at a time, until ctx ends. It never waits
// for a batch to fill: one message is handled as soon as it arrives, many
// are handled together, so both freshness and throughput hold. Failures
// (a deleted consumer during a rebuild, a lost connection, missed
// heartbeats) are logged and pulling starts again after a second; when the
// consumer's leader does not even answer any more over a connection to a
// cluster that looks healthy, nc (when set) is made to reconnect, to
// another server of the cluster.
//
// stuck, when set, says that work waits and none arrived for a while: a
// pull that nats.go lost without noticing (heartbeats stopped being watched
// across a quick reconnect) is then started again.
func pullBatches(ctx context.Context, cons jetstream.Consumer, nc *nats.Conn, batch int, stuck func() bool, log *slog.Logger, handle func([]jetstream.Msg)) {
	for ctx.Err() == nil {
		err := pull(ctx, cons, batch, stuck, handle)
		if ctx.Err() != nil {
			return
		}
		log.Warn("pulling messages failed; starting again", "error", err)
		if nc != nil && nc.IsConnected() && nc.ConnectedClusterName() != "" && !reachable(ctx, cons) {
			log.Warn("the consumer cannot be read over this connection; reconnecting", "server", nc.ConnectedServerName())
			if err := nc.ForceReconnect(); err != nil {
				log.Warn("reconnecting failed", "error", err)
			}
		}
		_ = wait.For(ctx, time.Second)
	}
}

// reachable reports whether the consumer's leader answers over this
// connection: with its state, or with an error of its own (a consumer
// deleted by an operator is there to be created again, not a reason to
// move to another server).
func reachable(ctx context.Context, cons jetstream.Consumer) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := cons.Info(ctx)
	var apiErr *jetstream.APIError
	switch {
	case err == nil, errors.As(err, &apiErr), errors.Is(err, jetstream.ErrConsumerNotFound):
		return true
	}
	return ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// errNothingArrives restarts a pull that delivers nothing while work waits.
var errNothingArrives = errors.New("work waits and nothing arrives: pulling again")

func pull(ctx context.Context, cons jetstream.Consumer, batch int, stuck func() bool, handle func([]jetstream.Msg)) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(2*batch), jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat), jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return err
	}
	defer it.Stop()
	// Waits are bounded, so that a stuck pull is seen; the end of ctx ends
	// the wait at once.
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	msgs := make([]jetstream.Msg, 0, batch)
	for {
		m, err := it.Next(jetstream.NextMaxWait(pullExpiry))
		if errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			if stuck != nil && stuck() {
				return errNothingArrives
			}
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		msgs = append(msgs[:0], m)
		// Take what else is already here, without waiting for more.
		for len(msgs) < batch {
			m, err := it.Next(jetstream.NextMaxWait(time.Millisecond))
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return err
			}
			if err != nil {
				break
			}
			msgs = append(msgs, m)
		}
		handle(msgs)
	}
}
