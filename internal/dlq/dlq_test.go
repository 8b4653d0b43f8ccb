package dlq_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/incidentpipe/pipeline/internal/dlq"
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
