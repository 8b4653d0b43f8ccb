package stage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// consumer publishes n raw messages with bodies "0".."n-1" and returns a
// fresh durable consumer on them.
func consumer(t *testing.T, js jetstream.JetStream, n int) jetstream.Consumer {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := js.Publish(ctx, topology.RawSubject("misuse"), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamRaw, topology.EnricherConsumer())
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// run consumes with h until the test ends.
func run(t *testing.T, js jetstream.JetStream, cons jetstream.Consumer, h stage.Handler, o stage.Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); stage.Consume(ctx, cons, h, o) }()
	t.Cleanup(func() { cancel(); <-done })
}

func options(js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) stage.Options {
	return stage.Options{
		Stage:      "test",
		DLQ:        dlq.Publisher{JS: js, Stage: "test"},
		Batch:      10,
		RetryDelay: 20 * time.Millisecond,
		Progress:   stage.NewProgress("test", reg, log),
		Logger:     log,
	}
}

// letters returns the DLQ's messages by body, with their reason.
func letters(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	out := map[string]string{}
	s, err := js.Stream(context.Background(), topology.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(context.Background())
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			continue
		}
		out[string(m.Data)] = m.Header.Get(topology.HeaderDLQReason)
	}
	return out
}

type acked struct {
	mu   sync.Mutex
	seen map[string]int
}

func (a *acked) add(m jetstream.Msg) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen[string(m.Data())]++
}

func (a *acked) count(body string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[body]
}

func TestOutcomes(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	cons := consumer(t, js, 5)
	done := &acked{seen: map[string]int{}}
	var calls atomic.Int64
	h := func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		calls.Add(1)
		out := make([]stage.Outcome, len(msgs))
		for i, m := range msgs {
			switch string(m.Data()) {
			case "1":
				panic("boom") // poison: a panic every time
			case "2":
				out[i] = stage.Failed(errors.New("this message is bad"))
			case "3":
				out[i] = stage.Rejected("misuse", "id-3", errors.New("invalid"))
			default:
				done.add(m)
				out[i] = stage.Done()
			}
		}
		return out
	}
	reg := prometheus.NewRegistry()
	o := options(js, reg, nil)
	o.MaxFailures = 3
	run(t, js, cons, h, o)

	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		l := letters(t, js)
		return len(l) == 3, fmt.Sprintf("dead letters %v", l)
	})
	l := letters(t, js)
	// A plain error carries no incident reason: "unprocessable".
	for body, want := range map[string]string{"1": "repeated_failure", "2": "repeated_failure", "3": "unprocessable"} {
		if l[body] != want {
			t.Errorf("message %s dead-lettered as %q, want %q", body, l[body], want)
		}
	}
	if done.count("0") < 1 || done.count("4") < 1 {
		t.Errorf("good messages not handled beside the poison one: %v", done.seen)
	}
	// Everything acked: nothing left pending on the consumer.
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		info, err := cons.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return info.NumAckPending == 0 && info.NumPending == 0, fmt.Sprintf("ack pending %d, pending %d", info.NumAckPending, info.NumPending)
	})
	if got := testutil.ToFloat64(mustCounter(t, reg, "incidents_stage_failures_total", "panic")); got < 3 {
		t.Errorf("panics counted %v, want at least 3", got)
	}
}

// TestInfrastructureFailuresNeverDeadLetter: a message whose writes fail
// (storage full) is retried as often as it takes, the stage says it is
// stalled meanwhile, and it resumes by itself.
func TestInfrastructureFailuresNeverDeadLetter(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	cons := consumer(t, js, 1)
	var attempts atomic.Int64
	var healthy atomic.Bool
	h := func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		out := make([]stage.Outcome, len(msgs))
		for i := range msgs {
			attempts.Add(1)
			if healthy.Load() {
				out[i] = stage.Done()
			} else {
				out[i] = stage.Retried(errors.New("insufficient storage"))
			}
		}
		return out
	}
	reg := prometheus.NewRegistry()
	var logs testkit.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := options(js, reg, log)
	o.MaxFailures = 2
	run(t, js, cons, h, o)

	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		return attempts.Load() >= 6, fmt.Sprintf("%d attempts", attempts.Load())
	})
	if err := o.Progress.Check(context.Background()); err == nil {
		t.Error("readiness passes while every write fails")
	}
	if got := testutil.ToFloat64(mustGauge(t, reg, "incidents_stage_stalled")); got != 1 {
		t.Errorf("incidents_stage_stalled = %v while stalled", got)
	}
	if n := strings.Count(logs.String(), "stage stalled"); n != 1 {
		t.Errorf("%d 'stage stalled' lines for one stall, want 1:\n%s", n, logs.String())
	}
	if l := letters(t, js); len(l) != 0 {
		t.Fatalf("infrastructure failures dead-lettered a good message: %v", l)
	}
	healthy.Store(true)
	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		err := o.Progress.Check(context.Background())
		return err == nil, fmt.Sprint(err)
	})
	if got := testutil.ToFloat64(mustGauge(t, reg, "incidents_stage_stalled")); got != 0 {
		t.Errorf("incidents_stage_stalled = %v after resuming", got)
	}
	if !strings.Contains(logs.String(), "stage resumed") {
		t.Errorf("no 'stage resumed' line:\n%s", logs.String())
	}
}

