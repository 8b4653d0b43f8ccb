package stage_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

func rawMsgs(ids ...string) []*nats.Msg {
	msgs := make([]*nats.Msg, len(ids))
	for i, id := range ids {
		msgs[i] = &nats.Msg{Subject: topology.RawSubject("misuse"), Data: []byte("incident " + id),
			Header: nats.Header{topology.HeaderMsgID: {id}}}
	}
	return msgs
}

func numbered(from, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(from + i)
	}
	return ids
}

// TestPublishAtomic publishes to INCIDENTS_RAW as the producers do and
// checks each message's acknowledgement against what the stream holds: the
// message at the acknowledged sequence is that message, and it went in a
// batch unless the case expects one at a time.
func TestPublishAtomic(t *testing.T) {
	big := make([]byte, embedded.MaxPayload+1)
	tests := []struct {
		name       string
		stored     []string // published one at a time before
		atomicOff  bool     // the stream does not allow batches (made before they existed)
		msgs       []*nats.Msg
		duplicates map[int]bool
		ownFault   map[int]bool
		batched    bool // the new messages went in batches
	}{
		{name: "three batches, the last short", msgs: rawMsgs(numbered(0, 2*topology.BatchMax+17)...), batched: true},
		{name: "one message", msgs: rawMsgs("only"), batched: true},
		{name: "one already stored: its batch goes one at a time", stored: []string{"5"},
			msgs: rawMsgs(numbered(0, 10)...), duplicates: map[int]bool{5: true}},
		{name: "the stream does not allow batches", atomicOff: true, msgs: rawMsgs(numbered(0, 20)...)},
		{name: "one too large for NATS costs only itself",
			msgs:     append(rawMsgs("a", "b"), append([]*nats.Msg{{Subject: topology.RawSubject("misuse"), Data: big, Header: nats.Header{topology.HeaderMsgID: {"big"}}}}, rawMsgs("c")...)...),
			ownFault: map[int]bool{2: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, js := testkit.Connect(t, testkit.JetStream(t))
			if err := topology.Ensure(ctx, js, topology.DefaultOptions()); err != nil {
				t.Fatal(err)
			}
			if tc.atomicOff {
				cfg := topology.Streams(topology.DefaultOptions())[0]
				cfg.AllowAtomicPublish = false
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range tc.stored {
				if _, err := js.PublishMsg(ctx, rawMsgs(id)[0]); err != nil {
					t.Fatal(err)
				}
			}
			res, err := stage.PublishAtomic(ctx, js, tc.msgs)
			if len(tc.ownFault) == 0 && err != nil {
				t.Fatalf("PublishAtomic: %v", err)
			}
			if len(res) != len(tc.msgs) {
				t.Fatalf("%d results for %d messages", len(res), len(tc.msgs))
			}
			stream, err := js.Stream(ctx, topology.StreamRaw)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if tc.ownFault[i] {
					if r.Err == nil || !stage.OwnFault(r.Err) {
						t.Errorf("message %d: error %v, want its own fault", i, r.Err)
					}
					continue
				}
				if r.Err != nil || r.Ack == nil {
					t.Fatalf("message %d: not stored: %v", i, r.Err)
				}
				if r.Ack.Duplicate != tc.duplicates[i] {
					t.Errorf("message %d: duplicate %v, want %v", i, r.Ack.Duplicate, tc.duplicates[i])
				}
				m, err := stream.GetMsg(ctx, r.Ack.Sequence)
				if err != nil {
					t.Fatalf("message %d at %d: %v", i, r.Ack.Sequence, err)
				}
				if got, want := m.Header.Get(topology.HeaderMsgID), tc.msgs[i].Header.Get(topology.HeaderMsgID); got != want {
					t.Fatalf("message %d: sequence %d holds %q, want %q", i, r.Ack.Sequence, got, want)
				}
				if inBatch := m.Header.Get(topology.HeaderBatchID) != ""; inBatch != tc.batched && !r.Ack.Duplicate {
					t.Errorf("message %d: stored in a batch %v, want %v", i, inBatch, tc.batched)
				}
			}
			want := uint64(len(tc.msgs) - len(tc.ownFault) + len(tc.stored) - len(tc.duplicates))
			if got := testkit.StreamMsgs(t, js, topology.StreamRaw); got != want {
				t.Errorf("stream holds %d messages, want %d", got, want)
			}
		})
	}
}

// TestPublishAtomicFailsWithoutServer: a commit never answered is an
// infrastructure failure of every message, not a silent success.
func TestPublishAtomicFailsWithoutServer(t *testing.T) {
	s := testkit.JetStream(t)
	_, js := testkit.Connect(t, s)
	if err := topology.Ensure(context.Background(), js, topology.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	res, err := stage.PublishAtomic(ctx, js, rawMsgs(numbered(0, 5)...))
	if err == nil {
		t.Fatal("PublishAtomic succeeded with the server down")
	}
	for i, r := range res {
		if r.Ack != nil || r.Err == nil || stage.OwnFault(r.Err) {
			t.Errorf("message %d: ack %v, error %v; want an infrastructure error", i, r.Ack, r.Err)
		}
	}
}
