package stage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/natsutil"
)

// PublishTimeout bounds the wait for one window of acknowledgements; the
// JetStream context bounds each one too (natsutil.PublishTimeout).
const PublishTimeout = natsutil.PublishTimeout

// publishWindow is how many publishes are in flight at once.
const publishWindow = 512

// Published is the fate of one published message: its acknowledgement, or
// why it is not stored.
type Published struct {
	Ack *jetstream.PubAck
	Err error
}

// PublishAll publishes msgs asynchronously, at most publishWindow in flight,
// and waits for each acknowledgement, every wait bounded by ctx and
// PublishTimeout. The result has one entry per message, in order; err joins
// the failures (nil when every message is stored). A message refused for
// its own fault (OwnFault) costs only itself; past any other failure it
// stops sending at the end of the window, and the messages not sent carry
// the last error.
func PublishAll(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg) (res []Published, err error) {
	res = make([]Published, len(msgs))
	var errs []error
	timer := time.NewTimer(PublishTimeout)
	defer timer.Stop()
	sent, stop := 0, false
	for sent < len(msgs) && !stop {
		chunk := msgs[sent:min(sent+publishWindow, len(msgs))]
		futures := make([]jetstream.PubAckFuture, len(chunk))
		for i, m := range chunk {
			f, err := js.PublishMsgAsync(m)
			if err != nil {
				errs = append(errs, fmt.Errorf("publishing to %s: %w", m.Subject, err))
				res[sent+i].Err = errs[len(errs)-1]
				if stop = !OwnFault(err); stop {
					break
				}
				continue // the message's own fault: the others go on
			}
			futures[i] = f
		}
		timer.Reset(PublishTimeout)
		for i, f := range futures {
			if f == nil {
				continue
			}
			select {
			case ack := <-f.Ok():
				res[sent+i].Ack = ack
			case err := <-f.Err():
				res[sent+i].Err = fmt.Errorf("publishing to %s: %w", chunk[i].Subject, err)
				errs = append(errs, res[sent+i].Err)
				stop = stop || !OwnFault(err)
			case <-timer.C:
				errs = append(errs, fmt.Errorf("publishing to %s: no acknowledgement within %s", chunk[i].Subject, PublishTimeout))
				return fill(res, errs), summary(errs)
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("publishing: %w", ctx.Err()))
				return fill(res, errs), summary(errs)
			}
		}
		sent += len(chunk)
	}
	if len(errs) == 0 {
		return res, nil
	}
	return fill(res, errs), summary(errs)
}

// fill marks every message neither stored nor failed with the last error.
func fill(res []Published, errs []error) []Published {
	for i := range res {
		if res[i].Ack == nil && res[i].Err == nil {
			res[i].Err = errs[len(errs)-1]
		}
	}
	return res
}

func summary(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("%d publishes failed, the first: %w", len(errs), errs[0])
}

// OwnFault reports whether a publish failed for the message itself (too
// large, a subject NATS refuses) rather than for the infrastructure.
func OwnFault(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject)
}