// TestAckedOnlyOnceDeadLettered: while the DLQ cannot store, a rejected
// message stays unacknowledged; it is acked once its letter is stored.
func TestAckedOnlyOnceDeadLettered(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	cons := consumer(t, js, 1)
	ctx := context.Background()
	dlqCfg := topology.Streams(topology.DefaultOptions())[2]
	if dlqCfg.Name != topology.StreamDLQ {
		t.Fatalf("third stream is %s", dlqCfg.Name)
	}
	if err := js.DeleteStream(ctx, topology.StreamDLQ); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	h := func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		attempts.Add(int64(len(msgs)))
		out := make([]stage.Outcome, len(msgs))
		for i := range msgs {
			out[i] = stage.Rejected("misuse", "x", errors.New("invalid"))
		}
		return out
	}
	o := options(js, prometheus.NewRegistry(), nil)
	run(t, js, cons, h, o)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return attempts.Load() >= 2, fmt.Sprintf("%d attempts", attempts.Load())
	})
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 0 {
		t.Fatalf("message acked (ack floor %d) although its dead letter was never stored", info.AckFloor.Stream)
	}
	if _, err := js.CreateStream(ctx, dlqCfg); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.AckFloor.Stream == 1 && len(letters(t, js)) == 1, fmt.Sprintf("ack floor %d", info.AckFloor.Stream)
	})
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name, kind string) prometheus.Collector {
	t.Helper()
	return gathered{t: t, reg: reg, name: name, label: kind}
}

func mustGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return gathered{t: t, reg: reg, name: name}
}

// gathered is one sample of a registry, as a collector testutil reads.
type gathered struct {
	t     *testing.T
	reg   *prometheus.Registry
	name  string
	label string // the kind label's value, or "" for none
}

func (g gathered) Describe(chan<- *prometheus.Desc) {}

func (g gathered) Collect(ch chan<- prometheus.Metric) {
	mfs, err := g.reg.Gather()
	if err != nil {
		g.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := g.label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "kind" && lp.GetValue() == g.label {
					match = true
				}
			}
			if !match {
				continue
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
			return
		}
	}
	g.t.Fatalf("no sample of %s{kind=%q}", g.name, g.label)
}

// TestLagFromTheServer: the lag is the server's count of what waits; once
// the server cannot be asked, it is NaN (visibly unknown), never the last
// count or 0.
func TestLagFromTheServer(t *testing.T) {
	s := testkit.JetStream(t)
	_, js := testkit.Connect(t, s)
	cons := consumer(t, js, 7)
	readings := make(chan float64, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go stage.TrackLag(ctx, cons, 50*time.Millisecond, nil, func(v float64) {
		select {
		case readings <- v:
		default:
		}
	})
	if v := <-readings; v != 7 {
		t.Fatalf("lag %v, want the 7 messages waiting", v)
	}
	s.Shutdown()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case v := <-readings:
			if math.IsNaN(v) {
				return
			}
		case <-deadline:
			t.Fatal("the lag was never reported unknown with the server gone")
		}
	}
}

