package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

func TestPublishAndReplay(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	p := dlq.Publisher{JS: js, Stage: topology.StageEnricher}
	// A long, multi-line, not-UTF-8 error still makes one bounded header.
	long := errors.New("line one\nline two\r\x00\xff" + strings.Repeat("é", 2000))
	letter := dlq.Letter{Type: "misuse", ID: "abc", Subject: topology.RawSubject("misuse"), Data: []byte(`{"x":1}`),
		Err: &incident.InvalidError{Reason: incident.ReasonMissingTimestamp, Detail: long.Error()}}
	for range 2 { // de-duplicated by id: stored once
		if err := p.Publish(ctx, letter); err != nil {
			t.Fatal(err)
		}
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 1 {
		t.Fatalf("DLQ holds %d letters, want 1", n)
	}
	s, _ := js.Stream(ctx, topology.StreamDLQ)
	m, err := s.GetLastMsgForSubject(ctx, topology.DLQSubject(topology.StageEnricher, "misuse"))
	if err != nil {
		t.Fatal(err)
	}
	h := m.Header
	if h.Get(topology.HeaderDLQReason) != "missing_timestamp" || h.Get(topology.HeaderDLQSubject) != "incidents.raw.misuse" {
		t.Errorf("headers %v", h)
	}
	e := h.Get(topology.HeaderDLQError)
	if strings.ContainsAny(e, "\r\n\x00") || !utf8.ValidString(e) || len(e) > 1100 || !strings.HasPrefix(e, "missing_timestamp: line one line two") {
		t.Errorf("error header %q", e)
	}
	// Replay sends it back to its subject and removes it from the DLQ.
	n, err := dlq.Replay(ctx, js, dlq.ReplayOptions{})
	if err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 0 {
		t.Errorf("DLQ holds %d letters after the replay", n)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 1 {
		t.Errorf("INCIDENTS_RAW holds %d after the replay, want the 1 replayed", n)
	}
}

func TestReasons(t *testing.T) {
	seen := map[incident.Reason]bool{}
	for _, r := range dlq.Reasons() {
		if seen[r] || r == "" || strings.ContainsAny(string(r), " .") {
			t.Errorf("reason %q repeated or not a token", r)
		}
		seen[r] = true
	}
	for _, want := range []incident.Reason{incident.ReasonInvalidUTF8, incident.ReasonTooDeep, dlq.ReasonRepeatedFailure, dlq.ReasonTooLarge} {
		if !seen[want] {
			t.Errorf("%s missing from Reasons", want)
		}
	}
}

// TestCutLetterReplayedFromItsSource: a message too large to be carried
// beside its letter's headers is dead-lettered all the same, keeping its
// beginning and where it came from; replay sends the original back whole,
// and refuses by name a cut letter whose original is gone.
func TestCutLetterReplayedFromItsSource(t *testing.T) {
	const maxPayload = 64 << 10
	_, js := testkit.Connect(t, testkit.JetStreamWith(t, embedded.Options{MaxPayload: maxPayload}))
	ctx := context.Background()
	subject := topology.RawSubject("misuse")
	publish := func(fill byte) ([]byte, uint64) {
		data := bytes.Repeat([]byte{fill}, maxPayload-200)
		ack, err := js.Publish(ctx, subject, data)
		if err != nil {
			t.Fatal(err)
		}
		return data, ack.Sequence
	}
	kept, keptSeq := publish('a')
	gone, goneSeq := publish('b')
	p := dlq.Publisher{JS: js, Stage: topology.StageEnricher}
	bad := &incident.InvalidError{Reason: incident.ReasonNotObject, Detail: strings.Repeat("x", 900)}
	for i, l := range []dlq.Letter{
		{Type: "misuse", ID: "kept", Subject: subject, Stream: topology.StreamRaw, Sequence: keptSeq, Data: kept, Err: bad},
		{Type: "misuse", ID: "gone", Subject: subject, Stream: topology.StreamRaw, Sequence: goneSeq, Data: gone, Err: bad},
		// From the upstream, already cut: no stream holds its original.
		{Type: "misuse", ID: "upstream", Subject: subject, Data: kept[:100], Size: 10 << 20, Err: bad},
	} {
		if err := p.Publish(ctx, l); err != nil {
			t.Fatalf("letter %d: %v", i, err)
		}
	}
	s, _ := js.Stream(ctx, topology.StreamDLQ)
	first, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	h := first.Header
	if h.Get(topology.HeaderDLQCut) != strconv.Itoa(len(kept)) || len(first.Data) >= len(kept) || !bytes.HasPrefix(kept, first.Data) ||
		h.Get(topology.HeaderDLQStream) != topology.StreamRaw || h.Get(topology.HeaderDLQSequence) != strconv.FormatUint(keptSeq, 10) {
		t.Fatalf("cut letter: %d bytes, headers %v", len(first.Data), h)
	}
	raw, _ := js.Stream(ctx, topology.StreamRaw)
	if err := raw.DeleteMsg(ctx, goneSeq); err != nil {
		t.Fatal(err)
	}
	var refused []uint64
	n, err := dlq.Replay(ctx, js, dlq.ReplayOptions{Refused: func(seq uint64, why string) {
		refused = append(refused, seq)
		t.Logf("refused %d: %s", seq, why)
	}})
	if n != 1 || !errors.Is(err, dlq.ErrRefused) || fmt.Sprint(refused) != "[2 3]" {
		t.Fatalf("replay: %d replayed, %v, refused %v; want 1, ErrRefused, [2 3]", n, err, refused)
	}
	back, err := raw.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	if back.Sequence == keptSeq || !bytes.Equal(back.Data, kept) {
		t.Errorf("replayed message %d of %d bytes; want the original's %d bytes again", back.Sequence, len(back.Data), len(kept))
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 2 {
		t.Errorf("DLQ holds %d letters after the replay; want the 2 refused", n)
	}
}
