package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// atomicInFlight is how many batches are sent before their commits are
// awaited: the server allows 50 in flight per stream, shared by every
// publisher.
const atomicInFlight = 4

// PublishAtomic publishes msgs, all to one stream, in atomic batches of at
// most topology.BatchMax messages: a batch is stored whole or not at all,
// and JetStream fsyncs it once where it fsyncs every message published
// alone (when it syncs always). The result is PublishAll's: one entry per
// message, in order, and the failures joined in err.
//
// A batch the server refuses as a whole (one of its messages is already
// stored, the stream does not allow batches, a message was lost on the
// way) is published again one message at a time by PublishAll, which
// reports each message's own fate: its de-duplication, or its own fault.
// Only a commit that is never answered fails the call: whether that batch
// was stored is unknown, and publishing it again is safe when the messages
// carry Nats-Msg-Id.
func PublishAtomic(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg) ([]Published, error) {
	res := make([]Published, len(msgs))
	if len(msgs) == 0 {
		return res, nil
	}
	nc := js.Conn()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox + ".*")
	if err != nil {
		return fill(res, []error{fmt.Errorf("publishing a batch: %w", err)}), err
	}
	defer func() { _ = sub.Unsubscribe() }()
	var errs []error
	for start := 0; start < len(msgs) && len(errs) == 0; {
		var group []sentBatch
		for len(group) < atomicInFlight && start < len(msgs) {
			end := min(start+topology.BatchMax, len(msgs))
			b := sentBatch{first: start, msgs: msgs[start:end], reply: inbox + "." + strconv.Itoa(len(group))}
			b.sent = sendBatch(nc, b.msgs, b.reply)
			group = append(group, b)
			start = end
		}
		acks, err := awaitCommits(ctx, nc, sub, len(group))
		if err != nil {
			errs = append(errs, err)
			break
		}
		for _, b := range group {
			ack := acks[b.reply]
			if b.sent && ack.Error == nil && ack.Count == len(b.msgs) {
				for j := range b.msgs {
					res[b.first+j].Ack = &jetstream.PubAck{Stream: ack.Stream, Domain: ack.Domain,
						Sequence: ack.Sequence - uint64(len(b.msgs)-1-j)}
				}
				continue
			}
			if len(errs) > 0 {
				continue // left to fill
			}
			// Refused as a whole: nothing of it is stored.
			one, err := PublishAll(ctx, js, b.msgs)
			copy(res[b.first:], one)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		return res, nil
	}
	return fill(res, errs), summary(errs)
}

// sentBatch is one batch on its way: where its messages start in the
// caller's slice, and the subject its commit is answered on.
type sentBatch struct {
	first int
	msgs  []*nats.Msg
	reply string
	sent  bool // every message went out; else it was abandoned
}

// sendBatch sends msgs as one batch, the last with the commit and reply. A
// message the connection refuses (too large, a bad subject) abandons the
// batch, so that the server drops what it staged at once; it reports
// whether the whole batch went out.
func sendBatch(nc *nats.Conn, msgs []*nats.Msg, reply string) bool {
	id := nuid.Next()
	for i, m := range msgs {
		h := nats.Header{}
		maps.Copy(h, m.Header)
		h.Set(topology.HeaderBatchID, id)
		h.Set(topology.HeaderBatchSequence, strconv.Itoa(i+1))
		out := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: h}
		if i == len(msgs)-1 {
			h.Set(topology.HeaderBatchCommit, topology.BatchCommit)
			out.Reply = reply
		}
		if err := nc.PublishMsg(out); err != nil {
			abandon := nats.Header{}
			abandon.Set(topology.HeaderBatchID, id)
			abandon.Set(topology.HeaderBatchSequence, strconv.Itoa(i+1))
			abandon.Set(topology.HeaderBatchCommit, topology.BatchAbandon)
			_ = nc.PublishMsg(&nats.Msg{Subject: msgs[0].Subject, Header: abandon, Reply: reply})
			return false
		}
	}
	return true
}

// batchAck is the server's answer to a batch's commit.
type batchAck struct {
	Stream   string              `json:"stream"`
	Sequence uint64              `json:"seq"`
	Domain   string              `json:"domain,omitempty"`
	Count    int                 `json:"count"`
	Error    *jetstream.APIError `json:"error,omitempty"`
}

// commitTimeout bounds the wait for a batch's commit to be answered: a
// batch is one write and one fsync, and a commit sent while its stream
// elects a leader is never answered (publishing again is safe).
const commitTimeout = 5 * time.Second

// awaitCommits collects n commit answers by reply subject, waiting at most
// commitTimeout.
func awaitCommits(ctx context.Context, nc *nats.Conn, sub *nats.Subscription, n int) (map[string]batchAck, error) {
	ctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, fmt.Errorf("publishing a batch: %w", err)
	}
	acks := make(map[string]batchAck, n)
	reconnects := nc.Stats().Reconnects
	for len(acks) < n {
		wait, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		m, err := sub.NextMsgWithContext(wait)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// An answer the server owed before the connection moved to
			// another server never comes: say so now, not at the timeout.
			if nc.Stats().Reconnects != reconnects {
				return nil, errors.New("publishing a batch: the connection moved to another server before the commit was acknowledged")
			}
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("publishing a batch: no commit acknowledged within %s", commitTimeout)
		}
		if err != nil {
			return nil, fmt.Errorf("publishing a batch: %w", err)
		}
		var a batchAck
		if err := json.Unmarshal(m.Data, &a); err != nil {
			a.Error = &jetstream.APIError{Description: "unreadable commit answer: " + err.Error()}
		}
		acks[m.Subject] = a
	}
	return acks, nil
}