// TestRealignAConsumerAheadOfItsStream: a consumer whose delivered sequence
// is past its stream's last (what a power loss of a whole cluster can
// leave) never delivers the next messages; Realign recreates it, and it
// delivers the stream from the start. One in place is left alone.
func TestRealignAConsumerAheadOfItsStream(t *testing.T) {
	ctx := context.Background()
	_, js := testkit.Connect(t, testkit.JetStream(t))
	cons := consumer(t, js, 3) // in place: nothing to do
	log := slog.New(slog.DiscardHandler)
	cfg := topology.EnricherConsumer()
	if again, err := stage.Realign(ctx, js, topology.StreamRaw, cfg, log); err != nil || again {
		t.Fatalf("a consumer in place: recreated %v (%v)", again, err)
	}
	_ = cons
	if err := js.DeleteConsumer(ctx, topology.StreamRaw, cfg.Durable); err != nil {
		t.Fatal(err)
	}
	ahead := cfg
	ahead.DeliverPolicy, ahead.OptStartSeq = jetstream.DeliverByStartSequencePolicy, 100
	if _, err := js.CreateConsumer(ctx, topology.StreamRaw, ahead); err != nil {
		t.Fatal(err)
	}
	again, err := stage.Realign(ctx, js, topology.StreamRaw, cfg, log)
	if err != nil || !again {
		t.Fatalf("a consumer ahead of its stream: recreated %v (%v)", again, err)
	}
	c, err := js.Consumer(ctx, topology.StreamRaw, cfg.Durable)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		n++
		_ = m.Ack()
	}
	if n != 3 {
		t.Errorf("the recreated consumer delivered %d of the stream's 3 messages", n)
	}
}

// TestRejectedNearMaxPayloadDeadLettersAndGoesOn: a message just under the
// max payload, refused for its content, is dead-lettered (cut, with where
// it came from) at once, and the messages after it are handled.
func TestRejectedNearMaxPayloadDeadLettersAndGoesOn(t *testing.T) {
	const maxPayload = 64 << 10
	_, js := testkit.Connect(t, testkit.JetStreamWith(t, embedded.Options{MaxPayload: maxPayload}))
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), maxPayload-100)
	for _, data := range [][]byte{big, []byte("after")} {
		if _, err := js.Publish(ctx, topology.RawSubject("misuse"), data); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamRaw, topology.EnricherConsumer())
	if err != nil {
		t.Fatal(err)
	}
	done := &acked{seen: map[string]int{}}
	var failures atomic.Int64
	h := func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		out := make([]stage.Outcome, len(msgs))
		for i, m := range msgs {
			if len(m.Data()) > 100 {
				out[i] = stage.Rejected(strings.Repeat("t", 10_000), "", errors.New("too big to like"))
				continue
			}
			done.add(m)
			out[i] = stage.Done()
		}
		return out
	}
	reg := prometheus.NewRegistry()
	o := options(js, reg, nil)
	o.DeadLettered = func(string) { failures.Add(1) }
	run(t, js, cons, h, o)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		return done.count("after") == 1 && failures.Load() == 1, fmt.Sprintf("after handled %d times, %d dead-lettered", done.count("after"), failures.Load())
	})
	s, _ := js.Stream(ctx, topology.StreamDLQ)
	m, err := s.GetLastMsgForSubject(ctx, topology.DLQSubject("test", "invalid"))
	if err != nil {
		t.Fatalf("no letter on %s: %v", topology.DLQSubject("test", "invalid"), err)
	}
	if m.Header.Get(topology.HeaderDLQCut) != strconv.Itoa(len(big)) || m.Header.Get(topology.HeaderDLQSequence) != "1" ||
		m.Header.Get(topology.HeaderDLQStream) != topology.StreamRaw {
		t.Errorf("letter headers %v", m.Header)
	}
}

// TestLongBatchIsNotDeliveredAgain: a batch handled for longer than the
// consumer's AckWait is told in progress meanwhile, so it is not delivered
// again while it is handled.
func TestLongBatchIsNotDeliveredAgain(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	cons := consumer(t, js, 3)
	if got := cons.CachedInfo().Config.AckWait; got != topology.AckWait {
		t.Fatalf("the consumer's AckWait is %s, want %s", got, topology.AckWait)
	}
	done := &acked{seen: map[string]int{}}
	h := func(ctx context.Context, msgs []jetstream.Msg) []stage.Outcome {
		for _, m := range msgs {
			done.add(m)
		}
		select { // longer than AckWait
		case <-ctx.Done():
		case <-time.After(topology.AckWait + 3*time.Second):
		}
		return make([]stage.Outcome, len(msgs))
	}
	run(t, js, cons, h, options(js, prometheus.NewRegistry(), nil))
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		info, err := cons.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return info.AckFloor.Stream == 3, fmt.Sprintf("ack floor %d", info.AckFloor.Stream)
	})
	for _, body := range []string{"0", "1", "2"} {
		if n := done.count(body); n != 1 {
			t.Errorf("message %s handed to the handler %d times, want once", body, n)
		}
	}
}
